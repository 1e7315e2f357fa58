"""``model=hf``: a Hugging Face ``transformers`` model (BERT, RoBERTa, GPT-2, LLaMA-style:
llama, qwen2, mistral) cut into stem (embeddings), one block per layer and head; see
README.md beside this file. Torch-free at import: ``transformers`` is imported when a
config is checked or a spec built.

``resolve`` fills what follows the data: the task (lm on language-model data for decoders,
mlm for encoders; classification on labelled texts), the vocabulary (the dataset's token
ids, one more for mlm's mask token; a pretrained folder keeps its own), the padding id 0 of
stagetrain's text data, and the config of a pretrained folder (its config.json, read
through the file gate, with ``model.config`` values on top).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice, did_you_mean
from stagetrain.core.partbase import Block
from stagetrain.core.parts_seq import HFDecoderLayer, HFEmbed, HFEncoderLayer, HFHead
from stagetrain.core.spec import ModelSpec, from_dict

__all__ = ["Config", "validate", "resolve", "spec", "is_lm", "as_classifier", "with_mask_token", "grow_widths",
           "with_grow_widths", "grow_schedule", "init_weights", "export", "check_text_pretrain", "SUPPORTED"]

SUPPORTED = ("bert", "roberta", "gpt2", "llama", "qwen2", "mistral")
ENCODERS = ("bert", "roberta")
SKIP = ("transformers_version", "architectures", "id2label", "label2id", "auto_map", "torch_dtype", "_name_or_path",
        "_attn_implementation_autoset", "layer_types")
WEIGHTS = "model.safetensors"


@dataclass
class Config:
    name: str = "hf"
    config: Any = None  # transformers config values with model_type (a mapping); null: the pretrained folder's
    pretrained: str | None = None  # a local folder with config.json and model.safetensors
    task: str | None = None  # null: follow the data (lm / mlm on LM text, classification on labels)
    mask_id: int | None = None  # task=mlm: the mask token's id; null: the data's vocabulary size


def _type(m: Any) -> str:
    return str((m.config or {}).get("model_type", ""))


def is_lm(m: Any) -> bool:
    """A causal LM (task=lm): its supervised stages train ``lm`` (an mlm head's spec says so itself)."""
    return m.task == "lm"


def _normalised(values: dict[str, Any], where: str, own: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every value of the config transformers builds from ``values`` (defaults made explicit),
    as plain data; a value transformers refuses, or a key of ``own`` (the user's model.config)
    that the architecture does not have (transformers would keep a misspelt key silently), is
    one paragraph."""
    from transformers import AutoConfig

    rest = {k: v for k, v in values.items() if k not in SKIP and k != "model_type"}
    defaults = AutoConfig.for_model(values["model_type"])
    known = {*defaults.to_dict(), *getattr(type(defaults), "attribute_map", {}), "num_labels"}
    unknown = sorted(k for k in own if k not in known and k not in SKIP)
    if unknown:
        raise StagetrainError(f"model.config.{unknown[0]} is not a setting of a {values['model_type']} model."
                              f"{did_you_mean(unknown[0], known)} Its settings include: "
                              f"{', '.join(sorted(k for k in known if not k.startswith('_'))[:40])}.")
    try:
        config = AutoConfig.for_model(values["model_type"], **rest)
    except (ValueError, TypeError, KeyError) as e:
        raise StagetrainError(f"{where} is not a valid {values['model_type']} config: {e}. Give values "
                              "transformers accepts, e.g. model.config={model_type: llama, hidden_size: 64, "
                              "num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 128}.") from None
    full = config.to_dict()
    keep = {"model_type", "vocab_size", "pad_token_id", "num_hidden_layers", "hidden_size", "num_attention_heads",
            "intermediate_size", "max_position_embeddings", "tie_word_embeddings", "initializer_range", "n_embd",
            "n_layer", "n_head", "n_positions", "n_inner", *values, *config.to_diff_dict()}
    return {k: v for k, v in full.items() if k in keep and k not in SKIP and not k.startswith("_")}


def _pretrained_config(folder: str) -> dict[str, Any]:
    """config.json of a local folder that also holds model.safetensors; one paragraph otherwise."""
    from stagetrain.core import userfile

    path = Path(folder).expanduser()
    if not path.is_dir():
        hub = not path.is_absolute() and not folder.startswith(".") and folder.count("/") <= 1
        raise StagetrainError(
            f"model.pretrained={folder} is not a local folder. "
            + ("A Hugging Face Hub id needs a network download, which stagetrain does not do: download it where "
               f"there is a network (huggingface-cli download {folder} --local-dir <folder>) and pass "
               "model.pretrained=<folder>." if hub else
               "Pass a folder holding config.json and model.safetensors (what save_pretrained writes)."))
    if not (path / WEIGHTS).is_file():
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        sharded = (path / "model.safetensors.index.json").is_file()
        raise StagetrainError(
            f"model.pretrained={folder} has no {WEIGHTS}. "
            + (f"It holds {', '.join(pickled)}: PyTorch pickles, which can run code when loaded, so stagetrain "
               "does not read them. Convert the weights to safetensors where you trust the files "
               "(model.save_pretrained(folder, safe_serialization=True)) and pass that folder." if pickled else
               "Sharded safetensors (model.safetensors.index.json) are not read yet: save the model as one file "
               "(save_pretrained with a max_shard_size above its size)." if sharded else
               "Pass a folder written by save_pretrained (config.json and model.safetensors)."))
    text = userfile.read_text(path / "config.json", f"model.pretrained={folder}: config.json", "config")
    try:
        values = json.loads(text)
    except ValueError as e:
        raise StagetrainError(f"model.pretrained={folder}: config.json is not JSON ({e}).") from None
    if not isinstance(values, dict) or not isinstance(values.get("model_type"), str):
        raise StagetrainError(f"model.pretrained={folder}: config.json has no model_type; it is not a transformers "
                              "config. Pass a folder written by save_pretrained.")
    return values


def resolve(model: Any, dataset: Any) -> Any:
    """``model`` with the task, vocabulary and config filled in (see the module doc)."""
    values = dict(model.config or {})
    if model.pretrained:
        values = {**_pretrained_config(model.pretrained), **values}
    if not values.get("model_type"):
        raise StagetrainError("model=hf needs model.config.model_type (e.g. model.config={model_type: llama, "
                              "hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: "
                              f"128}}) or model.pretrained=<folder>. Supported: {', '.join(SUPPORTED)}.")
    _check_type(str(values["model_type"]))
    from stagetrain import datasets

    text = datasets.inputs(dataset) == "tokens"
    task = model.task
    if task is None:
        lm = text and datasets.is_lm(dataset)
        task = ("mlm" if values["model_type"] in ENCODERS else "lm") if lm else "classification"
    mask_id = model.mask_id
    if text:
        have = datasets.vocab_size(dataset)
        mask_id = (have if mask_id is None else mask_id) if task == "mlm" else None
        if not model.pretrained:
            values["vocab_size"] = max(have, (mask_id or 0) + 1)
        if not model.pretrained or values.get("pad_token_id") is None:
            values["pad_token_id"] = 0  # stagetrain's text data pads with id 0
    own = tuple(model.config or {})
    return replace(model, config=_normalised(values, "model.config", own), task=task, mask_id=mask_id)


def _check_type(model_type: str) -> None:
    if model_type not in SUPPORTED:
        raise StagetrainError(
            f"model.config.model_type={model_type} is not an architecture model=hf can cut into stem, blocks and "
            f"head. Supported: {', '.join(SUPPORTED)} (the LLaMA-style decoders llama, qwen2 and mistral share "
            "one cut). Use one of them, or model=custom with your own module.")


def _get(c: dict[str, Any], *names: str) -> int:
    for n in names:
        if c.get(n) is not None:
            return int(c[n])
    raise StagetrainError(f"model.config has none of {', '.join(names)}.")


def validate(model: Any, dataset: Any) -> None:
    if not _type(model):  # resolve fills it; a Config that skipped resolve
        raise StagetrainError("model=hf needs model.config.model_type or model.pretrained=<folder>.")
    t = _type(model)
    _check_type(t)
    tasks = ("mlm", "classification") if t in ENCODERS else ("lm", "classification")
    check_choice("model.task", model.task, tasks)
    from stagetrain import datasets

    if datasets.inputs(dataset) != "tokens":
        raise StagetrainError(f"model=hf reads token ids, but dataset={dataset.name} gives "
                              f"{datasets.inputs(dataset)}. Use a text dataset (text, text_classification, fortunes).")
    lm_data = datasets.is_lm(dataset)
    if model.task == "lm" and not lm_data:
        raise StagetrainError(f"model.task=lm predicts the next token, but dataset={dataset.name} gives one class "
                              "label per text. Use model.task=classification (or leave model.task=null).")
    if model.task == "classification" and lm_data:
        raise StagetrainError(f"model.task=classification needs class labels, but dataset={dataset.name} gives "
                              f"next-token targets. Use model.task={'mlm' if t in ENCODERS else 'lm'} "
                              "(or leave model.task=null).")
    c = model.config
    vocab = _get(c, "vocab_size")
    if datasets.vocab_size(dataset) > vocab or (model.mask_id is not None and model.mask_id >= vocab):
        raise StagetrainError(f"dataset={dataset.name} has {datasets.vocab_size(dataset)} token ids"
                              f"{' and the mask token ' + str(model.mask_id) if model.mask_id is not None else ''},"
                              f" more than the model's vocab_size={vocab}. Use a smaller tokenizer or a model "
                              "with a larger vocabulary.")
    _check_heads(c, t)
    positions = _get(c, "max_position_embeddings", "n_positions") - (int(c.get("pad_token_id") or 0) + 1
                                                                      if t == "roberta" else 0)
    if t in ("gpt2", *ENCODERS) and dataset.max_len > positions:
        raise StagetrainError(f"dataset.max_len={dataset.max_len} tokens do not fit the model's {positions} "
                              "positions. Raise model.config.max_position_embeddings (GPT-2: n_positions) or "
                              "lower dataset.max_len.")


def _check_heads(c: dict[str, Any], t: str) -> None:
    """Attention shapes transformers' config does not check but its layers need."""
    d, heads = _get(c, "hidden_size", "n_embd"), _get(c, "num_attention_heads", "n_head")
    kv = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or d // max(heads, 1))
    bad = (d % heads and "hidden_size must be divisible by num_attention_heads (each head gets hidden_size / heads "
                         "dimensions)") or \
          (heads % kv and "num_attention_heads must be a multiple of num_key_value_heads (grouped-query attention)") or \
          (t not in ("gpt2", *ENCODERS) and head_dim % 2 and "the head dimension must be even (rotary positions "
                                                                 "rotate pairs of dimensions)")
    if bad:
        raise StagetrainError(f"model.config: hidden_size={d}, num_attention_heads={heads}, num_key_value_heads={kv} "
                              f"do not fit: {bad}. E.g. hidden_size=64 with num_attention_heads=4.")


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """Stem (embeddings), one block per layer, head; every part carries the plain config."""
    c, t = dict(m.config), _type(m)
    task = m.task or "classification"
    tokens, d = int(in_shape[0]), _get(c, "hidden_size", "n_embd")
    vocab, layers = _get(c, "vocab_size"), _get(c, "num_hidden_layers", "n_layer")
    padding = task != "lm" or None  # labelled texts and mlm pad with id 0; LM windows are never padded
    common = {"model_type": t, "config": c, "tokens": tokens, "padding": padding}
    stem = HFEmbed(**common, vocab_size=vocab, d_model=d, out_shape=[tokens, d],
                   mask_id=int(m.mask_id) if task == "mlm" else None)
    layer = HFEncoderLayer if t in ENCODERS else HFDecoderLayer
    blocks: list[Block] = [layer(name=f"block{i + 1}", **common, index=i, causal=t not in ENCODERS,
                                 out_shape=[tokens, d]) for i in range(layers)]
    out = vocab if task in ("lm", "mlm") else int(num_classes)
    tie = task != "classification" and bool(c.get("tie_word_embeddings", True))
    head = HFHead(**common, task=task, inp=d, out=out, tie=tie, objective=task if task != "classification" else None)
    return ModelSpec(in_shape=list(in_shape), num_classes=out, stem=stem, blocks=blocks, head=head).to_dict()


def as_classifier(arch: dict[str, Any], num_classes: int, model: Any = None) -> dict[str, Any]:
    """An LM's or MLM's spec under the model's own classification head over padded inputs (the
    stem and layers keep their weights, causality and mask token row): fine-tuning on labels."""
    a = from_dict(arch)
    h = a.head
    cls = HFHead(model_type=h.model_type, config=h.config, tokens=h.tokens, padding=True, task="classification",
                 inp=h.inp, out=int(num_classes), tie=False)
    return replace(a, num_classes=int(num_classes), stem=replace(a.stem, padding=True),
                   blocks=[replace(b, padding=True) for b in a.blocks], head=cls).to_dict()


def with_mask_token(arch: dict[str, Any]) -> dict[str, Any]:
    """One more embedding row, ``mlm`` pretraining's mask token: id = the old vocabulary size."""
    a = from_dict(arch)
    if a.stem.mask_id is not None:
        return arch
    vocab = int(a.stem.vocab_size)
    config = {**a.stem.config, "vocab_size": vocab + 1}
    head = replace(a.head, config=config, out=vocab + 1 if a.head.task in ("lm", "mlm") else a.head.out)
    return replace(a, stem=replace(a.stem, config=config, vocab_size=vocab + 1, mask_id=vocab),
                   blocks=[replace(b, config=config) for b in a.blocks], head=head, num_classes=head.out).to_dict()


def check_text_pretrain(m: Any, objective: str) -> None:
    """In-run lm / mlm pretraining needs the layers the architecture has (no model.causal here)."""
    encoder = _type(m) in ENCODERS
    if (objective == "lm") == encoder:
        need = "causal layers (a decoder: gpt2, llama, qwen2, mistral)" if encoder else \
            "bidirectional layers (an encoder: bert, roberta)"
        raise StagetrainError(f"strategy.pretrain.objective={objective} needs {need}, but a {_type(m)} model is "
                              f"{'an encoder' if encoder else 'a decoder'}. Use strategy.pretrain.objective="
                              f"{'mlm' if encoder else 'lm'}, or a model_type with {need.partition(' (')[0]}.")


def grow_widths(m: Any) -> list[int]:
    """Grow schedules depth only: every layer at the config's MLP width."""
    c = m.config
    width = c.get("intermediate_size") or c.get("n_inner") or 4 * _get(c, "hidden_size", "n_embd")
    return [int(width)] * _get(c, "num_hidden_layers", "n_layer")


def with_grow_widths(m: Any, widths: list[int]) -> Any:
    final = grow_widths(m)[0]
    if any(int(w) != final for w in widths):
        raise StagetrainError(f"model=hf grows in depth only (a transformers config has one MLP width for every "
                              f"layer), but the schedule asks for widths {list(widths)}. Give every stage the "
                              f"width {final}, e.g. strategy.widths=[[{final}],[{final},{final}]], or leave "
                              "strategy.widths unset (depth 1 -> 2 -> all layers).")
    key = "n_layer" if "n_layer" in m.config else "num_hidden_layers"
    return replace(m, config={**m.config, key: len(widths)})


def grow_schedule(m: Any) -> list[list[int]]:
    """grow's default: depth 1 -> 2 -> all layers at the model's MLP width."""
    return [grow_widths(m)[:d] for d in sorted({1, 2, len(grow_widths(m))})]


def init_weights(m: Any, model: Any) -> dict[str, Any] | None:
    """A fresh model's weights from ``model.pretrained`` (its model.safetensors), if set."""
    from stagetrain.models.hf_io import load_pretrained

    return load_pretrained(model, m.pretrained) if m.pretrained else None


def export(m: Any, model: Any, run_dir: Path) -> Path | None:
    """``<run>/hf/``: the trained model in transformers' format (save_pretrained)."""
    from stagetrain.models.hf_io import export_pretrained

    return export_pretrained(model, Path(run_dir) / "hf")
