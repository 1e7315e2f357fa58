"""Sweeps through real launchers: joblib in local processes, and SLURM through Hydra's submitit
launcher on a real single-node cluster (``.ci/slurm-up``), including preemption and requeue.

No mocks: every job runs the ``stagetrain`` console script's engine on the digits dataset. The
SLURM tests are marked ``full`` (``pytest --full``) and need the cluster: as root they start it
with ``.ci/slurm-up``; otherwise, when none answers, they skip saying how to start one
(``.ci/run`` fails on that skip).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, REPO, assert_epochs_exactly_once, final_weights, run_cli, run_dirs

from stagetrain.runs.launch import torch_env_from_slurm
from stagetrain.runs.rundir import read_metrics

SLURM_UP = REPO / ".ci" / "slurm-up"
TINY = ["train.epochs=1", "plots=false"]
# the shipped preset, shrunk to this machine: 1 core and 1 GB per job
SLURM = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def _assert_complete(run: Path) -> dict:
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed", f"{run}: {info['status']} {info.get('error')}"
    assert (run / "model.safetensors").exists() and (run / "checkpoints" / "last.pt").exists(), run
    return info


# ---------------------------------------------------------------- joblib
def test_joblib_sweep_runs_each_job_with_its_share_of_threads(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=scratch,layerwise",
                   "progress=off", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    runs = run_dirs(sweep)
    assert runs == [sweep / "0", sweep / "1"]
    assert {_assert_complete(r)["strategy"] for r in runs} == {"scratch", "layerwise"}
    threads = max(1, _cpus() // 2)
    for run in runs:
        assert f"torch threads: {threads} (joblib launcher, n_jobs=2" in (run / "stagetrain.log").read_text()


# ---------------------------------------------------------------- SLURM
def _slurm_answers() -> bool:
    if shutil.which("sinfo") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    return proc.returncode == 0 and bool({"idle", "mix", "alloc"} & set(proc.stdout.split()))


@pytest.fixture(scope="session")
def slurm() -> None:
    """A SLURM cluster that answers; ``.ci/slurm-up`` starts one (as root) if none does."""
    if not _slurm_answers() and os.geteuid() == 0:
        subprocess.run([str(SLURM_UP)], capture_output=True, timeout=900)
    if not _slurm_answers():
        pytest.skip("needs a SLURM cluster: none answers here (sinfo shows no idle node). Run "
                    "`sudo .ci/slurm-up` to install and start a single-node one, or run the tests as root.")


def _job_ids(sweep: Path) -> list[str]:
    """SLURM job ids the submitit launcher recorded: one folder per job under .submitit/."""
    folder = sweep / ".submitit"
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d+(_\d+)?", p.name)) if folder.is_dir() else []


def _cancel(sweep: Path) -> None:
    """Leave no job of a failed test behind on the cluster."""
    ids = {j.split("_")[0] for j in _job_ids(sweep)}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=30)


@pytest.mark.full
def test_slurm_sweep_jobs_are_scheduled_by_slurm_and_complete(tmp_path, slurm):
    sweep = tmp_path / "sweep"
    try:
        proc = run_cli("-m", *SLURM, "strategy=scratch,layerwise,grow", *TINY, f"hydra.sweep.dir={sweep}",
                       cwd=tmp_path, timeout=240)
    finally:
        _cancel(sweep)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = run_dirs(sweep)
    assert runs == [sweep / str(k) for k in range(3)]
    assert [_assert_complete(r)["strategy"] for r in runs] == ["scratch", "layerwise", "grow"]

    # one SLURM job array, one task per sweep job, each with its own submitit logs
    ids = _job_ids(sweep)
    array = {j.split("_")[0] for j in ids if "_" in j}
    assert len(array) == 1, ids
    (array_id,) = array
    assert sorted(j for j in ids if "_" in j) == [f"{array_id}_{k}" for k in range(3)]
    script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-2" in script and "#SBATCH --cpus-per-task=1" in script
    for k in range(3):
        job = f"{array_id}_{k}"
        out = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
        assert f"Starting with JobEnvironment(job_id={job}," in out and "Job completed successfully" in out
        assert "torch threads: 1 (SLURM job with cpus_per_task=1)" in out  # SLURM's own environment
        # progress=auto off a terminal: periodic plain lines, no live bar's control sequences
        assert "epoch 1/" in out and "\x1b[" not in out
    shown = subprocess.run(["scontrol", "show", "job", array_id], capture_output=True, text=True).stdout
    assert shown.count("JobState=COMPLETED") == 3, shown


# ---------------------------------------------------------------- several SLURM tasks per job
def test_each_slurm_task_gets_the_torch_distributed_environment():
    """SLURM's variables of a job step (the input, written out) -> torchrun's; nothing else changes."""
    task = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
            "SLURM_NODEID": "2", "SLURM_STEP_TASKS_PER_NODE": "2(x2),4", "SLURM_JOB_ID": "123456",
            "SLURM_STEP_NODELIST": "gpu[07-09],cpu1", "SLURM_JOB_NODELIST": "gpu[07-09],cpu1,cpu2"}
    assert torch_env_from_slurm(task) == {"RANK": "5", "LOCAL_RANK": "1", "WORLD_SIZE": "8",
                                          "LOCAL_WORLD_SIZE": "4", "MASTER_ADDR": "gpu07",
                                          "MASTER_PORT": str(20000 + 123456 % 40000)}
    # a rendezvous given by the user is kept
    given = torch_env_from_slurm({**task, "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"})
    assert (given["MASTER_ADDR"], given["MASTER_PORT"]) == ("10.0.0.1", "29400")
    # one task per job (the default), or torchrun inside the job: left alone
    assert torch_env_from_slurm({**task, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}) == {}
    assert torch_env_from_slurm({**task, "WORLD_SIZE": "16"}) == {}
    assert torch_env_from_slurm({}) == {}


@pytest.mark.full
def test_slurm_jobs_of_two_tasks_are_two_rank_ddp_and_fsdp_runs(tmp_path, slurm):
    """hydra.launcher.tasks_per_node=2: each job of the sweep (DDP, FSDP) is two SLURM tasks,
    each a torch.distributed rank; one run directory per job (rank 0 writes it), the same
    weights as torchrun's 2-process run of the same job."""
    sweep = tmp_path / "sweep"
    args = ["strategy=scratch", "train.epochs=2", "plots=false", "progress=off", "device=cpu"]
    shards = ["none", "fsdp"]
    try:
        proc = run_cli("-m", *SLURM, "hydra.launcher.tasks_per_node=2", *args, f"device.shard={','.join(shards)}",
                       f"hydra.sweep.dir={sweep}", cwd=tmp_path, timeout=400)
    finally:
        _cancel(sweep)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert run_dirs(sweep) == [sweep / "0", sweep / "1"]
    jobs = sorted(j for j in _job_ids(sweep) if "_" in j)
    array = jobs[0].split("_")[0]
    script = (sweep / ".submitit" / array / f"{array}_submission.sh").read_text()
    assert "#SBATCH --ntasks-per-node=2" in script, script
    exe = Path(sys.executable).parent
    for k, (job, shard) in enumerate(zip(jobs, shards, strict=True)):
        run = sweep / str(k)
        info = _assert_complete(run)
        assert info["distributed"]["world_size"] == 2 and info["config"]["device"]["shard"] == shard, info
        for rank in (0, 1):
            out = (sweep / ".submitit" / job / f"{job}_{rank}_log.out").read_text()
            assert f"SLURM task {rank} of 2: torch.distributed rank {rank} (local rank {rank})" in out, out
        # each task is its own SLURM task with its own core: not split as between torchrun's processes
        assert "torch threads: 1 (SLURM job with cpus_per_task=1)" in (run / "stagetrain.log").read_text()
        # the same job under torchrun: the same ranks, batches and reductions, so the same weights
        reference = subprocess.run([str(exe / "torchrun"), "--nproc-per-node", "2", str(exe / "stagetrain"), *args,
                                    f"device.shard={shard}", f"hydra.run.dir={tmp_path / shard}"], cwd=tmp_path,
                                   capture_output=True, text=True, timeout=300,
                                   env={**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)})
        assert reference.returncode == 0, reference.stdout[-2000:] + reference.stderr[-2000:]
        ours, theirs = final_weights(run), final_weights(tmp_path / shard)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), f"{shard}: the SLURM-task ranks trained differently"


def _train_epochs(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return sum(e.get("split") == "train" for e in read_metrics(metrics)) if metrics.exists() else 0


def _status(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text())["status"]
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.full
def test_slurm_preempted_job_checkpoints_is_requeued_and_ends_bit_identical(tmp_path, slurm):
    """Two interruptions of one running SLURM job, each at a random step:

    1. SIGUSR1 (what SLURM's ``--signal`` or an admin sends): the run checkpoints at the next
       step, run.json says ``stopped``, submitit requeues the same job id;
    2. ``scontrol requeue`` (SLURM's own requeue, by SIGTERM): checkpoint, ``stopped``, and
       SLURM reruns the job.

    Each time the job reruns in the same run directory and resumes (resume=auto); it ends with
    the final weights of an uninterrupted run and every epoch logged once.
    """
    args = ["strategy=scratch", "train.epochs=60", "device.threads=1", "plots=false", "progress=off"]
    sweep, env = tmp_path / "sweep", {**os.environ, "STAGETRAIN_DATA": str(DATA_ROOT)}
    run = sweep / "0"
    exe = Path(sys.executable).parent / "stagetrain"
    proc = subprocess.Popen([str(exe), "-m", *SLURM, *args, f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    reference = None
    deadline = time.time() + 200
    seen: list[str] = []

    def wait_for(what: str, ready) -> None:  # and record each status run.json goes through
        while True:
            status = _status(run)
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            if ready():
                return
            assert proc.poll() is None and time.time() < deadline, f"the sweep ended or timed out before {what}"
            time.sleep(0.05)

    try:
        wait_for("two epochs", lambda: _train_epochs(run) >= 2)
        (job,) = _job_ids(sweep)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        # the uninterrupted run, here while the job is stopped and requeued
        reference = subprocess.Popen([str(exe), *args, f"hydra.run.dir={tmp_path / 'reference'}"],
                                     cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        wait_for("the first stop", lambda: _status(run) == "stopped")
        epochs = _train_epochs(run)
        wait_for("the resumed job's progress", lambda: _status(run) == "running" and _train_epochs(run) >= epochs + 2)
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
        wait_for("the second stop", lambda: _status(run) == "stopped")
        output, _ = proc.communicate(timeout=max(10, deadline - time.time()))
        assert reference.wait(timeout=max(10, deadline - time.time())) == 0, "the reference run failed"
    finally:
        for p in (proc, reference):
            if p is not None and p.poll() is None:
                p.kill()
        _cancel(sweep)
    assert proc.returncode == 0, output
    assert seen[:4] == ["running", "stopped", "running", "stopped"], seen

    log = (run / "stagetrain.log").read_text()
    assert "Requeueing SLURM job" in log and "Stopped by SIGTERM after" in log  # USR1: requeued, no error
    assert log.count("Resuming from") == 2, log
    out = (sweep / ".submitit" / job / f"{job}_0_log.out").read_text()
    requeued = re.findall(rf"^submitit INFO .* - Requeued job {job} ", out, re.M)
    assert len(requeued) == 1, out  # by submitit after USR1; SLURM requeued the job the second time
    assert out.count(f"Starting with JobEnvironment(job_id={job},") == 3, out

    _assert_complete(run)
    assert_epochs_exactly_once(run)
    ours, theirs = final_weights(run), final_weights(tmp_path / "reference")
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), "resumed weights differ from the uninterrupted run"


def readme_sbatch_script() -> str:
    """The sbatch script of the README (the fenced block after its ``sbatch-example`` marker)."""
    text = (REPO / "README.md").read_text()
    after = text[text.index("<!-- sbatch-example"):]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.full
def test_readme_sbatch_script_requeues_on_usr1_and_the_run_completes(tmp_path, slurm):
    """The README's plain sbatch script on the local cluster: USR1 (what --signal=USR1@90 sends
    before the time limit) checkpoints the run, the script requeues the job, the requeued job
    continues the run with resume=auto and completes it, every epoch logged once."""
    script = tmp_path / "job.sh"
    script.write_text(readme_sbatch_script())
    assert "#SBATCH --signal=USR1@90" in script.read_text() and "#SBATCH --requeue" in script.read_text()
    run = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # the cluster's size instead of the script's 4 cores / 8 GB / 4 h (the command line wins)
    submitted = subprocess.run(["sbatch", "--parsable", "--cpus-per-task=1", "--mem=1G", "--time=10",
                                f"--output={tmp_path / 'slurm-%j.out'}", str(script), "strategy=scratch",
                                "train.epochs=40", "device.threads=1", "plots=false", "progress=off"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.time() + 240
        while _train_epochs(run) < 2:
            assert time.time() < deadline, "the job did not start training"
            time.sleep(0.1)
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=30)
        while _status(run) != "completed" or subprocess.run(["squeue", "-h", "-j", job], capture_output=True,
                                                             text=True).stdout.strip():
            assert time.time() < deadline, f"the run did not complete: {_status(run)}"
            time.sleep(0.2)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    log = (run / "stagetrain.log").read_text()
    assert "Stopped by SIGUSR1" in log and log.count("Resuming from") == 1, log
    out = (tmp_path / f"slurm-{job}.out").read_text()
    assert "run directory:" in out, out
    _assert_complete(run)
    assert_epochs_exactly_once(run)


def readme_nodes_script() -> str:
    """The README's multi-node sbatch script (the fenced block after its marker)."""
    text = (REPO / "README.md").read_text()
    after = text[text.index("submits this multi-node script to the local SLURM cluster"):]
    return after.split("```bash\n", 1)[1].split("```", 1)[0]


@pytest.mark.full
def test_readme_multi_node_script_runs_srun_torchrun_with_c10d_rendezvous(tmp_path, slurm):
    """The README's multi-node script on the local one-node cluster (--nodes=1 on the command
    line, 2 processes per node): srun starts torchrun, torchrun's c10d rendezvous on the job's
    first node starts 2 ranks, one run directory completes."""
    script = tmp_path / "nodes.sh"
    script.write_text(readme_nodes_script())
    text = script.read_text()
    assert "srun torchrun --nnodes" in text and "--rdzv-backend c10d --rdzv-endpoint" in text
    run = tmp_path / "run"
    env = {**os.environ, "RUN_DIR": str(run), "PROCS_PER_NODE": "2",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    submitted = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--mem=2G", "--time=10",
                                f"--output={tmp_path / 'slurm-%j.out'}", str(script), "strategy=scratch", "device=cpu",
                                "train.epochs=2", "plots=false", "progress=off"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.time() + 240
        while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
            assert time.time() < deadline, f"the job did not end: {_status(run)}"
            time.sleep(0.5)
    finally:
        subprocess.run(["scancel", job], capture_output=True, timeout=30)
    out = (tmp_path / f"slurm-{job}.out").read_text()
    info = _assert_complete(run)
    assert info["distributed"]["world_size"] == 2 and "gloo" in info["distributed"]["backend"], (info, out)
    # torchrun's 2 processes share the task's 2 cores
    assert "torch threads: 1 (SLURM job with cpus_per_task=2)" in (run / "stagetrain.log").read_text()
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["run"], out
