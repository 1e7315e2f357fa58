"""Shared fixtures: configs composed through Hydra's compose API, CLI runs in subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

import stagetrain.cli  # noqa: F401  (registers the resolvers and schemas)

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", REPO.parent / "shared" / "data"))
FAST = ["progress=off"]


def make_cfg(*overrides: str):
    """The composed run config for ``overrides``, exactly as the CLI would build it."""
    with initialize_config_module("stagetrain.conf", version_base="1.3"):
        return compose("config", overrides=[*FAST, *overrides])


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the ``stagetrain`` console script (this interpreter's) in ``cwd``."""
    exe = Path(sys.executable).parent / "stagetrain"
    full_env = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT), **(env or {})}
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_dirs(root: Path) -> list[Path]:
    """Every run directory (one holding run.json) under ``root``."""
    return sorted(p.parent for p in Path(root).rglob("run.json"))


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real MNIST / Fashion-MNIST files; missing files fail (never skip) the tests."""
    for name in ("MNIST", "FashionMNIST"):
        assert (DATA_ROOT / name / "raw" / "train-images-idx3-ubyte").exists(), (
            f"{DATA_ROOT / name / 'raw'} is missing: set STAGETRAIN_DATA to the folder holding MNIST/ and FashionMNIST/")
    return DATA_ROOT
