"""Resume after a real SIGKILL ends with bit-identical weights and exactly-once metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import (
    assert_epochs_exactly_once,
    final_weights,
    kill_when,
    make_cfg,
    resume_until_done,
    run_cli,
)
from omegaconf import OmegaConf

# big enough that an epoch takes a noticeable fraction of a second on 2 cores
SLOW = ["dataset=synthetic", "dataset.n_train=4000", "dataset.shape=[1,28,28]", "model.widths=[256,256]",
        "train.batch_size=32", "checkpoint.every_steps=40", "progress=off"]


def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    args = ["strategy=scratch", "train.epochs=4", *SLOW]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    kill_when(run, args, tmp_path, lambda ev: any(e.get("split") == "val" and e["epoch"] == 1 for e in ev))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["batch"] > 0 or state["position"]["epoch"] >= 1
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)


@pytest.mark.full  # a kill/resume campaign: `pytest --full`
def test_layerwise_killed_in_stage_2_of_3_resumes_to_identical_weights(tmp_path):
    args = ["strategy=layerwise", "model.widths=[256,128]", "strategy.finetune.epochs=2",
            "strategy.epochs_per_layer=3", "strategy.objective=denoising", *SLOW]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    kill_when(run, args, tmp_path, lambda ev: any(e.get("split") == "val" and e["stage"] == 2 for e in ev))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["stage"] == 1, "expected the kill inside stage 2"
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)


@pytest.mark.full  # a kill/resume campaign: `pytest --full`
def test_sigterm_checkpoints_marks_stopped_and_resume_dir_continues(tmp_path):
    args = ["strategy=scratch", "train.epochs=3", *SLOW]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "stopped"
    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    proc = subprocess.Popen([exe, *args, f"hydra.run.dir={run}"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    while not ((run / "metrics.jsonl").exists() and "val" in (run / "metrics.jsonl").read_text()):
        assert proc.poll() is None, "the run ended before it could be signalled"
        time.sleep(0.02)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.time() - sent < 10
    assert proc.returncode == 3, out
    assert "Traceback" not in out and "resume=auto" in out
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "stopped"
    # resume=<run dir> alone: the run's saved config is used, nothing else needs repeating
    done = run_cli(f"resume={run}", "progress=off", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    ref, got = final_weights(reference), final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)


# ---- resume compares only what the user typed (issue 28)

def test_changed_keys_counts_only_the_typed_overrides():
    from stagetrain.runs.resume import changed_keys

    saved = OmegaConf.to_container(make_cfg("strategy=grow", "train.epochs=3"), resolve=True)
    now = make_cfg("train.epochs=5", "resume=somewhere")
    assert "strategy.name" in changed_keys(now, saved)  # no command line known: everything
    assert changed_keys(now, saved, ["resume=somewhere"]) == []
    assert changed_keys(now, saved, ["resume=somewhere", "train.epochs=5"]) == ["train.epochs"]
    assert changed_keys(make_cfg("strategy=scratch"), saved, ["strategy=scratch", "++seed=0"]) == ["strategy"]
    assert changed_keys(make_cfg("strategy=grow", "train.epochs=3"), saved, ["strategy=grow"]) == []


def test_resume_warns_only_about_keys_the_user_typed(tmp_path):
    run = tmp_path / "run"
    first = run_cli("strategy=grow", "strategy.widths=[[8],[16]]", "strategy.epochs_per_stage=1", "train.epochs=1",
                    "progress=off", "plots=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "stopped"}))  # as if stopped at its end
    bare = run_cli(f"resume={run}", "progress=off", cwd=tmp_path)
    assert bare.returncode == 0 and "differing" not in bare.stdout + bare.stderr, bare.stdout + bare.stderr
    (run / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    typed = run_cli(f"resume={run}", "progress=off", "train.epochs=7", "seed=0", cwd=tmp_path)
    out = typed.stdout + typed.stderr
    assert typed.returncode == 0 and "ignoring the differing values of: train.epochs\n" in out, out
