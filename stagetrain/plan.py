"""Stage and Plan: what a strategy compiles to, as plain data the engine runs.

A stage says which blocks the forward path uses, which groups train (block names,
``head``, ``helper``), the objective, the data, the optimizer settings, and its budget.
It owns no code: the engine applies it. ``dataclasses.asdict`` of a plan is what
``run.json`` and ``dry_run`` show.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class StopReason(str, enum.Enum):
    """Why a stage (or the run) stopped; every stage records one."""

    EPOCHS = "epochs"
    PATIENCE = "patience"
    TARGET = "target"
    BUDGET = "budget"
    SIGNAL = "signal"

    @property
    def message(self) -> str:
        return {
            "epochs": "ran its last epoch",
            "patience": "validation metric stopped improving (train.patience)",
            "target": "reached the target metric",
            "budget": "compute budget spent",
            "signal": "stopped by a signal; resume with resume=auto",
        }[self.value]


@dataclass
class Stage:
    """One phase of training. Group names: ``block1..blockL``, ``head``, ``helper``."""

    name: str
    epochs: int
    trainable: list[str]
    objective: str = "supervised"  # supervised | autoencoder | denoising | rbm
    stop_block: int | None = None  # forward path is blocks[:stop_block] (None: all blocks)
    helper: dict[str, Any] | None = None  # auxiliary head / decoder spec, dropped at stage end
    helper_to_head: bool = False  # at stage end, the helper becomes the model's head
    data: str = "labeled"  # labeled: the labelled subset; all: every training input
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    sched: str = "cosine"
    lr_scale: dict[str, float] = field(default_factory=dict)  # per group LR multiplier
    cache: str = "off"  # auto | on | off: reuse the frozen prefix's outputs in this stage
    noise: float = 0.0  # denoising masking level
    cd_k: int = 1  # rbm Gibbs steps
    description: str = ""

    @property
    def uses_head(self) -> bool:
        """True when the stage trains/evaluates the model itself (blocks + head)."""
        return self.objective == "supervised" and self.helper is None and self.stop_block is None


@dataclass
class Plan:
    strategy: str
    stages: list[Stage]
    input_norm: str = "standardize"  # standardize | unit ([0, 1], for RBMs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
