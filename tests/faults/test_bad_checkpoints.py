"""Corrupt, foreign and malicious checkpoints: a one-paragraph error naming the file and
what is wrong, no code ever executed, and under resume=auto a fall-back to the previous
good checkpoint (said in the log) that still ends bit-identical to an uninterrupted run."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from stagetrain import checkpoint as ckpt
from stagetrain.core.errors import StagetrainError

from .harness import COMMON, launch, load_final

ARGS = [*COMMON, "strategy=scratch", "model.widths=[32,16]", "train.epochs=3"]
MARKER = "stagetrain-pwned-marker"


class _Payload:
    """Unpickling this runs ``touch <MARKER>``: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted reference run, and the same run SIGKILLed at step 40 (last.pt at
    step 35, last-prev.pt at 28), plus a run of another architecture."""
    root = tmp_path_factory.mktemp("badck")
    assert launch(ARGS, root / "reference", None, "ref").exitcode == 0
    assert launch(ARGS, root / "killed", {"kind": "step", "at": 40}, "kill").exitcode == -9
    other = [*ARGS[:-2], "model.widths=[64]", "train.epochs=1"]
    assert launch(other, root / "other", None, "other").exitcode == 0
    return root


def _load_error(path: Path) -> str:
    with pytest.raises(StagetrainError) as err:
        ckpt.load(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    assert "\n" not in msg, "one paragraph"
    return msg


def _first_weight_bytes(state: dict) -> bytes:
    """The raw bytes of the model's first tensor with at least 64 elements."""
    return next(v for v in state["model"].values() if v.numel() >= 64).contiguous().numpy().tobytes()


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_truncation_at_random_offsets_is_always_reported(runs, tmp_path):
    data = (runs / "killed" / "checkpoints" / "last.pt").read_bytes()
    rng = random.Random(0)
    offsets = sorted({1, 10, 100, len(data) // 2, len(data) - 1, *(rng.randrange(1, len(data)) for _ in range(25))})
    for n in offsets:
        bad = tmp_path / f"cut-{n}.pt"
        bad.write_bytes(data[:n])
        msg = _load_error(bad)
        assert "truncated" in msg or "corrupt" in msg, msg


def test_every_bit_flip_is_caught_or_changes_nothing(runs, tmp_path):
    """torch.load checks no CRC: most flips load as other numbers. The stored SHA-256 of
    the content catches every flip that changes what loads; the rest (zip metadata torch
    ignores) leave the loaded checkpoint exactly as it was."""
    path = runs / "killed" / "checkpoints" / "last.pt"
    data, good = path.read_bytes(), ckpt.load(path)
    rng = random.Random(1)
    caught = harmless = 0
    for i in range(120):
        flipped = bytearray(data)
        pos = rng.randrange(len(data))
        flipped[pos] ^= 1 << rng.randrange(8)
        bad = tmp_path / f"flip-{i}.pt"
        bad.write_bytes(bytes(flipped))
        try:
            state = ckpt.load(bad)
        except StagetrainError as e:
            assert str(bad) in str(e) and "\n" not in str(e)
            caught += 1
            continue
        assert _same(state, good), f"a flip at byte {pos} changed the checkpoint and was not caught"
        harmless += 1
    assert caught > 100, (caught, harmless)


def test_bit_flip_inside_tensor_data_is_caught_by_the_checksum(runs, tmp_path):
    path = runs / "killed" / "checkpoints" / "last.pt"
    data = path.read_bytes()
    raw = _first_weight_bytes(ckpt.load(path))
    at = data.find(raw[:64])
    assert at > 0, "tensor bytes are stored uncompressed in torch's zip"
    flipped = bytearray(data)
    flipped[at + 17] ^= 0x10
    bad = tmp_path / "flip-in-weights.pt"
    bad.write_bytes(bytes(flipped))
    torch.load(bad, weights_only=True)  # torch itself notices nothing
    assert "SHA-256" in _load_error(bad)


def test_zero_length_wrong_version_and_legacy_version(runs, tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert "empty" in _load_error(empty)
    state = torch.load(runs / "killed" / "checkpoints" / "last.pt", weights_only=True)
    for version in (0, 3, 99, "2"):
        bad = tmp_path / f"v{version}.pt"
        torch.save({**state, "version": version}, bad)
        assert "format version" in _load_error(bad)
    legacy = tmp_path / "v1.pt"  # written before checkpoints carried a digest: still loads
    torch.save({k: v for k, v in state.items() if k != "sha256"} | {"version": 1}, legacy)
    assert ckpt.load(legacy)["version"] == 1
    stripped = tmp_path / "v2-no-digest.pt"
    torch.save({k: v for k, v in state.items() if k != "sha256"}, stripped)
    assert "sha256" in _load_error(stripped)


def test_files_that_are_not_checkpoints(runs, tmp_path):
    cases = {
        "notes.pt": b"just some text\n",
        "image.pt": b"\x89PNG\r\n\x1a\n" + bytes(200),
        "model.pt": (runs / "reference" / "model.safetensors").read_bytes(),
        "random.pt": random.Random(2).randbytes(5000),
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert "cannot be read" in _load_error(tmp_path / name)
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    zipped = tmp_path / "zip.pt"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("archive/data.pkl", b"not a pickle")
    for name in ("tensor.pt", "foreign.pt"):
        assert "not a stagetrain checkpoint" in _load_error(tmp_path / name)
    _load_error(zipped)


def _malicious_files(tmp_path: Path, state: dict) -> list[Path]:
    files = []
    p = tmp_path / "evil-torch.pt"  # torch's zip format, payload next to a valid-looking checkpoint
    torch.save({**state, "payload": _Payload()}, p)
    files.append(p)
    p = tmp_path / "evil-nested.pt"  # payload deep inside the model's state
    torch.save({**state, "model": {**state["model"], "x": [_Payload()]}}, p)
    files.append(p)
    p = tmp_path / "evil-pickle.pt"  # a bare pickle (torch's legacy format)
    p.write_bytes(pickle.dumps({"format": ckpt.FORMAT, "payload": _Payload()}))
    files.append(p)
    p = tmp_path / "evil-eval.pt"
    torch.save({"format": ckpt.FORMAT, "x": _Eval()}, p)
    files.append(p)
    return files


class _Eval:
    def __reduce__(self):
        return (eval, (f"__import__('os').system('touch {MARKER}')",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickles_are_refused_and_never_executed(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state = torch.load(runs / "killed" / "checkpoints" / "last.pt", weights_only=True)
    for path in _malicious_files(tmp_path, state):
        msg = _load_error(path)
        assert "Nothing was executed" in msg, msg
        assert "refused" in msg or "cannot be read" in msg
        assert not (tmp_path / MARKER).exists(), f"{path.name} executed code"
    assert "posix.system" in _load_error(tmp_path / "evil-torch.pt")


def _corrupt(kind: str, last: Path, runs: Path, tmp_path: Path) -> str:
    """Damage ``last`` one way; return what the resume log must say about it."""
    data = last.read_bytes()
    if kind == "truncated":
        last.write_bytes(data[: len(data) // 3])
        return "cannot be read"
    if kind == "bit_flip":
        at = data.find(_first_weight_bytes(torch.load(last, weights_only=True))[:64])
        flipped = bytearray(data)
        flipped[at + 5] ^= 0x01
        last.write_bytes(bytes(flipped))
        return "SHA-256"
    if kind == "zero_length":
        last.write_bytes(b"")
        return "empty"
    if kind == "wrong_version":
        state = torch.load(last, weights_only=True)
        torch.save({**state, "version": 7}, last)
        return "format version 7"
    if kind == "other_architecture":
        shutil.copy(runs / "other" / "checkpoints" / "last.pt", last)
        return "does not belong to the run"
    if kind == "not_a_checkpoint":
        last.write_text("model weights are in the cloud now\n")
        return "cannot be read"
    if kind == "malicious":
        state = torch.load(last, weights_only=True)
        torch.save({**state, "payload": _Payload()}, last)
        return "refused"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "bit_flip", *(  # the other five kinds: `pytest --full`
    pytest.param(k, marks=pytest.mark.full) for k in
    ("zero_length", "wrong_version", "other_architecture", "not_a_checkpoint", "malicious"))])
def test_resume_auto_falls_back_to_the_previous_good_checkpoint(kind, runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a payload's `touch` would land
    run = tmp_path / "run"
    shutil.copytree(runs / "killed", run)
    last = run / "checkpoints" / "last.pt"
    expect = _corrupt(kind, last, runs, tmp_path)
    attempt = launch(ARGS, run, None, "resume")
    log = (tmp_path / "logs" / "run-resume.log").read_text()
    assert attempt.exitcode == 0, log
    assert expect in log and str(last) in log and "Falling back to the previous checkpoint" in log, log
    assert f"Resuming from {run / 'checkpoints' / 'last-prev.pt'}" in log, log
    assert attempt.record["resumed"] == 28, attempt.record  # last-prev.pt: one interval back
    assert not (tmp_path / MARKER).exists()
    assert json.loads((run / "run.json").read_text())["status"] == "completed"
    ref, got = load_final(runs / "reference"), load_final(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    ckpt.load(last)  # a good last.pt again


def test_load_error_text_is_one_paragraph_for_a_damaged_zip(runs, tmp_path):
    data = io.BytesIO((runs / "killed" / "checkpoints" / "last.pt").read_bytes()).getvalue()
    bad = tmp_path / "last.pt"
    bad.write_bytes(data[:-30])  # the zip's end record cut off
    _load_error(bad)
