"""Shared fixtures: configs composed through Hydra's compose API, CLI runs in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from torch.optim.optimizer import register_optimizer_step_pre_hook

import stagetrain.cli  # noqa: F401  (registers the resolvers and schemas)
from stagetrain.rundir import read_metrics

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", REPO.parent / "shared" / "data"))
FAST = ["progress=off"]


def make_cfg(*overrides: str):
    """The composed run config for ``overrides``, exactly as the CLI would build it."""
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``stagetrain`` console script (this interpreter's) in ``cwd``."""
    exe = Path(sys.executable).parent / "stagetrain"
    full_env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT), **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding run.json) under ``root``."""
    return sorted(p.parent for p in Path(root).rglob("run.json"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST / Fashion-MNIST files; missing files fail (never skip) the tests."""
    for name in ("MNIST", "FashionMNIST"):
        assert (DATA_ROOT / name / "raw" / "train-images-idx3-ubyte").exists(), (
            f"{DATA_ROOT / name / 'raw'} is missing: set STAGETRAIN_DATA to the folder holding MNIST/ and FashionMNIST/")
    return DATA_ROOT


# ---------------------------------------------------------------- kill / resume harness
def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def kill_when(run: Path, args: list[str], cwd: Path, ready) -> None:
    """Start the CLI, SIGKILL it once ``ready(events)`` is true for metrics.jsonl."""
    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    proc = subprocess.Popen([exe, *args, f"hydra.run.dir={run}"], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)})
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and ready(read_metrics(metrics)):
                time.sleep(0.05)  # land inside the next epoch, well before the run can end
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_epochs_exactly_once(run: Path) -> None:
    events = read_metrics(run / "metrics.jsonl")
    keys = Counter((e["stage"], e["epoch"], e["split"]) for e in events if "split" in e)
    assert all(n == 1 for n in keys.values()), f"duplicated epoch lines: {keys}"
    info = json.loads((run / "run.json").read_text())
    for s in info["stages"]:
        for split in ("train", "val"):
            got = sorted(e for (st, e, sp) in keys if st == s["stage"] and sp == split)
            assert got == list(range(1, s["epochs"] + 1)), f"missing epochs in stage {s['stage']}"


def resume_until_done(run: Path, args: list[str], cwd: Path) -> None:
    proc = run_cli(*args, f"hydra.run.dir={run}", "resume=auto", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


# ---------------------------------------------------------------- looking inside a running engine
def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters AND buffers (BN running_mean, running_var, num_batches_tracked), cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}

def assert_bit_identical(before: dict[str, torch.Tensor], module: torch.nn.Module, what: str) -> None:
    now = module.state_dict()
    assert now.keys() == before.keys(), what
    changed = [k for k in before if not torch.equal(before[k], now[k])]
    assert not changed, f"{what}: {changed} changed"

@contextmanager
def after_each_backward(fn: Callable[[torch.optim.Optimizer], None]) -> Iterator[None]:
    """Call ``fn(optimizer)`` after every backward, just before the optimizer steps."""
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: fn(opt))
    try:
        yield
    finally:
        handle.remove()

def optimizer_params(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


@pytest.fixture
def built_steps(monkeypatch) -> list:
    """The training steps ``engine.runtime.build_step`` returns, in order (one per stage);
    the engine runs unchanged, this only records what it built."""
    from stagetrain.engine import runtime

    built: list = []
    original = runtime.build_step

    def record(*args):
        step = original(*args)
        built.append(step)
        return step

    monkeypatch.setattr(runtime, "build_step", record)
    return built
