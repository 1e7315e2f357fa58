"""Fault-injection tests: run directories in memory where possible (see ``shm_path``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def shm_path(tmp_path):
    """A fresh folder on /dev/shm (tmpfs: fsync costs nothing), else ``tmp_path``.

    A SIGKILL leaves the page cache intact either way, so a kill test loses nothing by it;
    the kill harness does dozens of runs, each fsyncing every checkpoint.
    """
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    path = Path(tempfile.mkdtemp(prefix="stagetrain-faults-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
