"""Resume after a real SIGKILL ends with bit-identical weights and exactly-once metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from conftest import DATA_ROOT, run_cli

from stagetrain.rundir import read_metrics

# big enough that an epoch takes a noticeable fraction of a second on 2 cores
SLOW = ["dataset=synthetic", "dataset.n_train=12000", "dataset.shape=[1,28,28]", "model.widths=[256,256]",
        "train.batch_size=32", "checkpoint.every_steps=25", "progress=off"]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]


def _kill_when(run: Path, args: list[str], cwd: Path, ready) -> None:
    """Start the CLI, SIGKILL it once ``ready(events)`` is true for metrics.jsonl."""
    exe = os.path.join(os.path.dirname(sys.executable), "stagetrain")
    proc = subprocess.Popen([exe, *args, f"hydra.run.dir={run}"], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)})
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and ready(read_metrics(metrics)):
                time.sleep(0.15)  # land somewhere inside the next epoch
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    finally:
        if proc.poll() is None:
            proc.kill()


def _assert_epochs_exactly_once(run: Path) -> None:
    events = read_metrics(run / "metrics.jsonl")
    keys = Counter((e["stage"], e["epoch"], e["split"]) for e in events if "split" in e)
    assert all(n == 1 for n in keys.values()), f"duplicated epoch lines: {keys}"
    info = json.loads((run / "run.json").read_text())
    for s in info["stages"]:
        for split in ("train", "val"):
            got = sorted(e for (st, e, sp) in keys if st == s["stage"] and sp == split)
            assert got == list(range(1, s["epochs"] + 1)), f"missing epochs in stage {s['stage']}"


def _resume_until_done(run: Path, args: list[str], cwd: Path) -> None:
    proc = run_cli(*args, f"hydra.run.dir={run}", "resume=auto", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "run.json").read_text())["status"] == "completed"


def test_sigkill_mid_epoch_then_resume_gives_bit_identical_weights(tmp_path):
    args = ["strategy=scratch", "train.epochs=4", *SLOW]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    _kill_when(run, args, tmp_path, lambda ev: any(e.get("split") == "val" and e["epoch"] == 1 for e in ev))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["batch"] > 0 or state["position"]["epoch"] >= 1
    _resume_until_done(run, args, tmp_path)
    ref, got = _final_weights(reference), _final_weights(run)
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    _assert_epochs_exactly_once(run)


def test_layerwise_killed_in_stage_2_of_3_resumes_to_identical_weights(tmp_path):
    args = ["strategy=layerwise", "model.widths=[256,128]", "strategy.finetune.epochs=2",
            "strategy.epochs_per_layer=3", "strategy.objective=denoising", *SLOW]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    _kill_when(run, args, tmp_path, lambda ev: any(e.get("split") == "val" and e["stage"] == 2 for e in ev))
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["position"]["stage"] == 1, "expected the kill inside stage 2"
    _resume_until_done(run, args, tmp_path)
    ref, got = _final_weights(reference), _final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    _assert_epochs_exactly_once(run)


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
    ref, got = _final_weights(reference), _final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    _assert_epochs_exactly_once(run)
