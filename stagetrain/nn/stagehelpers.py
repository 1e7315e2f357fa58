"""A stage's helper -- the module that exists only during its stage -- as typed records:
``AuxHead`` (an auxiliary classifier, stagetrain/nn/auxheads.py), ``LMHead`` (an auxiliary
per-position vocabulary head), ``Decoder`` (autoencoder / denoising) and ``RBMVisible`` (an
RBM's visible bias). ``objectives.build_helper`` builds the module from one.

In run.json's plan they are the plain dicts they always were (``to_dict``:
``{"kind": "decoder", "type": ..., "in": ..., ...}``; optional fields left out when unset),
and such a dict reads back (``from_dict``). A record is also a read-only mapping of that dict,
so code that reads ``helper["in"]`` or ``helper.get("kind")`` reads it unchanged (and it equals
that dict). Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from stagetrain.core.errors import StagetrainError


@dataclass(frozen=True, eq=False)
class Helper(Mapping[str, Any]):
    """One helper; ``kind`` is its name in the plain dict. Fields named ``in_`` are ``in``
    there; the fields in ``OPTIONAL`` are left out while None."""

    kind: ClassVar[str] = ""
    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self.OPTIONAL:
                continue
            out[f.name.rstrip("_")] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def reads_tokens(self) -> bool:
        """True when the helper's targets are the input tokens (in-run lm / mlm pretraining
        on padded texts), not the batch's labels."""
        return False

    def __eq__(self, other: object) -> bool:
        """Equal to the same record, and to its plain dict (as a mapping is)."""
        if isinstance(other, Helper):
            return type(other) is type(self) and other.to_dict() == self.to_dict()
        return isinstance(other, Mapping) and dict(other) == self.to_dict()

    def __hash__(self) -> int:
        return hash((type(self), *(getattr(self, f.name) for f in fields(self))))

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True, eq=False)
class AuxHead(Helper):
    """An auxiliary classifier on a block's output (``head``: linear -- the default --, conv,
    mlp_sr; their sizes resolved to the published defaults; ``extra_layers``: an older run's
    plain convs before the linear head's pooling)."""

    kind: ClassVar[str] = "aux_head"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("head", "layers", "width", "grid", "reduce", "mlp_layers", "extra_layers")
    in_shape: tuple[int, ...]
    out: int
    head: str | None = None
    layers: int | None = None
    width: int | None = None
    grid: int | None = None
    reduce: int | None = None
    mlp_layers: int | None = None
    extra_layers: int | None = None


@dataclass(frozen=True, eq=False)
class LMHead(Helper):
    """An auxiliary LM head (LayerNorm + Linear to the vocabulary, per position);
    ``targets="tokens"``: it predicts the input tokens of padded texts, not the labels."""

    kind: ClassVar[str] = "lm_head"
    OPTIONAL: ClassVar[tuple[str, ...]] = ("targets",)
    in_: int
    out: int
    targets: str | None = None

    @property
    def reads_tokens(self) -> bool:
        return self.targets == "tokens"


@dataclass(frozen=True, eq=False)
class Decoder(Helper):
    """Maps a block's output back to its input (``tied``: the encoder's weight transposed)."""

    kind: ClassVar[str] = "decoder"
    type: str
    in_: int
    out: int
    tied: bool
    kernel: int | None = None
    pool: int = 0


@dataclass(frozen=True, eq=False)
class RBMVisible(Helper):
    """The visible bias of an RBM whose weight and hidden bias are the block's Linear."""

    kind: ClassVar[str] = "rbm"
    in_: int


HELPERS: dict[str, type[Helper]] = {cls.kind: cls for cls in (AuxHead, LMHead, Decoder, RBMVisible)}


def from_dict(data: Mapping[str, Any]) -> Helper:
    """The helper a plain dict describes (a plan, an older run's run.json), or one paragraph."""
    kind = data.get("kind") if isinstance(data, Mapping) else None
    if kind not in HELPERS:
        raise StagetrainError(f"The stage helper {data!r} names no known kind (known: {', '.join(HELPERS)}). "
                              "The plan may come from a newer stagetrain.")
    cls = HELPERS[kind]
    names = {f.name.rstrip("_"): f.name for f in fields(cls)}
    extra = sorted(set(data) - set(names) - {"kind"})
    missing = sorted(k for k, n in names.items() if k not in data
                     and next(f for f in fields(cls) if f.name == n).default is MISSING)
    if extra or missing:
        raise StagetrainError(f"The stage helper {data!r} is not a valid {kind}: unknown keys {extra}, missing "
                              f"keys {missing}. A {kind} has the keys {sorted(names)} besides 'kind'.")
    values = {names[k]: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k != "kind"}
    return cls(**values)


def as_helper(helper: Helper | Mapping[str, Any] | None) -> Helper | None:
    """``helper`` itself, None, or the helper its plain dict describes."""
    return helper if helper is None or isinstance(helper, Helper) else from_dict(helper)
