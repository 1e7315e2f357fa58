"""A full disk: a checkpoint write that hits ENOSPC on a real (small tmpfs) filesystem
leaves the previous checkpoint intact and loadable, removes its temp file, and ends the run
with exit code 1 and a message naming the path and the free space; a pre-flight check
warns at the start when the disk holds fewer than a few checkpoints.

Mounting needs root: the test is marked ``full`` (``pytest --full``; CI runs as root) and
skips, saying so, when not root.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from stagetrain import checkpoint as ckpt

from .harness import COMMON, launch

# 64 -> 256 -> 128 -> 10: 50,826 parameters; with Adam a mid-stage checkpoint is ~610 KB
ARGS = [*COMMON, "strategy=scratch", "model.widths=[256,128]", "train.epochs=3", "checkpoint.every_steps=0"]
PARAMS = 64 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs with room for last.pt and best.pt (epoch 1) but not for epoch 2's temp file."""
    if os.geteuid() != 0:
        pytest.skip("mounts a small tmpfs, which needs root: run `sudo pytest --full` (as .ci/run does)")
    size = ckpt.estimated_size(PARAMS, "adam") * 26 // 10 // 4096 * 4096
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True,
                   capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.full
def test_enospc_keeps_previous_checkpoint_removes_temp_and_exits_clearly(small_disk):
    run = small_disk / "run"
    attempt = launch(ARGS, run, None, "full")
    log = (small_disk / "logs" / "run-full.log").read_text()
    assert attempt.exitcode == 1, log
    last = run / "checkpoints" / "last.pt"
    assert "Low disk space" in log, "the pre-flight warning"
    assert f"Could not write checkpoint {run / 'checkpoints'}" in log and "No space left on device" in log, log
    assert "free on that filesystem" in log and "resume=auto" in log
    assert "Traceback" not in log, log
    assert not list(run.rglob(".*.tmp")), "the temp file is removed"
    state = ckpt.load(last)  # the previous checkpoint, intact
    assert state["position"]["epoch"] == 1 and state["position"]["batch"] == 0
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "No space left" in info["error"]


def test_preflight_warns_only_when_few_checkpoints_fit(tmp_path):
    class Adam:
        name, momentum = "adam", 0.0

    assert ckpt.preflight_disk(tmp_path, 1000, Adam, 3) is None
    msg = ckpt.preflight_disk(tmp_path, 10**13, Adam, 3)
    assert msg and str(tmp_path) in msg and "free" in msg and "7 checkpoints" in msg
