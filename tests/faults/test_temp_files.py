"""A write killed before its rename leaves a temp file; the next resume removes it when
its writer (named in the file name: host and pid) is dead, and never a live writer's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from stagetrain.checkpoint import atomic_write, temp_prefix
from stagetrain.runs.rundir import RunDir


def test_resume_removes_only_dead_writers_temp_files(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    host = socket.gethostname()
    stale = run.checkpoints / f".last.pt.{host}.{dead_pid}.abc123.tmp"
    stale_json = tmp_path / f".run.json.{host}.{dead_pid}.xyz.tmp"
    live = run.checkpoints / f"{temp_prefix('last.pt')}def456.tmp"
    elsewhere = run.checkpoints / f".last.pt.another-host.{dead_pid}.ghi789.tmp"
    for p in (stale, stale_json, live, elsewhere):
        p.write_bytes(b"partial")
    atomic_write(run.last, b"x")
    assert run.resume_candidates() == [run.last]
    assert not stale.exists() and not stale_json.exists()
    assert live.exists(), "our own (live) writer's file stays"
    assert elsewhere.exists(), "another host's file is not ours to judge"
    assert os.getpid() != dead_pid
