"""The model operations a plan names -- growth (``Widen``, ``Deepen``, ``Stack``) and LoRA
(``AddLora``, ``MergeLora``) -- as typed records. ``growth.ops.apply_op`` applies them (by
type); in run.json, metrics.jsonl's growth events and the dry run they are the plain dicts
they always were: ``{"op": "widen", "block": ..., "width": ..., "method": ..., "noise": ...}``
(``to_dict``), and such a dict, from an older run or a test, reads back (``from_dict``).
Torch-free plain data.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar

from stagetrain.core.errors import StagetrainError


@dataclass(frozen=True)
class ModelOp:
    """One operation on the model; ``op`` is its name in the plain dict."""

    op: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, **{f.name: getattr(self, f.name) for f in fields(self)}}

    def describe(self) -> str:
        """The operation in words, for the dry run's table."""
        return self.op


@dataclass(frozen=True)
class Widen(ModelOp):
    """Widen ``block`` to ``width`` units (``method``: net2net -- function-preserving -- or
    random; ``noise``: relative noise added to the replicated units)."""

    op: ClassVar[str] = "widen"
    block: str
    width: int
    method: str = "net2net"
    noise: float = 0.0

    def describe(self) -> str:
        return f"widen {self.block} to {self.width} ({self.method}, noise {self.noise:g})"


@dataclass(frozen=True)
class Deepen(ModelOp):
    """Insert a block of the same type after block ``after`` (``kind``: identity,
    residual_zero, random; what the block type offers, ``deepen:<kind>``)."""

    op: ClassVar[str] = "deepen"
    after: str
    kind: str = "identity"

    def describe(self) -> str:
        return f"deepen after {self.after} ({self.kind})"


@dataclass(frozen=True)
class Stack(ModelOp):
    """Depth stacking: copies of every block on top of the stack."""

    op: ClassVar[str] = "stack"


@dataclass(frozen=True)
class AddLora(ModelOp):
    """Low-rank adapters on the blocks' layers matching ``targets`` (None or empty: every
    ``nn.Linear``); the model's function is unchanged."""

    op: ClassVar[str] = "add_lora"
    rank: int
    alpha: float
    targets: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "rank": self.rank, "alpha": self.alpha}
        return out if self.targets is None else {**out, "targets": list(self.targets)}


@dataclass(frozen=True)
class MergeLora(ModelOp):
    """Fold the adapters into plain layers; the function is unchanged."""

    op: ClassVar[str] = "merge_lora"


OPS: dict[str, type[ModelOp]] = {cls.op: cls for cls in (Widen, Deepen, Stack, AddLora, MergeLora)}


def from_dict(data: dict[str, Any]) -> ModelOp:
    """The op a plain dict describes (run.json, a checkpoint's plan, an older run), or one
    paragraph naming what is wrong."""
    name = data.get("op") if isinstance(data, dict) else None
    if name not in OPS:
        raise StagetrainError(
            f"The model operation {data!r} names no known op (known: {', '.join(OPS)}). The plan may come from "
            "a newer stagetrain.")
    cls = OPS[name]
    known = {f.name for f in fields(cls)}
    extra = sorted(set(data) - known - {"op"})
    missing = sorted(f.name for f in fields(cls) if f.name not in data and f.default is MISSING)
    if extra or missing:
        raise StagetrainError(
            f"The model operation {data!r} is not a valid {name}: "
            + "; ".join(x for x in (f"unknown keys {extra}" if extra else "",
                                    f"missing keys {missing}" if missing else "") if x)
            + f". A {name} has the keys {sorted(known) or 'none'} besides 'op'.")
    values = {k: v for k, v in data.items() if k != "op"}
    if "targets" in values and values["targets"] is not None:
        values["targets"] = tuple(values["targets"])
    return cls(**values)


def as_op(op: ModelOp | dict[str, Any]) -> ModelOp:
    """``op`` itself, or the op its plain dict describes."""
    return op if isinstance(op, ModelOp) else from_dict(op)
