"""Which directory a run is, and who may write it: one identity, one lock per directory.

A run directory is known by its *resolved real path* (``identity``): ``my runs/run``,
``./my runs/../my runs/run`` and a symlink to it are the same run. Every lock, refusal and
message uses that identity, so no spelling of a path can get around a lock.

The lock is ``flock`` on the directory itself, held by the process that writes the run (or
the sweep) until it ends; the kernel drops it when the process dies, also after kill -9.
A process asks once per directory (``hold``); asking again is a no-op. Sweeps lock their
sweep directory, and each job its job directory, so two launches never write one run.
No torch here: the command-line check imports this module.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from stagetrain.errors import StagetrainError

_held: dict[str, int] = {}  # identity -> open descriptor holding its lock
_fork_hook = False  # os.register_at_fork done (once per process)
_refused: set[str] = set()  # identities another process held when this one asked


class RunDirBusy(StagetrainError):
    """Another process holds the lock of this directory: nothing of it may be written."""


def identity(path: str | os.PathLike) -> Path:
    """The one name of ``path``: ``~`` expanded, absolute, symlinks and ``..`` resolved.

    Raises StagetrainError naming the path when it cannot be resolved (a symlink loop)."""
    raw = os.path.expanduser(os.fspath(path))
    try:
        return Path(raw).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise fs_error(raw, "resolve the run directory", e) from None


def fs_error(path: object, action: str, e: BaseException) -> StagetrainError:
    """One paragraph for a file-system failure: the path, what was tried, the cause, a hint."""
    cause = getattr(e, "strerror", None) or str(e) or type(e).__name__
    code = getattr(e, "errno", None)
    hint = {
        errno.ENOSPC: "free some disk space or use another directory",
        errno.EROFS: "the file system is read-only: use a writable directory (hydra.run.dir=...)",
        errno.EACCES: "you may not write there: use a writable directory (hydra.run.dir=...)",
        errno.EPERM: "you may not write there: use a writable directory (hydra.run.dir=...)",
        errno.ENOTDIR: "a part of that path is a file, not a directory: choose another path",
        errno.EEXIST: "a file of that name is in the way: choose another path",
        errno.ELOOP: "a symbolic link in that path points back at itself: fix or remove the link",
        errno.ENAMETOOLONG: "use a shorter path",
    }.get(code, "check the path and the file system")
    if code is None and ("symbolic link" in str(e) or "Symlink loop" in str(e)):
        hint = "a symbolic link in that path points back at itself: fix or remove the link"
    return StagetrainError(f"Could not {action} {path}: {cause}; {hint}.")


def hold(path: str | os.PathLike, what: str = "run directory") -> bool:
    """Lock the directory ``path`` (created if missing) for this process; True when this
    call took the lock, False when this process held it already.

    Raises RunDirBusy when another process holds it, StagetrainError when the directory
    cannot be created or opened. On a file system without locks, nothing is held."""
    if os.environ.get("RANK", "0") != "0":
        return False  # torchrun: rank 0 writes the run directory and holds its lock
    real = identity(path)
    if str(real) in _held:
        return False
    try:
        real.mkdir(parents=True, exist_ok=True)
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise fs_error(real, f"create the {what}", e) from None
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            _refused.add(str(real))
            raise RunDirBusy(f"Another stagetrain process is using the {what} {real} right now; "
                             "wait for it to end, or use another directory.") from None
        return False  # a file system without locks: nothing more to check
    _held[str(real)] = fd
    _drop_in_forked_children()
    return True


def _drop_in_forked_children() -> None:
    """A forked child (a DataLoader worker) closes its copies of the locks, so a lock dies with
    the process that took it: workers outliving a kill -9 by a few seconds do not block resume."""
    global _fork_hook
    if not _fork_hook:
        os.register_at_fork(after_in_child=lambda: [os.close(_held.pop(k)) for k in list(_held)])
        _fork_hook = True


def was_refused(path: str | os.PathLike) -> bool:
    """Whether another process held ``path`` when this one asked (then nothing of it is ours)."""
    try:
        return str(identity(path)) in _refused
    except StagetrainError:
        return False


def release(path: str | os.PathLike) -> None:
    """Give up the lock of ``path`` (a finished sweep job); a no-op when not held."""
    fd = _held.pop(str(identity(path)), None)
    if fd is not None:
        os.close(fd)


def release_all() -> None:
    """Give up every lock (a new command in this process: the previous one has ended)."""
    _refused.clear()
    while _held:
        os.close(_held.popitem()[1])


def check_creatable(path: str | os.PathLike, what: str = "run directory") -> None:
    """Refuse, without writing anything, a directory that cannot be created: the nearest
    existing ancestor must be a directory this process may write to."""
    target = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    for parent in [target, *target.parents]:
        if not os.path.lexists(parent):
            continue
        if not parent.is_dir():
            e = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
            raise fs_error(target, f"create the {what}", e)
        if not os.access(parent, os.W_OK | os.X_OK):
            ro = os.statvfs(parent).f_flag & os.ST_RDONLY
            code = errno.EROFS if ro else errno.EACCES
            raise fs_error(target, f"create the {what} (in {parent})", OSError(code, os.strerror(code)))
        return
