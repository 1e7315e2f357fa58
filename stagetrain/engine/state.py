"""Where a run is and what it has counted: run-level and stage-level state.

``StageState`` is reset in one assignment when a stage ends. Checkpoints store both as
one flat dict with the historical key names (``stage_best``, ``stage_flops``...), so
checkpoints written before the split load, and the split's checkpoints read the same.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class StageState:
    epoch: int = 0  # stage-local epoch in progress
    batch: int = 0  # next batch of that epoch
    best: float | None = None  # best validation score of the stage (acc, or -loss)
    bad_epochs: int = 0  # epochs since that best
    stop: str | None = None  # why the stage stops (a StopReason value), once decided
    steps: int = 0
    samples: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)  # latest epoch's train/ and val/ metrics
    best_metrics: dict[str, float] = field(default_factory=dict)
    epoch_sums: list[Any] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # loss, correct, samples
    plateau_best: float | None = None  # epochs=auto: the lowest validation loss that counted as an improvement
    plateau_bad: int = 0  # ... and the epochs since it (checkpoints before epochs=auto lack both: the defaults)


@dataclass
class RunState:
    stage: int = 0  # index of the stage in progress (or next to enter)
    in_stage: bool = False  # False: the stage at ``stage`` has not been entered yet
    global_step: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    best: float | None = None  # best val/acc of the full model, for best.pt
    summaries: list[dict[str, Any]] = field(default_factory=list)  # one per finished stage
    run_stop: str | None = None  # set when the whole run stops early (target, budget, complexity)
    prev_score: float | None = None  # complexity-penalised score of the previous stage
    prev_optim: dict[str, Any] = field(default_factory=dict)  # Adam moments by parameter name
    skipped_batches: int = 0  # train.on_nonfinite=skip_batch: batches skipped so far
    nonfinite_streak: int = 0  # ... and how many of the latest in a row
    cur: StageState = field(default_factory=StageState)

    def charge(self, flops: float = 0.0, seconds: float = 0.0) -> None:
        """Count compute for the run and for the stage in progress."""
        self.flops += flops
        self.cur.flops += flops
        self.seconds += seconds
        self.cur.seconds += seconds

    def flat(self) -> dict[str, Any]:
        """The checkpoint form (historical flat key names)."""
        out = {k: v for k, v in asdict(self).items() if k != "cur"}
        for f in fields(StageState):
            out[_FLAT.get(f.name, f.name)] = getattr(self.cur, f.name)
        return out

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> RunState:
        run_keys = {f.name for f in fields(cls)} - {"cur"}
        cur = StageState(**{f.name: flat[_FLAT.get(f.name, f.name)] for f in fields(StageState)
                            if _FLAT.get(f.name, f.name) in flat})
        return cls(**{k: v for k, v in flat.items() if k in run_keys}, cur=cur)


# StageState field -> flat checkpoint key, where they differ
_FLAT = {"best": "stage_best", "stop": "stage_stop", "steps": "stage_steps", "samples": "stage_samples",
         "flops": "stage_flops", "seconds": "stage_seconds", "metrics": "stage_metrics",
         "best_metrics": "stage_best_metrics"}
