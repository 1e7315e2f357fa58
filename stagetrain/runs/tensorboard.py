"""``logger.tensorboard=true``: mirror metrics.jsonl into TensorBoard event files.

The sink sees exactly the events metrics.jsonl receives (replayed events of a resumed run
are not sent twice), so TensorBoard and the JSON log agree. Scalars are written twice:
``<split>/<metric>`` against the global step (one curve across all stages) and
``stage<k>/<split>/<metric>`` (one curve per stage). Growth events, stage starts and
stage ends become scalars and text; the final metrics are written with the run's
hyperparameters for TensorBoard's HParams tab. Needs the optional extra
``stagetrain[tensorboard]``.

Every ``logger.every_steps`` optimizer steps (``StepLog``): ``train_steps/loss`` (the mean
training loss over those steps) and ``train/lr`` (the LR the optimizer used for the step; at
epoch ends too). A greedy stage's metrics come from its auxiliary head (or decoder), not the
final model: they go to ``aux/<stage name>/<split>/<metric>``, so ``val/acc`` is the model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError

SKIP = {"stage", "stage_name", "epoch", "step", "flops", "time", "split", "wall", "event", "lr"}


def lr_used(scheduler: Any) -> float:
    """The LR of the last parameter group for the step just taken: the scheduler has already
    stepped, so its current LR is the next step's (0.0 after the last step of a cosine stage)."""
    group = scheduler.optimizer.param_groups[-1]
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas and scheduler.last_epoch > 0:
        return float(scheduler.base_lrs[-1] * lambdas[-1](scheduler.last_epoch - 1))
    return float(group["lr"])


def aux_stages(plan: dict[str, Any] | None) -> dict[int, str]:
    """Stage number -> name of the stages whose metrics are an auxiliary head's or decoder's."""
    stages = (plan or {}).get("stages") or []
    return {k + 1: str(s.get("name")) for k, s in enumerate(stages)
            if s.get("helper") is not None and not s.get("helper_to_head")}


def split_tag(event: dict[str, Any], aux: dict[int, str]) -> str:
    """``val``, or ``aux/<stage name>/val`` for a greedy stage's auxiliary metrics."""
    return f"aux/{aux[event['stage']]}/{event['split']}" if event["stage"] in aux else str(event["split"])


class StepLog:
    """``on_step`` of a sink: every ``every`` steps, the mean training loss since the last
    point and the LR used; ``lr`` remembers the scheduler for the epoch's last step."""

    def __init__(self, every: int, write: Any):
        self.every, self.write = every, write
        self.scheduler: Any = None
        self._mark = (0.0, 0.0)  # loss sum and samples of the epoch at the last point

    def on_step(self, step: int, stage: int, sums: list[Any], scheduler: Any) -> None:
        self.scheduler = scheduler
        if not self.every or step % self.every:
            return
        loss, n = float(sums[0]), float(sums[2])
        last_loss, last_n = self._mark if n >= self._mark[1] else (0.0, 0.0)  # a new epoch: sums restarted
        self._mark = (loss, n)
        metrics = {"train/lr": lr_used(scheduler)}
        if n > last_n:
            metrics["train_steps/loss"] = (loss - last_loss) / (n - last_n)
        self.write(metrics, step)

    def lr(self, otherwise: float) -> float:
        """The LR the last step used (at an epoch end: the event's ``lr`` is the next step's)."""
        return otherwise if self.scheduler is None else lr_used(self.scheduler)


def _writer(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise StagetrainError(
            f"logger.tensorboard=true needs the 'tensorboard' package ({e}). Install it with "
            "pip install 'stagetrain[tensorboard]', or set logger.tensorboard=false.") from e
    return SummaryWriter(log_dir=str(logdir), flush_secs=30)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat scalar hyperparameters (TensorBoard takes int, float, str, bool)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "hydra":
            continue
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            out[f"{prefix}{key}"] = value
        elif value is not None:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


class TensorBoardSink:
    """Called by the engine with each new metrics event; writes ``<run>/tensorboard/``."""

    def __init__(self, run_dir: Path, config: dict[str, Any], plan: dict[str, Any] | None = None,
                 every_steps: int = 0):
        self.writer = _writer(Path(run_dir) / "tensorboard")
        self.config = config
        self.aux = aux_stages(plan)
        self.steps = StepLog(every_steps, self._scalars)
        self.on_step = self.steps.on_step

    def _scalars(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def __call__(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        kind = event.get("event")
        if "split" in event:
            split, stage = event["split"], event["stage"]
            where = split_tag(event, self.aux)
            for name, value in event.items():
                if name not in SKIP and isinstance(value, int | float):
                    self.writer.add_scalar(f"{where}/{name}", value, step)
                    self.writer.add_scalar(f"stage{stage}/{split}/{name}", value, step)
            if split == "train" and not (self.steps.every and step % self.steps.every == 0):
                self.writer.add_scalar("train/lr", self.steps.lr(event.get("lr", 0.0)), step)
            if split == "val":  # once per epoch
                self.writer.add_scalar("compute/flops", event.get("flops", 0), step)
                self.writer.flush()  # once per epoch: a killed run keeps what metrics.jsonl has
        elif kind == "growth":
            self.writer.add_scalar("growth/params", event["params_after"], step)
            self.writer.add_scalar("growth/probe_loss_before", event["probe_loss_before"], step)
            self.writer.add_scalar("growth/probe_loss_after", event["probe_loss_after"], step)
            self.writer.add_text("events", f"stage {event['stage']} ({event['stage_name']}): "
                                 f"growth {json.dumps(event['ops'])}", step)
        elif kind in ("stage_start", "stage_end"):
            detail = event.get("stop_reason") or ", ".join(event.get("trainable", []))
            self.writer.add_text("events", f"{kind} {event['stage']} ({event['stage_name']}): {detail}", step)
        elif kind == "final":
            final = {k: v for k, v in event.items() if "/" in k and isinstance(v, int | float)}
            for name, value in final.items():
                self.writer.add_scalar(f"final/{name}", value, step)
            self.writer.add_hparams(flat_params(self.config), {f"hparam/{k}": v for k, v in final.items()},
                                    run_name=".")
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
