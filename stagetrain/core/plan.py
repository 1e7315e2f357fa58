"""Stage and Plan: what a strategy compiles to, as plain data the engine runs.

A stage says which blocks the forward path uses, which groups train (block names,
``head``, ``helper``), the objective, the data, the optimizer settings, and its budget.
It owns no code: the engine applies it. What only one objective or strategy uses sits behind
its owner: ``Stage.objective_args`` is the objective's typed parameters (declared in
``nn/objective_registry.py``: denoising's ``noise``, rbm's ``cd_k``), ``Stage.extra`` a
strategy's typed per-stage settings (a ``StageExtra`` subclass in the plug's ``config.py``:
grow's ``data_fraction``, finetune's ``partial`` and ``bn``). ``Plan.to_dict`` (plain data:
the model ops, helpers, objective args and extra as their dicts) is what ``run.json`` and
``dry_run`` show; ``Plan.from_dict`` reads it back, an older run's flat stage keys included.
"""

from __future__ import annotations

import enum
from dataclasses import MISSING, asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar

from stagetrain.core.errors import StagetrainError, check_types
from stagetrain.core.plugs import axis
from stagetrain.nn.modelops import ModelOp, as_op
from stagetrain.nn.objective_registry import args_dict, as_args
from stagetrain.nn.objective_registry import find as find_objective
from stagetrain.nn.stagehelpers import Helper, as_helper


class StopReason(str, enum.Enum):
    """Why a stage (or the run) stopped; every stage records one."""

    EPOCHS = "epochs"
    PATIENCE = "patience"
    TARGET = "target"
    BUDGET = "budget"
    SIGNAL = "signal"
    STAGE_BUDGET = "stage_budget"
    COMPLEXITY = "complexity"
    PLATEAU = "plateau"

    @property
    def message(self) -> str:
        return {
            "epochs": "ran its last epoch",
            "patience": "validation metric stopped improving (train.patience)",
            "target": "reached the target metric",
            "budget": "compute budget spent",
            "signal": "stopped by a signal; resume with resume=auto",
            "stage_budget": "spent its share of the compute budget",
            "complexity": "val loss + lambda * parameters stopped improving (complexity penalty)",
            "plateau": "validation loss plateaued (epochs=auto)",
        }[self.value]


@dataclass
class StageExtra:
    """A strategy's own per-stage settings (``Stage.extra``); this base is a stage without any.

    A strategy declares a dataclass subclass in its plug's ``config.py`` with a kind, by
    convention its name (``class GrowStage(StageExtra, kind="grow")``), and fields of its
    own. The class attributes below are what the engine asks of every stage, with the
    neutral answers; a subclass answers by a field of the same name. run.json holds it as
    ``{"kind": ..., **fields}``; reading looks the kind up among the declared subclasses
    (``declared``), never imports or calls what a file names.
    """

    kind: ClassVar[str] = ""
    declared: ClassVar[dict[str, type[StageExtra]]] = {}
    data_fraction = 1.0  # train on this leading fraction of a fixed seeded order of the data
    partial: ClassVar[Any] = MappingProxyType({})  # group -> parameter-name patterns (fnmatch) that train
    bn = "eval"  # BatchNorm of frozen groups: eval | train_stats | train_affine

    def __init_subclass__(cls, kind: str = "", **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if kind:
            had = StageExtra.declared.get(kind)
            if had is not None and (had.__module__, had.__qualname__) != (cls.__module__, cls.__qualname__):
                raise StagetrainError(
                    f"{cls.__module__}.{cls.__qualname__} declares stage settings of kind {kind!r}, which "
                    f"{had.__module__}.{had.__qualname__} declares already: a kind is its strategy's name, one per plug.")
            cls.kind = kind
            StageExtra.declared[kind] = cls

    def to_dict(self) -> dict[str, Any] | None:
        """run.json's form: ``{"kind": ..., **fields}``; None for a stage without settings."""
        return {"kind": self.kind, **asdict(self)} if self.kind else None


def settings_class(kind: str) -> type[StageExtra] | None:
    """The ``StageExtra`` subclass of ``kind``. A kind is its strategy's name: when none is
    declared yet, that strategy plug's ``config.py`` is loaded first -- a lookup among the
    discovered plugs (``core/plugs.py``), never a path or callable read from a file."""
    if kind not in StageExtra.declared and kind in axis("strategy"):
        axis("strategy").config(kind)
    return StageExtra.declared.get(kind)


FLAT_ARGS = ("noise", "cd_k")  # objective parameters an older plan held flat on every stage
ENGINE_ASKS = ("data_fraction", "partial", "bn")  # StageExtra's questions: once flat Stage fields


def as_extra(value: Any) -> StageExtra:
    """A stage's ``extra``: a ``StageExtra`` as it is, None as the neutral one, a plain dict
    (run.json) read into the subclass its ``kind`` declares; anything else is one paragraph."""
    if value is None:
        return StageExtra()
    if isinstance(value, StageExtra):
        return value
    kind = value.get("kind") if isinstance(value, dict) else None
    cls = settings_class(kind) if isinstance(kind, str) else None
    names = {f.name for f in fields(cls)} if cls is not None else set()
    if cls is None or not set(value) - {"kind"} <= names:
        known = ", ".join(f"{k} ({', '.join(f.name for f in fields(c))})" for k, c in sorted(StageExtra.declared.items()))
        raise StagetrainError(
            f"A stage's extra settings {value!r} are not a strategy's: give a mapping with a declared kind and its "
            f"fields (declared: {known or 'none'}). The plan may come from a newer stagetrain or a strategy plug that "
            "is not installed.")
    settings = {k: v for k, v in value.items() if k != "kind"}
    check_types(cls, settings, f"A stage's {kind} settings")
    return cls(**settings)


@dataclass
class Stage:
    """One phase of training. Group names: ``stem`` (models with one), ``block1..blockL``,
    ``head``, ``helper``."""

    name: str
    epochs: int | None  # None: bounded by max_flops instead (grow's flops_share trigger, scratch's strategy.flops)
    trainable: list[str]
    objective: str = "supervised"  # a registered objective (objective_registry): supervised | lm | mlm | autoencoder | denoising | rbm
    objective_args: Any = None  # the objective's parameters (objective_registry: DenoisingArgs, RBMArgs; a plain dict read)
    stop_block: int | None = None  # forward path is blocks[:stop_block] (None: all blocks)
    helper: Helper | None = None  # auxiliary head / decoder (stagehelpers; a plain dict read), dropped at stage end
    helper_to_head: bool = False  # at stage end, the helper becomes the model's head
    data: str = "labeled"  # labeled: the labelled subset; all: every training input
    dataset: str = "target"  # target: the run's dataset; source: finetune's in-run pretraining data
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    sched: str = "cosine"
    lr_scale: dict[str, float] = field(default_factory=dict)  # per group LR multiplier
    cache: str = "off"  # auto | on | off: reuse the frozen prefix's outputs in this stage
    ops: list[ModelOp] = field(default_factory=list)  # growth ops applied at stage start (modelops; plain dicts read)
    patience: int | None = None  # stage-level early stop (default: train.patience)
    max_flops: float | None = None  # stage compute budget (grow's flops_share trigger, scratch's strategy.flops)
    auto: dict[str, Any] | None = None  # epochs=auto: {"patience": p, "min_delta": d}; ``epochs`` is then the max
    extra: StageExtra = field(default_factory=StageExtra)  # the strategy's own settings (a plain dict read)
    description: str = ""

    def __post_init__(self) -> None:
        self.ops = [as_op(op) for op in self.ops]
        self.helper = as_helper(self.helper)
        self.objective_args = as_args(self.objective, self.objective_args)
        self.extra = as_extra(self.extra)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (a stage of run.json's ``plan``): every field, the typed ones as their dicts."""
        return {**asdict(self), "helper": self.helper.to_dict() if self.helper is not None else None,
                "ops": [op.to_dict() for op in self.ops], "objective_args": args_dict(self.objective_args),
                "extra": self.extra.to_dict()}

    @property
    def uses_head(self) -> bool:
        """True when the stage trains/evaluates the model itself (blocks + head)."""
        kind = find_objective(self.objective)
        return kind is not None and kind.through_head and self.helper is None and self.stop_block is None


@dataclass
class Plan:
    strategy: str
    stages: list[Stage]
    input_norm: str = "standardize"  # standardize | unit ([0, 1], for RBMs)
    target: str | None = None  # run-level stop, e.g. "val/acc>=0.97" or "val/ppl<=20"
    flop_budget: float | None = None  # run-level stop on cumulative training FLOPs
    complexity_penalty: float | None = None  # stop when val loss + lambda * params stops improving
    optimizer_state: str = "reset"  # across growth: reset, or map Adam moments through the op
    final_ops: list[ModelOp] = field(default_factory=list)  # model ops after the last stage

    def __post_init__(self) -> None:
        self.final_ops = [as_op(op) for op in self.final_ops]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (run.json's ``plan``): every field, the model ops and helpers as their dicts."""
        out = asdict(self)
        return {**out, "stages": [s.to_dict() for s in self.stages], "final_ops": [op.to_dict() for op in self.final_ops]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """A plan from its plain data (``to_dict``, run.json's ``plan``, also an older run's:
        ``migrate``). A stage's extra is read by its kind (``settings_class``); a key that is no
        field, or a missing one, is one paragraph."""
        _check_keys("plan", data, cls)
        stages = []
        for s in data["stages"]:
            _check_keys("stage", s, Stage, ENGINE_ASKS + FLAT_ARGS)
            stages.append(Stage(**migrate(s, data.get("strategy", ""))))
        return cls(**{**data, "stages": stages})


def _check_keys(what: str, data: Any, kind: type, older: tuple[str, ...] = ()) -> None:
    """A plan's or stage's plain data has only its fields (and an older plan's flat keys) and
    every field without a default."""
    known = [f.name for f in fields(kind)]
    required = [f.name for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]
    bad = sorted(set(data) - set(known) - set(older)) if isinstance(data, dict) else None
    missing = [k for k in required if k not in data] if isinstance(data, dict) else required
    if bad or missing or bad is None:
        raise StagetrainError(
            f"A {what} read back is not a stagetrain {what}: "
            + (f"it has {', '.join(bad)}, which are not fields. " if bad else "")
            + (f"it lacks {', '.join(missing)}. " if missing else "")
            + f"A {what} is a mapping of {', '.join(known)}. It may come from a newer stagetrain.")


def migrate(stage: dict[str, Any], strategy: str) -> dict[str, Any]:
    """An older run's stage dict in the current form. Plans before ``objective_args`` and
    ``extra`` held their fields flat: ``noise`` and ``cd_k`` become the objective's args (the
    fields it declares; the others were unread), ``data_fraction``, ``partial`` and ``bn``
    the extra of the plan's strategy (the kind its name declares). A flat value that no
    declared field takes must be the neutral one, or the plan is refused in one paragraph."""
    s = dict(stage)
    if "objective_args" not in s:
        flat = {k: s.pop(k) for k in FLAT_ARGS if k in s}
        kind = find_objective(s.get("objective", "supervised"))
        s["objective_args"] = args_dict(kind.args_from(flat)) if kind is not None else None
    if "extra" not in s:
        flat = {k: s.pop(k) for k in ENGINE_ASKS if k in s}
        own = settings_class(strategy) if isinstance(strategy, str) else None
        names = {f.name for f in fields(own)} if own is not None else set()
        left = {k: v for k, v in flat.items() if k not in names and v != getattr(StageExtra, k)}
        if left:
            raise StagetrainError(
                f"Stage {s.get('name')!r} of this older {strategy!r} plan sets {left}, which no declared stage "
                f"settings of strategy {strategy!r} take (declared kinds: {', '.join(sorted(StageExtra.declared)) or 'none'}).")
        s["extra"] = {"kind": strategy, **{k: v for k, v in flat.items() if k in names}} if names else None
    return s


TARGET_KEYS = ("val/acc", "val/loss", "val/ppl", "val/bpb", "train/acc", "train/loss", "train/ppl", "train/bpb")
TARGET_OPS = {">=": float.__ge__, "<=": float.__le__, ">": float.__gt__, "<": float.__lt__}


def parse_target(text: str) -> tuple[str, str, float]:
    """'val/acc>=0.97' -> ('val/acc', '>=', 0.97); raises ValueError when malformed."""
    for op in (">=", "<=", ">", "<"):
        if op in text:
            key, value = text.split(op, 1)
            if key.strip() not in TARGET_KEYS:
                raise ValueError(text)
            return key.strip(), op, float(value)
    raise ValueError(text)


def target_met(text: str, metrics: dict[str, float]) -> bool:
    key, op, value = parse_target(text)
    return key in metrics and TARGET_OPS[op](float(metrics[key]), value)


AUTO = "auto"
AUTO_DEFAULTS = {"patience": 3, "min_delta": 0.005, "max_epochs": 100}  # a strategy's `auto` block defaults


def auto_length(epochs: Any, auto: Any = None) -> dict[str, Any]:
    """A stage's length fields from an epochs option that may be ``auto``: ``{"epochs": n}``,
    or ``{"epochs": auto.max_epochs, "auto": {"patience", "min_delta"}}`` -- train until the
    stage's validation loss has not improved by more than ``min_delta`` (relative) for
    ``patience`` epochs, at most ``max_epochs`` (the LR schedule spans the maximum)."""
    if epochs != AUTO:
        return {"epochs": int(epochs)}
    get = (lambda k: AUTO_DEFAULTS[k]) if auto is None else (lambda k: getattr(auto, k))  # noqa: E731
    return {"epochs": int(get("max_epochs")), "auto": {"patience": int(get("patience")), "min_delta": float(get("min_delta"))}}
