"""The records of the sequence part types (torch-free): ``model=transformer``'s stems
(``patch_embed``, ``token_embed``), ``transformer_layer`` and heads (``seq_classifier``,
``lm_head``), and ``model=hf``'s parts (``hf_embed``, ``hf_decoder_layer`` /
``hf_encoder_layer``, ``hf_head``), which carry transformers' plain config dict. Their fields
are the keys of the plain dict (``inp`` is "in"); see ``core/partbase.py`` for the round trip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from stagetrain.core.partbase import Block, Head, Part


@dataclass(kw_only=True)
class PatchEmbed(Part):
    """``patch_embed``: an image cut into ``patch`` x ``patch`` tokens (+ a class token)."""

    TAG: ClassVar[str | None] = "patch_embed"
    BUILDER: ClassVar[str] = "stagetrain.models.transformer"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "in_shape", "patch", "d_model", "cls_token", "tokens", "out_shape")
    in_shape: list[int]
    patch: int
    d_model: int
    cls_token: bool | None = None
    tokens: int
    out_shape: list[int] | None = None


@dataclass(kw_only=True)
class TokenEmbed(Part):
    """``token_embed``: token ids to vectors plus learnt positions; ``padding``: id 0 is padding;
    ``mask_id``: the row of mlm's mask token."""

    TAG: ClassVar[str | None] = "token_embed"
    BUILDER: ClassVar[str] = "stagetrain.models.transformer"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "vocab_size", "max_len", "d_model", "padding", "out_shape", "mask_id")
    vocab_size: int
    max_len: int
    d_model: int
    padding: bool | None = None
    mask_id: int | None = None
    out_shape: list[int] | None = None


@dataclass(kw_only=True)
class TransformerLayer(Block):
    """``transformer_layer``: pre-norm attention + MLP (``mlp_hidden`` units)."""

    TAG: ClassVar[str | None] = "transformer_layer"
    BUILDER: ClassVar[str] = "stagetrain.models.transformer"
    ORDER: ClassVar[tuple[str, ...]] = ("name", "type", "d_model", "n_heads", "mlp_hidden", "tokens", "causal",
                                        "dropout", "out_shape", "padding")
    d_model: int
    n_heads: int
    mlp_hidden: int
    tokens: int
    causal: bool | None = None
    dropout: float | None = None
    padding: bool | None = None


@dataclass(kw_only=True)
class SeqClassifier(Head):
    """``seq_classifier``: the tokens pooled (``pool``: mean or cls), then a Linear."""

    TAG: ClassVar[str | None] = "seq_classifier"
    BUILDER: ClassVar[str] = "stagetrain.models.transformer"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "in", "out", "pool", "tokens", "padding")
    pool: str | None = None
    tokens: int | None = None
    padding: bool | None = None


@dataclass(kw_only=True)
class LMHeadPart(Head):
    """``lm_head``: per-position vocabulary logits (``tie``: the token embedding's weight)."""

    TAG: ClassVar[str | None] = "lm_head"
    BUILDER: ClassVar[str] = "stagetrain.models.transformer"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "in", "out", "tie", "tokens")
    tie: bool | None = None
    tokens: int | None = None


@dataclass(kw_only=True)
class HFPart(Part):
    """What every ``model=hf`` part carries: the architecture and transformers' plain config."""

    BUILDER: ClassVar[str] = "stagetrain.models.hf_parts"

    model_type: str
    config: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    padding: bool | None = None


@dataclass(kw_only=True)
class HFEmbed(HFPart):
    """``hf_embed``: the model's embeddings (``mask_id``: the row of mlm's mask token)."""

    TAG: ClassVar[str | None] = "hf_embed"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "model_type", "config", "tokens", "padding", "vocab_size", "d_model",
                                        "out_shape", "mask_id")
    vocab_size: int
    d_model: int | None = None
    out_shape: list[int] | None = None
    mask_id: int | None = None


@dataclass(kw_only=True)
class HFDecoderLayer(HFPart, Block):
    """``hf_decoder_layer``: transformers' decoder layer number ``index``."""

    TAG: ClassVar[str | None] = "hf_decoder_layer"
    ORDER: ClassVar[tuple[str, ...]] = ("name", "type", "model_type", "config", "tokens", "padding", "index", "causal",
                                        "out_shape")
    index: int | None = None
    causal: bool | None = None


@dataclass(kw_only=True)
class HFEncoderLayer(HFDecoderLayer):
    """``hf_encoder_layer``: transformers' encoder layer number ``index``."""

    TAG: ClassVar[str | None] = "hf_encoder_layer"


@dataclass(kw_only=True)
class HFHead(HFPart, Head):
    """``hf_head``: the model's own head for ``task`` (lm, mlm, classification); ``objective``:
    what its per-position logits train (lm, mlm), absent for a classifier."""

    TAG: ClassVar[str | None] = "hf_head"
    ORDER: ClassVar[tuple[str, ...]] = ("type", "model_type", "config", "tokens", "padding", "task", "in", "out", "tie",
                                        "objective")
    task: str
    tie: bool | None = None
    objective: str | None = None
