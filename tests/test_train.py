"""A scratch run on digits: accuracy, every file of the run directory, metrics lines."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_cfg
from safetensors import safe_open

from stagetrain import checkpoint as ckpt
from stagetrain.models import StagedModel
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("scratch") / "run"
    info = train(make_cfg("strategy=scratch"), run)
    return run, info


def test_scratch_on_digits_reaches_095_test_accuracy(scratch_run):
    _, info = scratch_run
    assert info["status"] == "completed"
    assert info["final"]["test/acc"] >= 0.95


def test_run_directory_has_every_file(scratch_run):
    run, _ = scratch_run
    for name in ("run.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt",
                 "checkpoints/stage-1-train.pt", "model.safetensors"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    for key in ("status", "strategy", "plan", "stages", "final", "versions", "seed", "config"):
        assert key in info
    (stage,) = info["stages"]
    assert stage["stop_reason"] == "epochs" and stage["flops"] > 0 and stage["epochs"] == 20


def test_metrics_lines_parse_and_carry_stage_epoch_split(scratch_run):
    run, _ = scratch_run
    events = read_metrics(run / "metrics.jsonl")
    epochs = [e for e in events if "split" in e]
    assert {e["split"] for e in epochs} == {"train", "val"}
    for e in epochs:
        assert {"stage", "stage_name", "epoch", "step", "loss", "flops", "time"} <= set(e)
    assert [e["epoch"] for e in epochs if e["split"] == "val"] == list(range(1, 21))
    flops = [e["flops"] for e in epochs]
    assert flops == sorted(flops), "cumulative FLOPs must not decrease"


def test_checkpoint_is_plain_data_loadable_with_weights_only(scratch_run):
    run, _ = scratch_run
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == ckpt.FORMAT
    assert isinstance(state["config_yaml"], str) and "scratch" in state["config_yaml"]
    model = StagedModel(state["arch"])
    model.load_state_dict(state["model"])


def test_safetensors_carries_weights_and_arch(scratch_run):
    run, _ = scratch_run
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        arch = json.loads(f.metadata()["arch"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model = StagedModel(arch)
    model.load_state_dict(tensors)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    for k, v in last["model"].items():
        assert torch.equal(v, tensors[k])


def test_patience_stops_a_stage_and_records_why(tmp_path):
    info = train(make_cfg("strategy=scratch", "train.epochs=60", "train.patience=2", "optim.lr=0.01",
                          "sched.name=constant"), tmp_path / "run")
    (stage,) = info["stages"]
    assert stage["stop_reason"] == "patience" and stage["epochs"] < 60


def test_nonfinite_loss_fails_the_run_with_stage_step_and_hint(tmp_path):
    from stagetrain.core.errors import StagetrainError

    with pytest.raises(StagetrainError, match="non-finite"):
        train(make_cfg("strategy=scratch", "optim.name=sgd", "optim.lr=1e6", "sched.name=constant",
                       "train.epochs=3"), tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed"
    assert "stage 1" in info["error"] and "global step" in info["error"] and "lower learning rate" in info["error"]


def test_run_writes_learning_curve_plots(scratch_run):
    run, _ = scratch_run
    for name in ("learning_curves.png", "learning_curves_flops.png"):
        data = (run / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_start_banner_says_where_on_what_and_how_much_each_stage_trains(tmp_path, capsys):
    info = train(make_cfg("strategy=layerwise", "model.widths=[32,16]", "strategy.epochs_per_layer=1",
                          "train.epochs=1", "plots=false", "device=cpu", "progress=plain"), tmp_path)
    out = capsys.readouterr().out
    assert out.index("stagetrain layerwise: 3 stages") < out.index("run directory  ") < out.index("stage 3 finetune")
    assert f"run directory  {tmp_path.resolve()}" in out and "device         cpu (" in out
    assert "data           digits: train 1,293 (labelled 1,293), val 144, test 360, 10 classes" in out
    # greedy stage 1: block1 (64*32+32) and its auxiliary head (32*10+10) of 64*32+32 + 32*16+16 + 16*10+10
    assert "model          2,778 parameters" in out
    assert "stage 1 greedy-block1: trains 2,410 of 2,778 (block1, helper)" in out
    assert [s["trainable_params"] for s in info["stages"]] == [2410, 16 * 32 + 16 + 16 * 10 + 10, 2778]
