"""The process the kill harness kills: the real ``stagetrain`` CLI, with SIGKILL triggers.

It runs in a child forked from a forkserver that has already imported torch, torchvision,
scikit-learn, Hydra and stagetrain (so a launch costs a fraction of a second, not seconds). Before calling the CLI's
``main()`` it installs, according to its kill plan:

* ``step``:  SIGKILL itself right after the optimizer step that completes global step
  ``at`` (the weights have moved, the step is not yet counted or checkpointed);
* ``write``: SIGKILL itself inside the first atomic write of a file matching ``file`` once
  ``at`` steps are done, in phase ``partial`` (temp file half written), ``tmp`` (temp file
  complete, nothing renamed) or ``between`` (old last.pt moved to last-prev.pt, the new
  one not yet in place);
* ``event``: SIGKILL itself right after metrics.jsonl gets the first ``event``
  (``stage_start``, ``stage_end``, ``growth``) once ``at`` steps are done;
* ``wall``: nothing here; the harness kills from outside after a random delay.

A small record file (pwrite, no fsync: the page cache survives SIGKILL) tells the harness
what the process did: whether the engine started, the global step it resumed from, the
steps completed when it died, and whether one of its own triggers fired.
"""

from __future__ import annotations

import fnmatch
import os
import signal
import struct
import sys
from pathlib import Path
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import stagetrain.app.cli
import stagetrain.checkpoint as ckpt_module
import stagetrain.checkpoint.io as ckpt_io_module
import stagetrain.engine as engine_module
import stagetrain.runs.record as record_module
import stagetrain.runs.rundir as rundir_module

RECORD = struct.Struct("<qqqq")  # started, resumed_step, completed_steps, fired


class _Record:
    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.values = [0, -1, -1, 0]
        self.flush()

    def set(self, **kw: int) -> None:
        for k, v in kw.items():
            self.values[("started", "resumed", "completed", "fired").index(k)] = v
        self.flush()

    def flush(self) -> None:
        os.pwrite(self.fd, RECORD.pack(*self.values), 0)


def read_record(path: Path) -> dict[str, int]:
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if len(data) < RECORD.size:
        return {"started": 0, "resumed": -1, "completed": -1, "fired": 0}
    return dict(zip(("started", "resumed", "completed", "fired"), RECORD.unpack(data[:RECORD.size]), strict=True))


def child_main(argv: list[str], plan: dict[str, Any] | None, record: str, log: str, env: dict[str, str]) -> None:
    """Entry point of a forked child: redirect output, arm the plan, run the CLI."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ.update(env)
    rec = _Record(record)
    _arm(plan or {}, rec)
    sys.argv = ["stagetrain", *argv]
    stagetrain.app.cli.main()


def _die(rec: _Record) -> None:
    rec.set(fired=1)
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(plan: dict[str, Any], rec: _Record) -> None:
    kind, at = plan.get("kind"), int(plan.get("at", 0))
    holder: dict[str, Any] = {}

    orig_run, orig_restore = engine_module.Engine.run, engine_module.Engine.restore

    def run(self: Any) -> Any:
        holder["engine"] = self
        if rec.values[1] < 0:
            rec.set(resumed=0)  # a fresh start
        rec.set(started=1, completed=self.state.global_step)
        return orig_run(self)

    def restore(self: Any, state: dict[str, Any]) -> None:
        orig_restore(self, state)
        rec.set(resumed=int(state["position"]["global_step"]))

    engine_module.Engine.run = run
    engine_module.Engine.restore = restore

    def done() -> int:
        eng = holder.get("engine")
        return eng.state.global_step if eng is not None else -1

    def after_step(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        completed = done() + 1
        rec.set(completed=completed)
        if kind == "step" and completed >= at:
            _die(rec)

    register_optimizer_step_post_hook(after_step)

    if kind == "event":
        orig_log = rundir_module.MetricsLog.log

        def log(self: Any, event: dict[str, Any]) -> bool:
            written = orig_log(self, event)
            if event.get("event") == plan["event"] and done() >= at:
                _die(rec)
            return written

        rundir_module.MetricsLog.log = log

    if kind == "write":
        _arm_write(plan, at, rec, done)


def _arm_write(plan: dict[str, Any], at: int, rec: _Record, done: Any) -> None:
    """Kill inside ``atomic_write``: wrap it so os.fsync / os.replace know which write is on."""
    orig_write = ckpt_module.atomic_write
    current: dict[str, Any] = {}
    phase = plan["phase"]
    real_fsync, real_replace = os.fsync, os.replace

    def atomic_write(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
        armed = fnmatch.fnmatch(Path(path).name, plan["file"]) and done() >= at
        if armed and phase == "between" and (keep_previous is None or not Path(path).exists()):
            armed_phase = "tmp"  # nothing to move aside: the same moment as a complete temp file
        else:
            armed_phase = phase
        current.update(armed=armed, phase=armed_phase, path=str(path))
        try:
            orig_write(path, data, keep_previous)
        finally:
            current.clear()

    def fsync(fd: int) -> None:
        if current.get("armed") and current["phase"] == "partial":
            size = os.fstat(fd).st_size
            if size:
                os.ftruncate(fd, size // 2)
                _die(rec)
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        if current.get("armed"):
            if current["phase"] == "tmp":
                _die(rec)
            if current["phase"] == "between" and str(dst) != current["path"]:
                real_replace(src, dst)  # last.pt -> last-prev.pt done, the new one not in place
                _die(rec)
        real_replace(src, dst)

    os.fsync, os.replace = fsync, replace
    ckpt_module.atomic_write = atomic_write
    ckpt_io_module.atomic_write = atomic_write
    rundir_module.atomic_write = atomic_write
    record_module.atomic_write = atomic_write
