"""Corrupt, foreign and malicious checkpoints give clear errors; resume falls back."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from conftest import make_cfg, run_cli

from stagetrain import checkpoint as ckpt
from stagetrain.core.errors import StagetrainError
from stagetrain.runs.runner import train


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ck") / "run"
    train(make_cfg("strategy=scratch", "train.epochs=3"), run)
    return run


def test_truncated_checkpoint_gives_clear_error_naming_the_file(finished_run, tmp_path):
    bad = tmp_path / "last.pt"
    data = (finished_run / "checkpoints" / "last.pt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(StagetrainError) as err:
        ckpt.load(bad)
    assert str(bad) in str(err.value) and "truncated" in str(err.value)


def test_empty_and_foreign_files_are_refused(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(StagetrainError, match="empty"):
        ckpt.load(empty)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(StagetrainError, match="not a stagetrain checkpoint"):
        ckpt.load(foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(StagetrainError, match="cannot be read"):
        ckpt.load(text)


def test_wrong_format_version_is_refused(finished_run, tmp_path):
    state = torch.load(finished_run / "checkpoints" / "last.pt", weights_only=True)
    state["version"] = 99
    path = tmp_path / "v99.pt"
    torch.save(state, path)
    with pytest.raises(StagetrainError, match="format version 99"):
        ckpt.load(path)


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_never_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"format": ckpt.FORMAT, "payload": _Payload()}, f)
    with pytest.raises(StagetrainError, match="Nothing was executed"):
        ckpt.load(path)
    assert not (tmp_path / "PWNED").exists()


def test_resume_auto_falls_back_from_a_truncated_last_checkpoint(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    info = json.loads((run / "run.json").read_text())
    info["status"] = "running"  # pretend it was interrupted after its last epoch
    (run / "run.json").write_text(json.dumps(info))
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    proc = run_cli("strategy=scratch", "train.epochs=3", f"hydra.run.dir={run}", "resume=auto",
                   "progress=off", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "cannot be read" in out and "Falling back" in out
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    ckpt.load(last)  # a good last.pt again


def test_failed_write_leaves_previous_checkpoint_and_no_temp_file(finished_run, tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    shutil.copy(finished_run / "checkpoints" / "last.pt", target)
    before = target.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt.io.os, "fsync", full_disk)
    with pytest.raises(StagetrainError, match="No space left"):
        ckpt.save({"x": torch.zeros(3)}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
