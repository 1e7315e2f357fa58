"""``model=hf`` weights in transformers' own names: a pretrained folder's model.safetensors
read into a cut model (``load_pretrained``, through the file gate; never a pickle), and a
trained model written back with ``save_pretrained`` (``export_pretrained``: config.json and
model.safetensors that ``AutoModelFor<task>.from_pretrained`` loads). A model that still has
its LoRA adapters (``strategy.lora.merge=false``) is written as that base (the frozen layers
and the trained head) plus ``adapter/`` in PEFT's format (adapter_config.json and
adapter_model.safetensors, PEFT's key names), which ``PeftModel.from_pretrained(base,
adapter)`` loads; written without importing ``peft``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.models.hf_arch import ARCHS, hf_config, name_map, rename
from stagetrain.models.staged import StagedModel

AUTO = {"lm": "AutoModelForCausalLM", "mlm": "AutoModelForMaskedLM", "classification": "AutoModelForSequenceClassification"}
PEFT_TASK = {"lm": "CAUSAL_LM", "classification": "SEQ_CLS"}  # PEFT has no task type of its own for mlm
LORA_KEYS = {"lora_a": "lora_A.weight", "lora_b": "lora_B.weight"}
TIED = ("lm_head.weight", "cls.predictions.decoder.weight", "cls.predictions.decoder.bias", "lm_head.decoder.weight",
        "lm_head.decoder.bias")


def _kind(model: StagedModel) -> tuple[str, str]:
    return model.arch.stem.model_type, model.arch.head.task


def load_pretrained(model: StagedModel, folder: str) -> dict[str, Any]:
    """Copy the folder's weights into ``model`` (stem and every layer required; a head that
    matches the task is taken too, else it stays freshly initialised)."""
    from safetensors.torch import load

    from stagetrain.core import userfile

    where = f"model.pretrained={folder}"
    try:
        weights = load(userfile.read_bytes(Path(folder).expanduser() / "model.safetensors", where, "source"))
    except (ValueError, RuntimeError, OSError) as e:
        if isinstance(e, StagetrainError):
            raise
        raise StagetrainError(f"{where}: model.safetensors is not a readable safetensors file ({e}).") from None
    t, task = _kind(model)
    base = ARCHS[t]["base"]
    if not any(k.startswith(base + ".") for k in weights):  # a base model's file: no task prefix
        weights = {f"{base}.{k}": v for k, v in weights.items()}
    ours = rename(list(weights), name_map(t, task, model.block_names), to_hf=False)
    state = model.state_dict()
    loaded = {}
    for theirs, key in ours.items():
        if key in state:
            if tuple(weights[theirs].shape) != tuple(state[key].shape):
                raise StagetrainError(f"{where}: {theirs} has shape {list(weights[theirs].shape)}, but the model built "
                                      f"from its config.json (and model.config) needs {list(state[key].shape)}.")
            loaded[key] = weights[theirs].to(state[key].dtype)
    missing = [k for k in state if k not in loaded and not k.startswith("head.")]
    if missing:
        raise StagetrainError(f"{where}: model.safetensors lacks {len(missing)} weights of the {t} model its "
                              f"config.json describes (e.g. {', '.join(missing[:3])}). Pass the folder "
                              "save_pretrained wrote for this model.")
    model.load_state_dict(loaded, strict=False)
    return {"pretrained": str(folder), "tensors": len(loaded),
            "head": "pretrained" if any(k.startswith("head.") for k in loaded) else "new"}


def hf_model(model: StagedModel) -> Any:
    """The transformers model (``AutoModelFor<task>``) with ``model``'s weights."""
    import transformers

    t, task = _kind(model)
    arch = model.arch
    extra = {"num_labels": int(arch.head.out)} if task == "classification" else {}
    config = hf_config(arch.stem.config, num_hidden_layers=len(arch.blocks),
                       vocab_size=int(arch.stem.vocab_size), **extra)
    hf = getattr(transformers, AUTO[task]).from_config(config)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items() if k.rpartition(".")[2] not in LORA_KEYS}
    mapped = rename(list(state), name_map(t, task, model.block_names), to_hf=True)
    if len(mapped) != len(state):
        raise StagetrainError(f"model=hf export: weights with no transformers name: "
                              f"{', '.join(k for k in state if k not in mapped)[:300]}.")
    missing, unexpected = hf.load_state_dict({mapped[k]: v for k, v in state.items()}, strict=False)
    missing = [k for k in missing if k not in TIED and not k.endswith(("position_ids", "inv_freq"))]
    if missing or unexpected:
        raise StagetrainError(f"model=hf export to {AUTO[task]}: names that do not match (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]}).")
    hf.tie_weights()
    return hf.eval()


def export_pretrained(model: StagedModel, folder: Path) -> Path | None:
    """``folder`` (``<run>/hf``) written by ``save_pretrained``: config.json, model.safetensors;
    with unmerged LoRA adapters, the base without them and ``folder/adapter`` (PEFT's format)."""
    hf = hf_model(model)
    with torch.no_grad():
        hf.save_pretrained(str(folder), safe_serialization=True)
    if model.arch.lora is not None:
        export_adapter(model, Path(folder) / "adapter", Path(folder))
    return folder


def _fan_in_fan_out(model: StagedModel) -> bool:
    """PEFT's flag for layers stored in x out (GPT-2's Conv1D): true when the adapted ones are."""
    from stagetrain.models.lora import LoRAConv1D

    return any(isinstance(m, LoRAConv1D) for m in model.modules())


def export_adapter(model: StagedModel, folder: Path, base: Path) -> Path:
    """``model``'s LoRA adapters as PEFT writes them: adapter_model.safetensors with keys
    ``base_model.model.<transformers module>.lora_A.weight`` / ``lora_B.weight`` (A: rank x in,
    B: out x rank, scale lora_alpha / r as stagetrain's), adapter_config.json naming every
    adapted module by its full transformers name and ``base`` as base_model_name_or_path. The
    trained head (classifier, or a decoder's final norm and untied LM head) is in
    ``modules_to_save`` as PEFT saves a fine-tuned head, so the adapter also applies to the
    source model; an MLM head (its decoder tied to the embeddings) stays in the base only."""
    from safetensors.torch import save_file

    t, task = _kind(model)
    lora = model.arch.lora
    saved = task != "mlm"  # the head trained too: PEFT's modules_to_save (an MLM head holds the tied decoder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.named_parameters()
             if k.rpartition(".")[2] in LORA_KEYS or (saved and k.startswith("head."))}
    mapped = rename(list(state), name_map(t, task, model.block_names), to_hf=True)
    tensors, modules, heads = {}, set(), set()
    for key, theirs in mapped.items():
        module, _, leaf = theirs.rpartition(".")
        if key.startswith("head."):
            heads.add(module)
            tensors[f"base_model.model.{theirs}"] = state[key]
        else:
            modules.add(module)
            tensors[f"base_model.model.{module}.{LORA_KEYS[leaf]}"] = state[key]
    config = {"peft_type": "LORA", "task_type": PEFT_TASK.get(task), "base_model_name_or_path": str(base.resolve()),
              "r": int(lora.rank), "lora_alpha": float(lora.alpha), "lora_dropout": 0.0, "bias": "none",
              "target_modules": sorted(modules), "fan_in_fan_out": _fan_in_fan_out(model), "use_rslora": False, "use_dora": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": sorted(heads) or None,
              "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return folder
