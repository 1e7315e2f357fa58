"""LoRA adapters on the Linear blocks: add them (output unchanged), merge them into W."""

from __future__ import annotations

import copy

import torch

from stagetrain.errors import StagetrainError
from stagetrain.models import StagedModel


def add_lora(model: StagedModel, rank: int, alpha: float) -> StagedModel:
    """The same model with rank-``rank`` adapters on every Linear block (B = 0: same output)."""
    spec = copy.deepcopy(model.spec)
    linear = [b for b in spec["blocks"] if b["type"] == "linear"]
    if not linear:
        raise StagetrainError("strategy.mode=lora adds adapters to Linear blocks, and this model has none "
                              "(model=cnn); use mode=bitfit, partial or linear_probe for CNNs.")
    for b in linear:
        b["lora"] = {"rank": int(rank), "alpha": float(alpha)}
    new = StagedModel(spec).to(next(model.parameters()))
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False)
    assert not unexpected and all("lora_" in k for k in missing)
    return new


def merge_lora(model: StagedModel) -> StagedModel:
    """Fold W + alpha/r * B A into plain Linear blocks; the function is unchanged."""
    spec = copy.deepcopy(model.spec)
    for b in spec["blocks"]:
        b.pop("lora", None)
    new = StagedModel(spec).to(next(model.parameters()))
    state = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    with torch.no_grad():
        for name, block in model.blocks.items():
            if block.lora_a is not None:
                state[f"blocks.{name}.layer.weight"] = block.layer.weight + block.lora_scale * block.lora_b @ block.lora_a
    new.load_state_dict(state)
    return new
