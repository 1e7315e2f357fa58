"""``logger.tensorboard=true``: mirror metrics.jsonl into TensorBoard event files.

The sink sees exactly the events metrics.jsonl receives (replayed events of a resumed run
are not sent twice), so TensorBoard and the JSON log agree. Scalars are written twice:
``<split>/<metric>`` against the global step (one curve across all stages) and
``stage<k>/<split>/<metric>`` (one curve per stage). Growth events, stage starts and
stage ends become scalars and text; the final metrics are written with the run's
hyperparameters for TensorBoard's HParams tab. Needs the optional extra
``stagetrain[tensorboard]``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stagetrain.errors import StagetrainError

SKIP = {"stage", "stage_name", "epoch", "step", "flops", "time", "split", "wall", "event"}


def _writer(logdir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise StagetrainError(
            f"logger.tensorboard=true needs the 'tensorboard' package ({e}). Install it with "
            "pip install 'stagetrain[tensorboard]', or set logger.tensorboard=false.") from e
    return SummaryWriter(log_dir=str(logdir), flush_secs=30)


def _hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flat scalar hyperparameters (TensorBoard takes int, float, str, bool)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key == "hydra":
            continue
        if isinstance(value, dict):
            out.update(_hparams(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            out[f"{prefix}{key}"] = value
        elif value is not None:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


class TensorBoardSink:
    """Called by the engine with each new metrics event; writes ``<run>/tensorboard/``."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        self.writer = _writer(Path(run_dir) / "tensorboard")
        self.config = config

    def __call__(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        kind = event.get("event")
        if "split" in event:
            split, stage = event["split"], event["stage"]
            for name, value in event.items():
                if name not in SKIP and isinstance(value, int | float):
                    self.writer.add_scalar(f"{split}/{name}", value, step)
                    self.writer.add_scalar(f"stage{stage}/{split}/{name}", value, step)
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
            self.writer.add_hparams(_hparams(self.config), {f"hparam/{k}": v for k, v in final.items()},
                                    run_name=".")
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
