"""Stage and Plan: what a strategy compiles to, as plain data the engine runs.

A stage says which blocks the forward path uses, which groups train (block names,
``head``, ``helper``), the objective, the data, the optimizer settings, and its budget.
It owns no code: the engine applies it. ``Plan.to_dict`` (``dataclasses.asdict``, the
model ops as their plain dicts) is what ``run.json`` and ``dry_run`` show; ``Plan.from_dict``
reads it back.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from stagetrain.nn.modelops import ModelOp, as_op
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
class Stage:
    """One phase of training. Group names: ``stem`` (models with one), ``block1..blockL``,
    ``head``, ``helper``."""

    name: str
    epochs: int | None  # None: bounded by max_flops instead (grow's flops_share trigger)
    trainable: list[str]
    objective: str = "supervised"  # a registered objective (objective_registry): supervised | lm | mlm | autoencoder | denoising | rbm
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
    noise: float = 0.0  # denoising masking level
    cd_k: int = 1  # rbm Gibbs steps
    ops: list[ModelOp] = field(default_factory=list)  # growth ops applied at stage start (modelops; plain dicts read)
    data_fraction: float = 1.0  # use this leading fraction of a fixed seeded order of the data
    patience: int | None = None  # stage-level early stop (default: train.patience)
    max_flops: float | None = None  # stage compute budget (the flops_share trigger)
    auto: dict[str, Any] | None = None  # epochs=auto: {"patience": p, "min_delta": d}; ``epochs`` is then the max
    partial: dict[str, list[str]] = field(default_factory=dict)  # group -> parameter-name patterns (fnmatch) that train
    bn: str = "eval"  # BatchNorm of frozen groups: eval | train_stats | train_affine
    description: str = ""

    def __post_init__(self) -> None:
        self.ops = [as_op(op) for op in self.ops]
        self.helper = as_helper(self.helper)

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
        out["stages"] = [{**d, "helper": s.helper.to_dict() if s.helper is not None else None,
                          "ops": [op.to_dict() for op in s.ops]} for d, s in zip(out["stages"], self.stages, strict=True)]
        return {**out, "final_ops": [op.to_dict() for op in self.final_ops]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """A plan from its plain data (``to_dict``, run.json's ``plan``, also an older run's)."""
        stages = [Stage(**s) for s in data["stages"]]
        return cls(**{**data, "stages": stages})


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
