"""run.json: what a run is, where it stands and what it measured, rewritten atomically as
the run goes; plus the files written when it ends (model.safetensors, plots)."""

from __future__ import annotations

import json
import logging
import platform
import time
from typing import Any

import torch

from stagetrain import distributed
from stagetrain.checkpoint import atomic_write, write_error
from stagetrain.core.version import __version__
from stagetrain.models import count_parameters
from stagetrain.runs.rundir import RunDir

log = logging.getLogger("stagetrain")


def versions() -> dict[str, str]:
    """Package versions for run.json, read from the installed metadata (importing
    torchvision or scikit-learn just for this would cost seconds per run)."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"stagetrain": __version__, "torch": torch.__version__, "torchvision": installed("torchvision"),
            "hydra": installed("hydra-core"), "sklearn": installed("scikit-learn"),
            "python": platform.python_version()}


class RunRecord:
    """The run.json content of one run; nothing is written off rank 0 (``rundir=None``)."""

    def __init__(self, rundir: RunDir | None, info: dict[str, Any]):
        self.rundir, self.info = rundir, info

    @classmethod
    def start(cls, rundir: RunDir | None, path: str, plan: dict[str, Any], config: dict[str, Any],
              seed: int, device: torch.device, source: Any, previous: dict[str, Any]) -> RunRecord:
        started = time.time()
        return cls(rundir, {
            "status": "running", "strategy": plan["strategy"], "run_dir": path, "seed": seed,
            "device": str(device), "started": previous.get("started", started), "plan": plan,
            "stages": [], "final": {}, "versions": versions(), "config": config, "error": None,
            "source": source,
        })

    def sinks(self, logger: Any) -> list[Any]:
        """Where this run's metric events go besides metrics.jsonl: TensorBoard and MLflow
        when ``logger`` (the ``logger`` settings) asks; none off rank 0."""
        if self.rundir is None:
            return []
        out = []
        if logger.tensorboard:
            from stagetrain.runs.tensorboard import TensorBoardSink

            out.append(TensorBoardSink(self.rundir.path, self.info["config"], self.info["plan"], logger.every_steps))
        if logger.mlflow:
            from stagetrain.runs.mlflowlog import MlflowSink

            out.append(MlflowSink(self.rundir.path, self.info["config"], self.info["plan"], logger.every_steps,
                                  logger.mlflow_uri, lambda: self.info.get("status", "")))
        return out

    def note_world(self, batch_size: int) -> None:
        """Under torchrun: the world size, backend and each rank's share of the batch."""
        world = distributed.world_size()
        if world > 1:
            self.info["distributed"] = {"world_size": world, "backend": str(torch.distributed.get_backend()),
                                        "batch_per_rank": batch_size // world}

    def update(self, engine: Any, **extra: Any) -> None:
        st = engine.state
        self.info.update({"stages": st.summaries, "flops": st.flops, "seconds": round(st.seconds, 3),
                          "global_step": st.global_step, "updated": time.time(),
                          "params": count_parameters(engine.model), **extra})
        if self.rundir is not None:
            self.rundir.write_run_json(self.info)

    def finish(self, engine: Any, final: dict[str, float]) -> None:
        """Export the model, then mark the run completed."""
        if self.rundir is not None:
            try:
                export_model(self.rundir, engine.model, self.info["strategy"])
            except OSError as e:  # a full disk at the very end: the run stays resumable
                err = write_error(self.rundir.safetensors, "the final model", e)
                self.update(engine, status="failed", error=str(err))
                raise err from None
        summaries = engine.state.summaries
        last_reason = summaries[-1]["stop_reason"] if summaries else None
        self.update(engine, status="completed", final=final, stop_reason=engine.state.run_stop or last_reason)


def export_model(rundir: RunDir, model: Any, strategy: str) -> None:
    """model.safetensors: the final weights with the architecture spec in its metadata."""
    from safetensors.torch import save as safetensors_bytes

    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(rundir.safetensors, safetensors_bytes(
        state_dict, metadata={"format": "stagetrain", "arch": json.dumps(model.spec), "strategy": strategy}))


def write_plots(rundir: RunDir) -> None:
    """Learning-curve PNGs at the end of a run, also a failed one; a plot never fails a run."""
    try:
        from stagetrain.runs.plots import plot_run

        plot_run(rundir.path)
    except Exception as e:  # noqa: BLE001 - plotting is a convenience
        log.warning("Could not draw the plots for %s: %s", rundir.path, e)
