"""How one run cooperates with the Hydra launcher that started it (joblib, SLURM via submitit).

* **Threads.** Jobs of a sweep share a machine: under the joblib launcher each job gets
  ``cpus // n_jobs`` torch threads, in a SLURM job the cores it was given
  (``cpus_per_task``, split between torchrun's processes); ``device.threads`` set to a
  number always wins.
* **Preemption.** The run's own signal handler only sets a flag (no I/O); the engine then
  checkpoints at the next step, ``run.json`` says ``stopped`` and ``StopRequested`` is raised.
  Under submitit, SIGUSR1 and submitit's preemption signal (USR2 unless
  ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise, sent by SLURM ``signal_delay_s`` before the time
  limit) then hand the job to submitit's own checkpoint-and-requeue: the job is requeued under
  the same job id, reruns in the same sweep job directory and continues the run. SIGTERM
  (``scancel``, or SLURM's own preemption, which requeues by itself) stops without a requeue,
  as submitit itself does: a cancelled job must stay cancelled.
* **resume=auto on requeue.** A requeued job reruns the sweep job's overrides. Once the run
  directory holds a run, the job's submission is rewritten with ``resume=auto``, so whatever
  requeues it (submitit, SLURM preemption, an admin's ``scontrol requeue``) continues the run
  instead of refusing an occupied directory; a fresh sweep never sees the change.
* **Several tasks per job.** With ``hydra.launcher.tasks_per_node`` > 1 (or ``nodes`` > 1)
  SLURM starts each sweep job as several tasks; the preset's Hydra callback ``SlurmRanks``
  makes each task one torch.distributed rank before the job runs (``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT`` from SLURM's own
  variables: ``torch_env_from_slurm``), so the run is the same data-parallel (or FSDP) run
  torchrun would start, with one run directory written by rank 0.

submitit is imported only inside a submitit job; nothing here is needed for a plain run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger("stagetrain")

RESUME_ON_REQUEUE = "resume=auto"


def _in_submitit_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def _under_submitit() -> bool:
    """In a submitit SLURM job, as its first process (SLURM task 0, torchrun rank 0): the one
    process that rewrites the job's submission and asks for the requeue."""
    return (_in_submitit_job() and os.environ.get("SLURM_PROCID", "0") == "0"
            and os.environ.get("RANK", "0") == "0")


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def job_threads() -> tuple[int, str] | None:
    """The torch thread count this job's launcher leaves it, and why; None when it has the machine."""
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm_cpus and slurm_cpus.isdigit() and int(slurm_cpus) > 0:
        # torchrun inside the job shares the task's cores; a rank that is its own SLURM task has them all
        procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if "TORCHELASTIC_RUN_ID" in os.environ else 1
        return max(1, int(slurm_cpus) // procs), f"SLURM job with cpus_per_task={slurm_cpus}"
    try:
        from hydra.core.hydra_config import HydraConfig

        launcher = HydraConfig.get().launcher if HydraConfig.initialized() else None
    except Exception:  # noqa: BLE001 - no Hydra context (tests calling train() directly)
        launcher = None
    if launcher is None or "JoblibLauncher" not in str(launcher.get("_target_", "")):
        return None
    cpus = _cpu_count()
    n_jobs = int(launcher.get("n_jobs") or -1)
    if n_jobs < 0:  # joblib's convention: -1 is every CPU, -2 all but one, ...
        n_jobs = max(1, cpus + 1 + n_jobs)
    return max(1, cpus // n_jobs), f"joblib launcher, n_jobs={n_jobs} on {cpus} CPUs"


def _tasks_per_node(text: str) -> list[int]:
    """SLURM's tasks-per-node list expanded: '2(x3),1' -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in filter(None, text.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,09],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(?:\[([^,\]-]+))?", nodelist)
    return (m.group(1) + (m.group(2) or "")) if m else "127.0.0.1"


def torch_env_from_slurm(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """torch.distributed's env:// variables for this SLURM task of a job step with several
    tasks: RANK = SLURM_PROCID, LOCAL_RANK = SLURM_LOCALID, WORLD_SIZE = the step's tasks,
    LOCAL_WORLD_SIZE = its tasks on this node, MASTER_ADDR = the step's first node (where
    task 0 runs), MASTER_PORT = 20000 + job id mod 40000 (jobs sharing a node differ). A
    MASTER_ADDR / MASTER_PORT already set is kept. Empty for a one-task step, or when a
    launcher inside the job (torchrun) has set WORLD_SIZE itself."""
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if tasks <= 1 or "WORLD_SIZE" in env or "SLURM_PROCID" not in env:
        return {}
    per_node = _tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", ""))
    node = int(env.get("SLURM_NODEID", "0"))
    job = env.get("SLURM_JOB_ID", "0")
    return {"RANK": env["SLURM_PROCID"], "LOCAL_RANK": env.get("SLURM_LOCALID", "0"), "WORLD_SIZE": str(tasks),
            "LOCAL_WORLD_SIZE": str(per_node[node] if node < len(per_node) else 1),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _first_host(
                env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "")),
            "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + int(job) % 40000 if job.isdigit() else 29500)}


class SlurmRanks(Callback):
    """Hydra callback of the ``hydra/launcher=slurm`` preset: before a job of several SLURM
    tasks runs, each task becomes one torch.distributed rank (``torch_env_from_slurm``) --
    before the run directory's lock is taken, which only rank 0 holds."""

    def on_job_start(self, config: Any = None, **kwargs: Any) -> None:
        env = torch_env_from_slurm()
        if env:
            os.environ.update(env)
            log.info("SLURM task %s of %s: torch.distributed rank %s (local rank %s), rendezvous %s:%s",
                     env["RANK"], env["WORLD_SIZE"], env["RANK"], env["LOCAL_RANK"], env["MASTER_ADDR"],
                     env["MASTER_PORT"])


def limit_job_threads(threads: int) -> None:
    """With ``device.threads=0`` (automatic), use this job's share of the CPU cores."""
    share = None if threads else job_threads()
    if share is not None:
        import torch

        torch.set_num_threads(share[0])
        log.info("torch threads: %d (%s)", share[0], share[1])


def resume_hint(run_dir: Path, multirun: bool) -> str:
    """How to continue a stopped run: ``resume=auto hydra.run.dir=<run>`` for one run; for a job
    of a sweep, the whole sweep command again with ``resume=auto`` in the same sweep directory
    (completed jobs are skipped, this one continues, the rest run). A submitit job is requeued
    by itself: its own directory is named."""
    if not multirun or _in_submitit_job():
        return f"continue with resume=auto hydra.run.dir={shlex.quote(str(run_dir))}"
    from hydra.core.hydra_config import HydraConfig

    drop = ("resume", "hydra.sweep.dir", "hydra.output_subdir")
    args = [a for a in sys.argv[1:] if a.lstrip("+~").split("=", 1)[0] not in drop]
    command = [Path(sys.argv[0]).name or "stagetrain", *args, f"hydra.sweep.dir={HydraConfig.get().sweep.dir}",
               "resume=auto"]
    return ("continue the sweep (completed jobs are skipped, this one continues) with: "
            + " ".join(shlex.quote(a) for a in command))


def stop_signals() -> tuple[signal.Signals, ...]:
    """Signals that stop a run at the next step with a checkpoint (handled without I/O)."""
    sigs = [signal.SIGTERM, signal.SIGUSR1]
    if _in_submitit_job():
        sigs.append(_submitit_signal())
    return tuple(dict.fromkeys(sigs))


def _submitit_signal() -> signal.Signals:
    from submitit.core.job_environment import JobEnvironment

    return signal.Signals(JobEnvironment._usr_sig())


def _submitit_handler() -> tuple[Any, Any] | None:
    """(submitit's installed checkpoint-and-requeue handler, its job's DelayedSubmission)."""
    from submitit.core.job_environment import SignalHandler

    handler = signal.getsignal(_submitit_signal())
    owner = getattr(handler, "__self__", None)
    if not isinstance(owner, SignalHandler):
        return None
    return handler, getattr(owner, "_delayed", None)


def continue_on_requeue() -> None:
    """Under submitit: make every later requeue of this job continue its run (``resume=auto``).

    Called when the run directory holds a run. Hydra's submitit launcher submits each sweep
    job as ``launcher(overrides, ...)``; the overrides are updated in submitit's in-memory
    submission (what its checkpoint-and-requeue dumps) and in the submitted pickle (what a
    requeue by SLURM itself reruns).
    """
    if not _under_submitit():
        return
    from submitit.core.job_environment import JobEnvironment
    from submitit.core.utils import temporary_save_path

    found = _submitit_handler()
    delayed = found[1] if found else None
    args = getattr(delayed, "args", None)
    if not args or not isinstance(args[0], (list, tuple)):
        log.warning("This submitit job is not a Hydra sweep job as expected; a requeue may not "
                    "continue the run (add resume=auto to the sweep to be sure).")
        return
    overrides = [o for o in args[0] if o.lstrip("+").split("=", 1)[0] != "resume"]
    if RESUME_ON_REQUEUE in args[0] and len(overrides) == len(args[0]) - 1:
        return
    delayed.args = (overrides + [RESUME_ON_REQUEUE], *args[1:])
    with temporary_save_path(JobEnvironment().paths.submitted_pickle) as tmp:
        delayed.dump(tmp)


def requeue_after_stop(stopped_by: str) -> None:
    """After a signal stop (checkpoint written, run.json ``stopped``): requeue a submitit job.

    Only SIGUSR1 and submitit's preemption signal requeue; SIGTERM means cancel (or SLURM
    requeues by itself) and returns, as does anything outside submitit. Submitit's handler
    dumps the submission, runs ``scontrol requeue`` and exits the process, so on success this
    does not return.
    """
    if not _under_submitit():
        return
    if stopped_by not in (signal.SIGUSR1.name, _submitit_signal().name):
        log.info("Not requeued by stagetrain: %s means cancel (scancel), or SLURM requeues the job "
                 "itself; SIGUSR1 or %s asks for a requeue.", stopped_by, _submitit_signal().name)
        return
    found = _submitit_handler()
    if found is None:
        log.warning("Not requeued: submitit's signal handler is not installed in this job.")
        return
    log.info("Requeueing SLURM job %s through submitit; the requeued job continues this run.",
             os.environ.get("SLURM_JOB_ID"))
    try:
        found[0](signal.Signals[stopped_by], None)  # submitit logs it, then requeues and exits
    except subprocess.SubprocessError as e:
        log.error("Could not requeue the job (%s); the run is stopped and resumable with resume=auto.", e)


@contextlib.contextmanager
def stop_on_signals(flag: dict[str, Any]) -> Iterator[None]:
    """While training: a stop signal (and Ctrl-C) only sets ``flag["signal"]``; the engine
    then checkpoints at the next step and raises StopRequested. A second Ctrl-C aborts at
    once (KeyboardInterrupt), for a step that never ends."""

    def handler(sig: int, frame: Any) -> None:
        if sig == signal.SIGINT and flag.get("signal") == signal.SIGINT.name:
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(sig).name

    sigs = (*stop_signals(), signal.SIGINT)
    previous = {sig: signal.signal(sig, handler) for sig in dict.fromkeys(sigs)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
