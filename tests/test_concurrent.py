"""Concurrent launches: runs started at the same moment never share a run directory, and a
directory that holds a run (or is in use) is written to only with resume=.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DATA_ROOT, run_cli, run_dirs

from stagetrain.runs import rundir

pytestmark = pytest.mark.full  # concurrency campaigns (dozens of processes): `pytest --full`

# the cheapest real run: a few thousand parameters, one epoch, nothing optional written
TINY = ["strategy=scratch", "train.epochs=1", "model.widths=[8]", "progress=off", "plots=false",
        "checkpoint.stage_checkpoints=false", "device=cpu", "device.threads=1"]
EXE = str(Path(sys.executable).parent / "stagetrain")
ENV = {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT), "OMP_NUM_THREADS": "1"}


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([EXE, *args], cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = 240) -> list[str]:
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out
        outs.append(out)
    return outs


def _completed(dirs: list[Path]) -> bool:
    return all(json.loads((d / "run.json").read_text())["status"] == "completed" for d in dirs)


def test_twenty_runs_started_at_once_get_twenty_distinct_run_directories(tmp_path):
    start = time.time()
    procs = [_start([*TINY, f"seed={i}"], tmp_path) for i in range(20)]
    assert time.time() - start < 1.0, "the 20 launches did not start within one second"
    _finish(procs)
    dirs = run_dirs(tmp_path / "outputs")
    assert len(dirs) == 20 and len({d.name for d in dirs}) == 20
    assert _completed(dirs)
    seeds = sorted(json.loads((d / "run.json").read_text())["seed"] for d in dirs)
    assert seeds == list(range(20)), "each run wrote its own directory, none another's"
    leftovers = [p for p in (tmp_path / "outputs").glob("*/*") if p not in dirs]
    assert leftovers == [], f"directories without a run: {leftovers}"


def test_two_multiruns_and_single_runs_started_together_never_share_a_directory(tmp_path):
    procs = [_start(["-m", *TINY, "seed=0,1,2"], tmp_path) for _ in range(2)]
    procs += [_start(TINY, tmp_path) for _ in range(2)]
    _finish(procs)
    sweeps = sorted((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 2, sweeps
    jobs = [d for s in sweeps for d in run_dirs(s)]
    assert len(jobs) == 6 and _completed(jobs)
    singles = [d for d in run_dirs(tmp_path / "outputs") if "multirun" not in d.parts]
    assert len(singles) == 2 and singles[0] != singles[1] and _completed(singles)


def _reserve_in_child(barrier, queue) -> None:
    barrier.wait()
    queue.put(rundir.reserve_run_dir("x"))


def test_a_name_collision_gets_a_new_name_never_a_shared_directory(tmp_path, monkeypatch):
    """Every process draws the same first name (a clock tick and random part all alike):
    the exclusive mkdir lets exactly one have it, the others draw again."""
    monkeypatch.chdir(tmp_path)
    draws: dict[int, int] = {}

    def same_first_name(strategy: str) -> str:
        n = draws[os.getpid()] = draws.get(os.getpid(), 0) + 1
        return "outputs/d/collide" if n == 1 else f"outputs/d/{os.getpid()}-{n}"

    monkeypatch.setattr(rundir, "_draw_run_dir_name", same_first_name)
    ctx = multiprocessing.get_context("fork")
    barrier, queue = ctx.Barrier(12), ctx.Queue()
    children = [ctx.Process(target=_reserve_in_child, args=(barrier, queue)) for _ in range(12)]
    for c in children:
        c.start()
    names = [queue.get(timeout=60) for _ in children]
    for c in children:
        c.join(timeout=60)
    assert len(set(names)) == 12 and names.count("outputs/d/collide") == 1
    assert all(Path(n).is_dir() for n in names)


def _fingerprint(run: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_existing_run_directory_is_not_touched_without_resume(tmp_path):
    run = tmp_path / "run"
    assert run_cli(*TINY, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    before = _fingerprint(run)
    assert ".hydra/config.yaml" in before and "stagetrain.log" in before
    time.sleep(0.05)  # a rewrite would show in the mtimes
    proc = run_cli(*TINY, "train.epochs=2", f"hydra.run.dir={run}", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "already holds a run" in out and "resume=auto" in out
    assert out.count("already holds a run") == 1 and "Traceback" not in out
    assert _fingerprint(run) == before, "the refused run touched the existing run directory"
    again = run_cli(*TINY, f"hydra.run.dir={run}", "resume=auto", cwd=tmp_path)
    assert again.returncode == 0 and "already completed" in again.stdout + again.stderr
    after = _fingerprint(run)
    assert {k: v for k, v in after.items() if k != "stagetrain.log"} == \
        {k: v for k, v in before.items() if k != "stagetrain.log"}, "resume=auto rewrote a finished run"


def test_two_launches_into_the_same_directory_at_once_run_only_one(tmp_path):
    run = tmp_path / "shared"
    procs = [_start([*TINY, f"hydra.run.dir={run}", "train.epochs=3"], tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    refused = outs[[p.returncode for p in procs].index(1)]
    assert "Another stagetrain process is using the run directory" in refused or \
        "already holds a run" in refused
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and [s["epochs"] for s in info["stages"]] == [3]


def test_empty_resume_is_refused_and_writes_nothing(tmp_path):
    proc = run_cli("resume=", cwd=tmp_path)
    assert proc.returncode == 1 and "resume= is empty" in proc.stderr
    assert list(tmp_path.iterdir()) == [], "nothing (no .hydra, no outputs/) may be written"
