"""Divergence: a non-finite loss or gradient stops the run within one step on CPU (before
the bad step touches the weights), run.json says failed with the stage, step and a hint,
and the last good checkpoint is never overwritten with post-NaN state. With
train.on_nonfinite=skip_batch such a batch's optimizer step is skipped and logged, and
the run stops anyway after 10 in a row."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest
import torch
from conftest import make_cfg
from torch.optim.optimizer import register_optimizer_step_post_hook

from stagetrain import checkpoint as ckpt
from stagetrain.core.errors import StagetrainError
from stagetrain.engine import NONFINITE_MAX_IN_A_ROW
from stagetrain.engine.nonfinite import NonFiniteGuard
from stagetrain.progress import Reporter
from stagetrain.runs.parts import build_engine
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

BASE = ["strategy=scratch", "model.widths=[32,16]", "train.epochs=3", "device=cpu", "plots=false",
        "checkpoint.every_steps=1"]
DIVERGE = ["optim.name=sgd", "optim.lr=1e6"]  # finite for a step or two, then inf/NaN


@contextmanager
def count_steps(poison_at: set[int] | None = None):
    """Count optimizer steps; make the gradients of the batches (global steps) in
    ``poison_at`` NaN while their loss stays finite: a hook on the first parameter, set
    after the first step, that counts the backward passes through it."""
    steps = {"n": 0, "backward": 1}

    def poison(g):
        steps["backward"] += 1
        return torch.full_like(g, float("nan")) if steps["backward"] in poison_at else g

    def post(opt, args, kwargs):
        steps["n"] += 1
        if poison_at and steps["n"] == 1:
            opt.param_groups[0]["params"][0].register_hook(poison)

    handle = register_optimizer_step_post_hook(post)
    try:
        yield steps
    finally:
        handle.remove()


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state["model"].values())


def test_nonfinite_loss_stops_within_one_step_and_keeps_last_good_checkpoint(tmp_path):
    with count_steps() as steps, pytest.raises(StagetrainError) as err:
        train(make_cfg(*BASE, *DIVERGE), tmp_path)
    msg = str(err.value)
    assert "non-finite" in msg and "stage 1 (train)" in msg and "lower learning rate" in msg
    failing = int(msg.split("global step ")[1].split(",")[0])
    assert steps["n"] == failing - 1, "the failing step never reached the optimizer"
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["status"] == "failed" and info["error"] == msg and info["global_step"] == failing - 1
    last = ckpt.load(tmp_path / "checkpoints" / "last.pt")
    assert last["position"]["global_step"] == failing - 1 and _finite(last)
    assert _finite(ckpt.load(tmp_path / "checkpoints" / "last-prev.pt"))


def test_nonfinite_gradient_with_finite_loss_also_stops_before_the_step(tmp_path):
    with count_steps(poison_at={12}) as steps, pytest.raises(StagetrainError) as err:
        train(make_cfg(*BASE), tmp_path)
    assert "training gradient became non-finite" in str(err.value) and "global step 12" in str(err.value)
    assert steps["n"] == 11
    last = ckpt.load(tmp_path / "checkpoints" / "last.pt")
    assert last["position"]["global_step"] == 11 and _finite(last)


def test_skip_batch_skips_the_step_logs_it_and_the_run_completes(tmp_path):
    with count_steps(poison_at={5, 6, 30}) as steps:
        info = train(make_cfg(*BASE, "train.on_nonfinite=skip_batch"), tmp_path)
    assert info["status"] == "completed"
    skipped = [e for e in read_metrics(tmp_path / "metrics.jsonl") if e.get("event") == "skipped_batch"]
    assert [(e["step"], e["skipped_batches"], e["in_a_row"]) for e in skipped] == [(5, 1, 1), (6, 2, 2), (30, 3, 1)]
    assert steps["n"] == info["global_step"] - 3, "three optimizer steps skipped"
    assert _finite(ckpt.load(tmp_path / "checkpoints" / "last.pt"))
    train_losses = [e["loss"] for e in read_metrics(tmp_path / "metrics.jsonl") if e.get("split") == "train"]
    assert all(math.isfinite(x) for x in train_losses)


def test_skip_batch_stops_after_too_many_in_a_row(tmp_path):
    with pytest.raises(StagetrainError) as err:
        train(make_cfg(*BASE, *DIVERGE, "train.on_nonfinite=skip_batch"), tmp_path)
    assert f"{NONFINITE_MAX_IN_A_ROW} batches in a row" in str(err.value) and "lower learning rate" in str(err.value)
    skipped = [e for e in read_metrics(tmp_path / "metrics.jsonl") if e.get("event") == "skipped_batch"]
    assert [e["in_a_row"] for e in skipped] == list(range(1, NONFINITE_MAX_IN_A_ROW + 1))
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "failed"
    assert _finite(ckpt.load(tmp_path / "checkpoints" / "last.pt"))


def test_on_nonfinite_is_validated():
    with pytest.raises(StagetrainError, match="train.on_nonfinite='skip-batch' is not valid: choose one of stop, skip_batch. Did you mean 'skip_batch'"):
        train(make_cfg(*BASE, "train.on_nonfinite=skip-batch"), None)


def test_batched_check_off_cpu_reads_its_flag_before_a_checkpoint():
    """The GPU path (no sync per step): a NaN gradient only sets a device-side flag; the
    flag is read when a checkpoint may follow, and then the run stops."""
    cfg = make_cfg(*BASE)
    engine = build_engine(cfg, torch.device("cpu"), None, Reporter("off"))[0]
    stage = engine.plan.stages[0]
    optimizer = torch.optim.SGD(engine.model.parameters(), lr=0.1)
    guard = NonFiniteGuard("stop", "cuda", engine.state, lambda event: None)  # the GPU path's batched mode
    assert not guard.exact
    for i, p in enumerate(engine.model.parameters()):
        p.grad = torch.full_like(p, float("nan") if i == 1 else 1.0)
    loss = torch.tensor(0.5)
    assert guard.grads(0, stage, optimizer, loss, look=False) is False
    with pytest.raises(StagetrainError, match="non-finite"):
        guard.grads(0, stage, optimizer, loss, look=True)
    for p in engine.model.parameters():
        p.grad = torch.ones_like(p)
    assert guard.grads(0, stage, optimizer, loss, look=True) is False  # flag cleared
