"""benchmarks/gpu_check.sh on a machine without a CUDA GPU: it runs nothing, writes nothing
(neither the JSON asked for nor the recorded result) and exits non-zero saying why.

``CUDA_VISIBLE_DEVICES=`` hides every GPU from PyTorch, so this is the no-GPU path on any
machine. The script is also checked with shellcheck where shellcheck is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
RECORDED = REPO / "benchmarks" / "results" / "gpu_check.json"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_without_a_gpu_it_runs_nothing_writes_nothing_and_fails_saying_why(tmp_path):
    before = RECORDED.stat().st_mtime_ns if RECORDED.exists() else None
    out = tmp_path / "gpu.json"
    for args in ([str(out)], []):  # a path given, and the default (the recorded result)
        proc = _run(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "PyTorch sees no CUDA GPU here" in proc.stderr and "nothing was run and nothing written" in proc.stderr
        assert proc.stdout == "" and "gpu_check: cuda_tests" not in proc.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert (RECORDED.stat().st_mtime_ns if RECORDED.exists() else None) == before


def test_a_python_without_torch_is_the_same_clear_refusal(tmp_path):
    env = {**os.environ, "PYTHON": "/bin/false"}  # an interpreter that cannot import torch
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "gpu.json")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "not importable by /bin/false" in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_script_parses_and_is_shellcheck_clean_where_shellcheck_is_installed():
    parsed = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert parsed.returncode == 0, parsed.stderr
    if shutil.which("shellcheck"):  # not a skip: .ci/check-skips allows only the CUDA tests to skip
        proc = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stdout
