"""What stagetrain knows of each Hugging Face architecture it cuts (``model=hf``), as plain
data: where its modules live in ``transformers``, which layer class is one block, and how
its own parameter names map to stagetrain's (``stem.*``, ``blocks.<name>.layer.*``,
``head.*``). Plus the pieces every HF part uses: the ``transformers`` config rebuilt from the
spec's plain dict, HF's weight initialisation, and the attention mask built from the
padding that travels inside the activations (all-zero rows, as in ``models/transformer``).

``transformers`` is imported only when a part is built, so importing this module (the part
registry imports every models module) works without the ``hf`` extra.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from stagetrain.core.errors import StagetrainError

# model_type -> how it is cut. "rotary": positions inside each layer (cos/sin from the
# model's rotary embedding); "pre_ln": the residual stream is never normalised in place, so a
# layer whose output projections are zero is the identity (function-preserving insertion).
ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"module": "llama", "prefix": "Llama", "kind": "decoder", "rotary": True, "pre_ln": True,
              "base": "model", "layers": "model.layers", "zero": ("self_attn.o_proj", "mlp.down_proj")},
    "qwen2": {"module": "qwen2", "prefix": "Qwen2", "kind": "decoder", "rotary": True, "pre_ln": True,
              "base": "model", "layers": "model.layers", "zero": ("self_attn.o_proj", "mlp.down_proj")},
    "mistral": {"module": "mistral", "prefix": "Mistral", "kind": "decoder", "rotary": True, "pre_ln": True,
                "base": "model", "layers": "model.layers", "zero": ("self_attn.o_proj", "mlp.down_proj")},
    "gpt2": {"module": "gpt2", "prefix": "GPT2", "kind": "decoder", "rotary": False, "pre_ln": True,
             "base": "transformer", "layers": "transformer.h", "zero": ("attn.c_proj", "mlp.c_proj")},
    "bert": {"module": "bert", "prefix": "Bert", "kind": "encoder", "rotary": False, "pre_ln": False,
             "base": "bert", "layers": "bert.encoder.layer", "zero": ()},
    "roberta": {"module": "roberta", "prefix": "Roberta", "kind": "encoder", "rotary": False, "pre_ln": False,
                "base": "roberta", "layers": "roberta.encoder.layer", "zero": ()},
}
SUPPORTED = tuple(ARCHS)
TASKS = {"decoder": ("lm", "classification"), "encoder": ("mlm", "classification")}
SKIP_KEYS = ("transformers_version", "architectures", "id2label", "label2id", "auto_map", "torch_dtype",
             "_name_or_path", "_attn_implementation_autoset")


def arch(model_type: str) -> dict[str, Any]:
    if model_type not in ARCHS:
        raise StagetrainError(
            f"model.config.model_type={model_type} is not an architecture model=hf can cut into stem, blocks and "
            f"head. Supported: {', '.join(SUPPORTED)} (LLaMA-style decoders llama, qwen2, mistral share one cut). "
            "Use one of them, or model=custom with your own module.")
    return ARCHS[model_type]


def modeling(model_type: str) -> Any:
    """transformers' ``modeling_<type>`` module."""
    try:
        return importlib.import_module(f"transformers.models.{ARCHS[model_type]['module']}.modeling_{model_type}")
    except ImportError as e:
        raise StagetrainError(f"model=hf needs the transformers library ({e}). Install the extra: "
                              "pip install 'stagetrain[hf]'.") from None


def hf_class(model_type: str, suffix: str) -> Any:
    return getattr(modeling(model_type), ARCHS[model_type]["prefix"] + suffix)


def hf_config(plain: dict[str, Any], **overrides: Any) -> Any:
    """The transformers config of a spec's plain dict (``model_type`` plus its values)."""
    from transformers import AutoConfig

    values = {k: v for k, v in plain.items() if k not in SKIP_KEYS and k != "model_type"}
    config = AutoConfig.for_model(plain["model_type"], **{**values, **overrides})
    config._attn_implementation = "sdpa"
    return config


def init_hf(module: nn.Module, std: float) -> None:
    """HF's initialisation of these architectures: Linear/Conv1D/Embedding weights normal(0,
    std), biases zero, the padding row zero; norms' weight one, bias zero."""
    for m in module.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()
        elif isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D":
            nn.init.normal_(w, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif "Norm" in type(m).__name__ and isinstance(w, torch.Tensor):
            nn.init.ones_(w)
            if isinstance(getattr(m, "bias", None), torch.Tensor):
                nn.init.zeros_(m.bias)


def real_positions(x: torch.Tensor) -> torch.Tensor:
    """[B, T] True where the row is not padding (padded rows are all zero)."""
    return x.ne(0).any(-1)


def attention_mask(h: torch.Tensor, padding: bool, causal: bool) -> torch.Tensor | None:
    """The additive [B, 1, T, T] mask a layer adds to its scores: causal and/or padded keys
    masked (a query with no key left, an empty text's, keeps its own); None: attend to all."""
    if not padding and not causal:
        return None
    b, t = h.shape[:2]
    allowed = torch.ones(b, 1, t, t, dtype=torch.bool, device=h.device)
    if causal:
        allowed = allowed & torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
    if padding:
        allowed = allowed & real_positions(h)[:, None, None, :]
        lonely = ~allowed.any(-1, keepdim=True)
        allowed = allowed | (lonely & torch.eye(t, dtype=torch.bool, device=h.device))
    zero = torch.zeros((), dtype=h.dtype, device=h.device)
    return torch.where(allowed, zero, torch.finfo(h.dtype).min)


def name_map(model_type: str, task: str, blocks: list[str]) -> list[tuple[str, str]]:
    """(stagetrain prefix, HF prefix) pairs of one model: stem, every block in order, head."""
    a = ARCHS[model_type]
    base = a["base"]
    if model_type == "gpt2":
        stem = [("stem.wte.", f"{base}.wte."), ("stem.wpe.", f"{base}.wpe.")]
    elif a["rotary"]:
        stem = [("stem.embed_tokens.", f"{base}.embed_tokens.")]
    else:
        stem = [("stem.embeddings.", f"{base}.embeddings.")]
    layers = [(f"blocks.{n}.layer.", f"{a['layers']}.{i}.") for i, n in enumerate(blocks)]
    return stem + layers + _head_map(model_type, task)


def _head_map(model_type: str, task: str) -> list[tuple[str, str]]:
    a = ARCHS[model_type]
    if a["kind"] == "decoder":
        norm = f"{a['base']}.ln_f." if model_type == "gpt2" else f"{a['base']}.norm."
        out = ("head.out.", "lm_head.") if task == "lm" else ("head.out.", "score.")
        return [("head.norm.", norm), out]
    if task == "mlm" and model_type == "bert":
        return [("head.transform.", "cls.predictions.transform."), ("head.decoder.", "cls.predictions.decoder."),
                ("head.bias", "cls.predictions.bias")]
    if task == "mlm":
        return [("head.dense.", "lm_head.dense."), ("head.layer_norm.", "lm_head.layer_norm."),
                ("head.decoder.", "lm_head.decoder."), ("head.bias", "lm_head.bias")]
    if model_type == "bert":
        return [("head.pooler.", "bert.pooler."), ("head.classifier.", "classifier.")]
    return [("head.classifier.", "classifier.")]


def rename(keys: list[str], pairs: list[tuple[str, str]], to_hf: bool) -> dict[str, str]:
    """Each key that one of the prefixes covers, renamed to the other side's name."""
    out = {}
    for k in keys:
        for ours, theirs in pairs:
            src, dst = (ours, theirs) if to_hf else (theirs, ours)
            if k.startswith(src):
                out[k] = dst + k[len(src):]
                break
    return out
