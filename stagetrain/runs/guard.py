"""The run layer's guards around one command and one job: the run directory's lock held
while a job trains, a file-system failure as one paragraph, the error paragraph of a
refused launch (never appended to another run's log), and SIGTERM before training as a
clean exit that leaves no directory behind. Torch-free to import."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("stagetrain")
_started = [0.0]  # when the current command began (time.time())


class Terminated(SystemExit):
    """SIGTERM before training started (training installs its own handler)."""


def _terminate(sig: int, frame: Any) -> None:
    raise Terminated(128 + sig)


@contextlib.contextmanager
def command() -> Iterator[None]:
    """One console command: SIGTERM before training removes what this process reserved for a
    run that never started; at the end every lock is released (the Python API may run again)."""
    from stagetrain.runs import runlock

    _started[0] = time.time()
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None
    try:
        yield
    except Terminated:
        rundir = sys.modules.get("stagetrain.runs.rundir")  # not imported yet: nothing was reserved
        if rundir is not None and hasattr(rundir, "discard_reserved"):
            rundir.discard_reserved()
        log.error("Stopped by SIGTERM outside training; nothing of a run that had not started is left.")
        raise
    finally:
        runlock.release_all()  # the command has ended: its run (or sweep) is free for the next one
        if "stagetrain.runs.rundir" in sys.modules:
            sys.modules["stagetrain.runs.rundir"].RESERVED.clear()
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def locked_train(train: Any, cfg: Any, run_dir: Path, multirun: bool) -> dict[str, Any]:
    """``train`` under the run directory's lock (no two processes write one run: a sweep's
    job, a default directory), with a file-system failure (a full disk, a read-only mount, a
    path that is a file) turned into one paragraph naming the path and the cause."""
    from stagetrain.runs import runlock

    took = runlock.hold(run_dir)
    try:
        return train(cfg, run_dir)
    except OSError as e:
        raise runlock.fs_error(e.filename or run_dir, "write", e) from None
    finally:
        if took and multirun:  # the next job of this sweep process locks its own directory
            runlock.release(run_dir)


def say_error(message: str, console: bool, run_dir: Path) -> None:
    """A failure in the log; for the console script also as its one ``Error:`` paragraph
    (the run's log keeps it too, off the console, unless the launch was refused before it
    wrote anything: an existing run's log is not this launch's to append to)."""
    from stagetrain.runs import runlock

    if runlock.was_refused(run_dir):  # another process's run: not a line into its log
        print(f"Error: {message}", file=sys.stderr)
        return
    if not console:
        log.error("%s", message)  # a sweep's job, or a stop the user continues
        return
    from stagetrain.progress import FILE_ONLY, keep_file_only_off_the_console

    run_json = run_dir / "run.json"
    if not (run_json.is_file() and run_json.stat().st_mtime < _started[0]):
        keep_file_only_off_the_console()
        log.error("%s", message, extra=FILE_ONLY)
    print(f"Error: {message}", file=sys.stderr)
