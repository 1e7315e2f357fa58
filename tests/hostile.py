"""Shared pieces of the hostile-input tables: one real run to damage or protect, the
in-process CLI call, and the checks every refused input must pass."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

import stagetrain.cli

# the cheapest real run: a few hundred parameters, digits, nothing optional written
TINY = ["strategy=scratch", "train.epochs=2", "model.widths=[8]", "progress=off", "plots=false",
        "device=cpu", "device.threads=1"]


def run_main(args: list[str]) -> int:
    """``stagetrain <args>`` in this process: its exit code (output goes to capsys)."""
    try:
        stagetrain.cli.main(list(args))
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
