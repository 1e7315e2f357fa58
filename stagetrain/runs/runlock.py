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
import re
from pathlib import Path

from stagetrain.core.errors import StagetrainError

_held: dict[str, int] = {}  # identity -> open descriptor holding its lock
_fork_hook = False  # os.register_at_fork done (once per process)
_refused: set[str] = set()  # identities another process held when this one asked
_created: set[str] = set()  # directories ``hold`` created (removed again when nothing ran in them)
MIN_FREE = 1024**2  # a run writes .hydra/, its log, run.json and checkpoints: refused with less free
# kernel and device file systems: what is written there is not stored (or changes the system)
PSEUDO_FS = {"proc": "the kernel's process information", "sysfs": "the kernel's device and driver settings",
             "devtmpfs": "the device files", "devpts": "the terminal devices", "cgroup": "control groups",
             "cgroup2": "control groups", "debugfs": "kernel debugging", "tracefs": "kernel tracing",
             "securityfs": "kernel security modules", "configfs": "kernel objects", "pstore": "crash records",
             "bpf": "BPF objects", "mqueue": "message queues", "efivarfs": "firmware variables",
             "binfmt_misc": "executable formats", "fusectl": "FUSE control", "nsfs": "namespaces"}


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
    check_place(real, what)
    existed = real.is_dir()
    try:
        real.mkdir(parents=True, exist_ok=True)
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise fs_error(real, f"create the {what}", e) from None
    if not existed:
        _created.add(str(real))
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


def created_here(path: str | os.PathLike) -> bool:
    """Whether ``hold`` of this command created the directory ``path`` (so it may remove it)."""
    try:
        return str(identity(path)) in _created
    except StagetrainError:
        return False


def release_all() -> None:
    """Give up every lock (a new command in this process: the previous one has ended)."""
    _refused.clear()
    _created.clear()
    while _held:
        os.close(_held.popitem()[1])


def nearest_existing(target: Path) -> Path:
    """``target`` or its nearest ancestor that exists."""
    return next((p for p in [target, *target.parents] if os.path.lexists(p)), Path("/"))


def _fs_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (Linux: /proc/self/mountinfo), or None."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:  # the kernel's, not the user's
            mounts = [line.split() for line in f]
    except OSError:
        return None
    real, best, kind = os.path.realpath(path), "", None
    for fields in mounts:
        if "-" not in fields or len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[fields.index("-") + 1]
    return kind


def check_place(path: str | os.PathLike, what: str = "run directory", setting: str = "") -> None:
    """Refuse a directory on a kernel or device file system (/proc, /sys, /dev: nothing
    written there is stored) or on a disk with less than ``MIN_FREE`` free, before anything is
    written there."""
    target = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    if os.path.lexists(target) and not target.is_dir():
        return  # a file in the way: creating the directory says so
    verb = "use" if target.is_dir() else "create"
    named = f"Could not {verb} the {what} {target}{f' ({setting}={path})' if setting else ''}"
    kind = _fs_type(nearest_existing(target))
    if kind in PSEUDO_FS:
        raise StagetrainError(f"{named}: it is on the {kind} file system ({PSEUDO_FS[kind]}), not on a disk: "
                              "nothing written there is kept, and writing may change the system. Use a folder "
                              f"of yours, e.g. {setting or 'hydra.run.dir'}=outputs/my_run.")
    try:
        st = os.statvfs(nearest_existing(target))
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if st.f_blocks and free < MIN_FREE:
        raise StagetrainError(f"{named}: the disk holding it has {free // 1024} KB free, less "
                              f"than the {MIN_FREE // 1024**2} MB a run needs for its config, log, run.json and "
                              "checkpoints; free some disk space or use another directory.")


def check_writable(path: str | os.PathLike, what: str = "run directory") -> None:
    """Refuse an existing directory this process may not write into (a read-only mount, no
    permission): a resumed run rewrites run.json, its log and checkpoints there."""
    real = Path(path)
    if os.access(real, os.W_OK | os.X_OK):
        return
    cause = "is on a read-only file system" if os.statvfs(real).f_flag & os.ST_RDONLY else "may not be written by you"
    raise StagetrainError(f"The {what} {real} {cause}: continuing its run (or recording that it is complete) "
                          "writes run.json, checkpoints and stagetrain.log there. Copy it to a writable place "
                          f"(cp -r {real} <new dir>) and resume the copy; nothing was written.")


def check_creatable(path: str | os.PathLike, what: str = "run directory") -> None:
    """Refuse, without writing anything, a directory that cannot be created: the nearest
    existing ancestor must be a directory this process may write to."""
    target = Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
    check_place(target, what)
    parent = nearest_existing(target)
    if not parent.is_dir():
        e = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        raise fs_error(target, f"create the {what}", e)
    if not os.access(parent, os.W_OK | os.X_OK):
        ro = os.statvfs(parent).f_flag & os.ST_RDONLY
        code = errno.EROFS if ro else errno.EACCES
        raise fs_error(target, f"create the {what} (in {parent})", OSError(code, os.strerror(code)))
