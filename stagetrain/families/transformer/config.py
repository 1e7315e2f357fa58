"""``model=transformer``: a pre-LayerNorm Transformer (ViT-style on images).

The ``patch`` stem splits an image into ``patch`` x ``patch`` patches (one token each) with a
linear patch embedding and learned positions; ``tokens`` embeds token ids (``vocab_size``,
``max_len``) for text data. ``n_layers`` layers of ``d_model`` width and ``n_heads`` heads,
MLP hidden size ``mlp_ratio * d_model`` (or per layer: ``mlp_hidden``, which is what
``strategy=grow`` schedules). The ``cls`` head pools (mean, or a CLS token) then LayerNorm +
Linear; the ``lm`` head gives per-position vocabulary logits (causal), trained by the ``lm``
objective (next token).

``resolve`` fills what follows the data: the stem (tokens for text datasets, patches for
images), the head (lm for language-model data, cls otherwise) and ``vocab_size`` (the text
dataset's vocabulary). On padded text classification the layers mask padding (token id 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from stagetrain import datasets
from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.partbase import Block, Head
from stagetrain.core.parts_seq import (
    LMHeadPart,
    PatchEmbed,
    SeqClassifier,
    TokenEmbed,
    TransformerLayer,
)
from stagetrain.core.spec import ModelSpec, from_dict

MAX_AUTO_TOKENS = 64  # patch=0 picks the smallest patch giving at most this many tokens


@dataclass
class Config:
    name: str = "transformer"
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    mlp_ratio: float = 4.0
    mlp_hidden: list[int] | None = None  # per-layer MLP hidden sizes; overrides n_layers and mlp_ratio
    dropout: float = 0.0
    stem: str | None = None  # null: tokens for text datasets, patch for images
    patch: int = 4  # 8x8 digits: 4 tokens; 28x28: 49; 32x32: 64. 0: the smallest patch giving <= 64 tokens
    vocab_size: int | None = None  # null: the text dataset's vocabulary (256 otherwise)
    max_len: int = 128
    head: str | None = None  # null: lm for language-model data, cls otherwise
    pool: str = "mean"
    tie_embeddings: bool = True
    causal: bool | None = None  # null: false for head=cls, true for head=lm


def layer_widths(m: Any) -> list[int]:
    """The MLP hidden size of every layer."""
    if m.mlp_hidden:
        return [int(w) for w in m.mlp_hidden]
    return [max(1, round(float(m.mlp_ratio) * int(m.d_model)))] * int(m.n_layers)


def is_lm(m: Any) -> bool:
    """A language model: the head gives per-position vocabulary logits."""
    return m.head == "lm"


def is_causal(m: Any) -> bool:
    return bool(m.causal) if m.causal is not None else m.head == "lm"


def resolve(model: Any, dataset: Any) -> Any:
    """``model`` with the values left null filled from the dataset (see the module doc)."""
    text = datasets.inputs(dataset) == "tokens"
    stem = model.stem or ("tokens" if text else "patch")
    head = model.head or ("lm" if text and datasets.is_lm(dataset) else "cls")
    vocab = model.vocab_size
    if text and stem == "tokens":
        have = datasets.vocab_size(dataset)
        if vocab is not None and vocab != have:
            raise StagetrainError(
                f"model.vocab_size={vocab} does not match dataset={dataset.name}'s vocabulary of {have} token ids "
                f"(dataset.tokenizer={dataset.tokenizer}, padding included). Leave model.vocab_size=null to follow "
                f"the data, or set model.vocab_size={have}.")
        vocab = have
    return replace(model, stem=stem, head=head, vocab_size=256 if vocab is None else vocab)


def patch_size(m: Any, in_shape: tuple[int, ...]) -> int:
    if int(m.patch) > 0:
        return int(m.patch)
    _, h, w = in_shape
    for p in range(2, min(h, w) + 1):
        if h % p == 0 and w % p == 0 and (h // p) * (w // p) <= MAX_AUTO_TOKENS:
            return p
    return 1


def validate(model: Any, dataset: Any) -> None:
    check_choice("model.stem", model.stem, ("patch", "tokens"))
    check_choice("model.head", model.head, ("cls", "lm"))
    check_choice("model.pool", model.pool, ("mean", "cls"))
    for key in ("d_model", "n_heads", "n_layers", "mlp_ratio", "vocab_size", "max_len"):
        if not getattr(model, key) > 0:
            raise StagetrainError(f"model.{key}={getattr(model, key)} is out of range: it must be > 0.")
    if model.d_model % model.n_heads:
        raise StagetrainError(f"model.d_model={model.d_model} must be divisible by model.n_heads={model.n_heads} "
                              f"(each head gets d_model / n_heads dimensions), e.g. n_heads=4 with d_model=64.")
    if model.mlp_hidden is not None and (not model.mlp_hidden or any(int(w) <= 0 for w in model.mlp_hidden)):
        raise StagetrainError(f"model.mlp_hidden={list(model.mlp_hidden)} is not valid: give one positive MLP "
                              "hidden size per layer, e.g. [256,256], or null to use n_layers and mlp_ratio.")
    if not 0 <= model.dropout < 1:
        raise StagetrainError(f"model.dropout={model.dropout} is out of range: it must be in [0, 1).")
    if datasets.inputs(dataset) == "tokens":
        _validate_text(model, dataset)
        return
    if model.head == "lm":
        raise StagetrainError(
            f"model.head=lm (a causal language-model head) predicts the next token, but dataset={dataset.name} "
            "gives images with class labels. Use model.head=cls, or language-model data: dataset=text "
            "dataset.paths=[...] or dataset=fortunes dataset.task=lm.")
    if model.stem == "tokens":
        raise StagetrainError(
            f"model.stem=tokens embeds token ids, but dataset={dataset.name} gives images. Use model.stem=patch "
            "(or a text dataset: text, text_classification, fortunes).")
    _validate_patches(model, dataset)


def _validate_text(model: Any, dataset: Any) -> None:
    if model.stem != "tokens":
        raise StagetrainError(f"model.stem={model.stem} cuts images into patches, but dataset={dataset.name} gives "
                              "token ids. Use model.stem=tokens (or leave model.stem=null).")
    lm = datasets.is_lm(dataset)
    if (model.head == "lm") != lm:
        need, why = ("lm", "next-token targets") if lm else ("cls", "one class label per text")
        raise StagetrainError(f"model.head={model.head} does not fit dataset={dataset.name}, which gives {why}. "
                              f"Use model.head={need} (or leave model.head=null).")
    if dataset.max_len > model.max_len:
        raise StagetrainError(f"dataset.max_len={dataset.max_len} tokens do not fit model.max_len={model.max_len} "
                              f"positions. Raise model.max_len to at least {dataset.max_len} or lower dataset.max_len.")


def _validate_patches(model: Any, dataset: Any) -> None:
    if datasets.inputs(dataset) != "image":
        raise StagetrainError(
            f"model=transformer with model.stem=patch needs image inputs, but dataset={dataset.name} gives "
            f"{datasets.inputs(dataset)}. Give dataset.shape=[channels,height,width].")
    h, w = tuple(getattr(dataset, "shape", None) or datasets.dataset(dataset.name).meta(dataset)[0])[1:]
    p = int(model.patch)
    if p < 0 or (p and (h % p or w % p)):
        raise StagetrainError(f"model.patch={p} must divide the image size {h}x{w} of dataset={dataset.name} "
                              "(or be 0 to choose one), e.g. 2 for 8x8 digits, 4 or 7 for 28x28.")


def spec(m: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    m = replace(m, stem=m.stem or "patch", head=m.head or "cls")  # a Config used without resolve: images
    d = int(m.d_model)
    padding = None  # the key is written only when true
    stem: TokenEmbed | PatchEmbed
    if m.stem == "tokens":
        tokens = int(in_shape[0]) if len(in_shape) == 1 else int(m.max_len)
        padding = m.head != "lm" or None  # classification pads short texts with id 0; LM windows are never padded
        stem = TokenEmbed(vocab_size=int(m.vocab_size or 256), max_len=int(m.max_len), d_model=d, padding=padding)
    else:
        p = patch_size(m, in_shape)
        cls_token = m.head == "cls" and m.pool == "cls"
        tokens = (in_shape[1] // p) * (in_shape[2] // p) + int(cls_token)
        stem = PatchEmbed(in_shape=list(in_shape), patch=p, d_model=d, cls_token=cls_token, tokens=tokens)
    blocks: list[Block] = [
        TransformerLayer(name=f"block{i + 1}", d_model=d, n_heads=int(m.n_heads), mlp_hidden=w, tokens=tokens,
                         causal=is_causal(m), dropout=float(m.dropout), out_shape=[tokens, d], padding=padding)
        for i, w in enumerate(layer_widths(m))]
    head: Head
    if m.head == "lm":
        out = int(m.vocab_size)
        head = LMHeadPart(inp=d, out=out, tie=bool(m.tie_embeddings) and m.stem == "tokens", tokens=tokens)
    else:
        out = int(num_classes)
        head = SeqClassifier(inp=d, out=out, pool=m.pool, tokens=tokens, padding=padding)
    stem.out_shape = [tokens, d]
    return ModelSpec(in_shape=list(in_shape), num_classes=out, stem=stem, blocks=blocks, head=head).to_dict()


def as_classifier(arch: dict[str, Any], num_classes: int, model: Any) -> dict[str, Any]:
    """A language model's spec with a new pooled classifier head over padded token inputs:
    what fine-tuning an LM on labelled texts starts from (the layers keep their causality)."""
    a = from_dict(arch)
    head = SeqClassifier(inp=a.stem.d_model, out=int(num_classes), pool=getattr(model, "pool", "mean"),
                         tokens=a.head.tokens, padding=True)
    return replace(a, num_classes=int(num_classes), stem=replace(a.stem, padding=True),
                   blocks=[replace(b, padding=True) for b in a.blocks], head=head).to_dict()


def with_mask_token(arch: dict[str, Any]) -> dict[str, Any]:
    """A token model's spec with one more embedding row: the mask token of ``mlm`` pretraining,
    id ``mask_id`` = the data's vocabulary size (so the data's ids keep their meaning)."""
    a = from_dict(arch)
    if a.stem.mask_id is not None:
        return arch
    vocab = int(a.stem.vocab_size)
    return replace(a, stem=replace(a.stem, vocab_size=vocab + 1, mask_id=vocab)).to_dict()


def grow_widths(m: Any) -> list[int]:
    """Grow schedules the per-layer MLP hidden sizes (d_model and the heads stay fixed)."""
    return layer_widths(m)


def with_grow_widths(m: Any, widths: list[int]) -> Any:
    return replace(m, mlp_hidden=[int(w) for w in widths], n_layers=len(widths))


def grow_schedule(m: Any) -> list[list[int]]:
    """grow's default: depth 1 -> 2 -> n_layers at the model's own MLP widths (new layers are
    zero-output, exact); a one-layer model widens its MLP instead (/ 4, / 2, / 1)."""
    widths = layer_widths(m)
    if len(widths) == 1:
        from stagetrain.families import scaled_schedule

        return scaled_schedule(widths)
    depths = sorted({1, 2, len(widths)})
    return [widths[:d] for d in depths]
