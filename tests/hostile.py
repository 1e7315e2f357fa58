"""Shared pieces of the hostile-input tables: one real run to damage or protect, the
in-process CLI call, and the checks every refused input must pass."""

from __future__ import annotations

import contextlib
import hashlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

import stagetrain.app.cli

# the cheapest real run: a few hundred parameters, digits, nothing optional written
TINY = ["strategy=scratch", "train.epochs=2", "model.widths=[8]", "progress=off", "plots=false",
        "device=cpu", "device.threads=1"]


def run_main(args: list[str]) -> int:
    """``stagetrain <args>`` in this process: its exit code (output goes to capsys)."""
    try:
        stagetrain.app.cli.main(list(args))
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()


@pytest.fixture(scope="session")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed real run (scratch, digits, 2 epochs): run.json, metrics, checkpoints."""
    root = tmp_path_factory.mktemp("good")
    assert run_main([*TINY, f"hydra.run.dir={root / 'run'}"]) == 0
    return root / "run"


def fingerprint(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash and mtime (files), target (links)."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = "link:" + str(p.readlink())
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest() + f":{p.stat().st_mtime_ns}"
        else:
            out[key] = "dir"
    return out


def assert_refused(code: int, text: str, expected: list[str]) -> str:
    """The checks every refused input must pass: a non-zero exit, no traceback, exactly one
    ``Error:`` paragraph, holding every ``expected`` fragment. Returns that paragraph."""
    assert code != 0, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:") or "[ERROR]" in line]
    assert len(errors) == 1, f"not one error paragraph:\n{text}"
    for e in expected:
        assert e in errors[0], f"{e!r} not in:\n{errors[0]}"
    return errors[0]


def idx_root(base: Path, name: str, damage) -> Path:
    """``base/name``: a small MNIST root (60 train, 30 test IDX images) after ``damage(raw folder)``."""
    from conftest import make_idx_images, write_idx

    raw = base / name / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, n in (("train", 60), ("t10k", 30)):
        x, y = make_idx_images(n, 0, 0)
        write_idx(raw / f"{split}-images-idx3-ubyte", x)
        write_idx(raw / f"{split}-labels-idx1-ubyte", y)
    damage(raw)
    return base / name


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the body takes longer than ``seconds``."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: it blocks")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
