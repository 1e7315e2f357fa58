"""Helpers shared by the benchmark scripts (not a benchmark itself).

Configs are composed through Hydra's compose API exactly as the CLI and
``tests/conftest.py`` do; runs go through ``stagetrain.runs.runner.train``.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import stagetrain.app.cli  # noqa: F401  (registers the resolvers and schemas)
import stagetrain.runs.runner as run_module
from stagetrain.runs.rundir import read_metrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", REPO.parent / "shared" / "data"))
BASE = ["device=cpu", "progress=off"]  # every benchmark run: CPU, no progress output
# run directories: in memory when possible (per-epoch checkpoints are fsynced; no measured
# number includes them, but on a busy disk they stretch a benchmark's wall time)
RUN_ROOT = "/dev/shm" if Path("/dev/shm").is_dir() else None


def make_cfg(*overrides: str) -> DictConfig:
    """The composed run config for ``overrides`` (plus BASE), as the CLI would build it."""
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        return compose("config", overrides=[*BASE, *overrides])


@contextmanager
def no_run_plots() -> Iterator[None]:
    """Skip the learning-curve PNGs ``train()`` draws after each run (``write_plots``).

    They cost 1-3 s of matplotlib per run on a 2-core machine, after training: in none of
    the numbers measured, but they would take a large share of a benchmark's time budget.
    """
    if hasattr(run_module, "write_plots"):
        with mock.patch.object(run_module, "write_plots", lambda rundir: None):
            yield
    else:
        yield


def dataset_overrides(name: str) -> list[str]:
    """``dataset=<name>`` plus the data root for the torchvision datasets."""
    return [f"dataset={name}"] + ([] if name in ("digits", "synthetic") else [f"dataset.root={DATA_ROOT}"])


def machine() -> dict[str, Any]:
    """CPU, core count, torch threads and versions, and the load average now."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    names = [line.split(":", 1)[1].strip() for line in info.splitlines() if "model name" in line]
    return {"cpu": names[0] if names else platform.processor(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cuda": torch.cuda.is_available(), "loadavg_start": os.getloadavg()}


def events(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every event of a run's metrics.jsonl."""
    return read_metrics(Path(run_dir) / "metrics.jsonl")


def val_curve(evts: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per-epoch validation points: stage, epoch, cumulative training FLOPs and seconds, acc, loss."""
    return [{"stage": e["stage"], "epoch": e["epoch"], "flops": e["flops"], "time": e["time"],
             "acc": e.get("acc"), "loss": e["loss"]}
            for e in evts if e.get("split") == "val"]


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {path}")


def finish(result: dict[str, Any], args: Any, start: float, plot: Any) -> None:
    """Close a benchmark: load average and total time, JSON (``_quick`` in quick mode), plot."""
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - start
    out = args.out if not args.quick else args.out.with_name(args.out.stem + "_quick.json")
    write_json(out, result)
    if not args.no_plot:
        plot(result, out.with_suffix(".png"))
    print(f"total {result['total_seconds']:.0f} s")


def bar_plot(path: Path, bars: dict[str, float], colors: list[str], ylabel: str, title: str, **title_kw: Any) -> None:
    """One bar per variant (a benchmark's medians), saved as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(bars), list(bars.values()), color=colors)
    ax.set_ylabel(ylabel)
    ax.set_title(title, **title_kw)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
