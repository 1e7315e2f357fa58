"""Files written before the engine redesign still work: a run directory cut after stage 2
of a layer-wise run by stagetrain at commit c0a0956 (run.json, metrics.jsonl, format-2
checkpoints with the flat run state) resumes with today's code, and ends bit-identical to
a run of today's code from scratch -- so old checkpoints load and behaviour is unchanged.
Bit-identical on a CPU whose kernels round as the writing machine's did (checked on the
stage-2 weights); elsewhere equal up to that rounding (1e-6), as any x86-64 CPU must pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from conftest import final_weights, make_cfg

from stagetrain import checkpoint as ckpt
from stagetrain.runs.runner import train

LEGACY = Path(__file__).parent / "data" / "legacy_layerwise_run"
ARGS = ["strategy=layerwise", "model.widths=[16,8]", "strategy.epochs_per_layer=1", "train.epochs=2",
        "plots=false", "device=cpu"]
GREEDY_LR = "strategy.lr=0.001"  # the old default of the greedy stages (optim.lr; today's null means 3 x optim.lr)
UNFUSED = "optim.fused=false"  # the old code's Adam; a resumed old run keeps it (resume.py)


def test_a_checkpoint_written_before_the_redesign_loads_with_its_state():
    state = ckpt.load(LEGACY / "checkpoints" / "last.pt")
    assert state["version"] == 2 and state["position"]["stage"] == 2 and "stage_flops" in state["run_state"]


def test_a_run_stopped_before_the_redesign_resumes_bit_identical_to_a_fresh_run(tmp_path):
    run = tmp_path / "legacy"
    shutil.copytree(LEGACY, run)
    info = train(make_cfg(*ARGS, "resume=auto"), run)
    assert info["status"] == "completed"
    assert [s["name"] for s in info["stages"]] == ["greedy-block1", "greedy-block2", "finetune"]
    assert info["config"]["optim"]["fused"] is False
    fresh = tmp_path / "fresh"
    train(make_cfg(*ARGS, UNFUSED, GREEDY_LR), fresh)
    a, b = final_weights(run), final_weights(fresh)
    assert a.keys() == b.keys()
    old = ckpt.load(LEGACY / "checkpoints" / "last.pt")["model"]  # the legacy run's weights after stage 2
    new = ckpt.load(next((fresh / "checkpoints").glob("stage-2-*.pt")))["model"]
    finals = [json.loads((r / "run.json").read_text())["final"] for r in (run, fresh)]
    if all(torch.equal(old[k], new[k]) for k in old):  # this CPU computes stages 1-2 as the one that wrote them
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert finals[0] == finals[1]
    else:  # another CPU's kernels round differently (~1e-8): the same run, up to that rounding
        assert max(float((old[k] - new[k]).abs().max()) for k in old) < 1e-6
        assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
        assert all(abs(finals[0][m] - finals[1][m]) < 1e-5 for m in finals[1])
