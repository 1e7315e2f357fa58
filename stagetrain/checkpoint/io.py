"""Checkpoint files: atomic writes, the content digest, and safe loading.

A checkpoint never holds a pickled object of ours (no DictConfig, no module): it loads
with ``torch.load(weights_only=True)``, which refuses anything that could execute code.

Every checkpoint carries a SHA-256 of its content (``sha256``: tensor bytes, shapes,
dtypes and every other value, in key order). torch's zip container has no checksum of its
own that ``torch.load`` verifies: a flipped bit inside tensor data loads silently as a
different number. With the digest, any change to what the file holds is reported as
corruption instead of being trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from stagetrain.checkpoint.schema import CONFIG_KEY, REQUIRED
from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError

log = logging.getLogger("stagetrain")

FORMAT = "stagetrain-checkpoint"
FORMAT_VERSION = 2  # 2: adds the sha256 content digest; version 1 files (no digest) still load
READABLE_VERSIONS = (1, 2)
# config keys that make a run what it is: a checkpoint in a run directory must agree on them
IDENTITY_KEYS = ("seed", "dataset", "model", "strategy", "train", "optim", "sched")
NOT_IDENTITY = {"dataset.root", "dataset.download"}
# files that exist at once in checkpoints/: last, last-prev, best and a temp file being written
CHECKPOINT_COPIES = 4


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_prefix(name: str) -> str:
    """Temp-file prefix naming the writer (host, pid), so a resume can tell a dead writer's
    leftovers from a live one's (see ``RunDir.remove_stale_temp_files``)."""
    return f".{name}.{socket.gethostname()}.{os.getpid()}."


def free_space(folder: Path) -> str:
    """Free space on ``folder``'s filesystem, for error messages ("1.2 MiB free")."""
    try:
        return f"{_human(shutil.disk_usage(folder).free)} free"
    except OSError:
        return "free space unknown"


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def write_error(path: Path, what: str, e: OSError) -> StagetrainError:
    """The user's message for a failed write (a full disk, a read-only or vanished folder)."""
    import errno

    fix = {errno.ENOSPC: "free some disk space (or point hydra.run.dir elsewhere)",
           errno.EDQUOT: "free some of your disk quota (or point hydra.run.dir elsewhere)",
           errno.EROFS: "the file system is read-only: point hydra.run.dir at a writable one",
           errno.EACCES: "you may not write there: point hydra.run.dir at a writable directory",
           errno.ENOENT: "its folder vanished (removed while the run was writing?): check who removed it",
           }.get(e.errno, "fix the cause above")
    return StagetrainError(
        f"Could not write {what} {path}: {e.strerror or e} ({free_space(path.parent)} on that "
        f"filesystem). The previous file is unchanged and no temp file is left; {fix}, then "
        "continue with resume=auto."
    )


def atomic_write(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then rename over ``path``.

    With ``keep_previous`` the old file is first renamed there, so one good copy always
    exists even if the process dies between the two renames. On any error (a full disk)
    the temp file is removed and the old file is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def digest(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content, ``sha256`` itself left out (see the module doc)."""
    h = hashlib.sha256()

    def walk(obj: Any, key: str) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            h.update(f"{key}\0tensor\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes, not copied
        elif isinstance(obj, dict):
            keys = sorted((k for k in obj if not (key == "" and k == "sha256")), key=repr)
            h.update(f"{key}\0dict\0{len(keys)}\0".encode())
            for k in keys:
                walk(obj[k], f"{key}/{k!r}")
        elif isinstance(obj, list | tuple):
            h.update(f"{key}\0{type(obj).__name__}\0{len(obj)}\0".encode())
            for i, v in enumerate(obj):
                walk(v, f"{key}/{i}")
        else:
            h.update(f"{key}\0{type(obj).__name__}\0{obj!r}\0".encode())

    walk(state, "")
    return h.hexdigest()


def save(state: dict[str, Any], path: Path, keep_previous: Path | None = None) -> None:
    """Write a checkpoint atomically, with format marker, version and content digest added."""
    state = {"format": FORMAT, "version": FORMAT_VERSION, **state}
    buf = io.BytesIO()
    torch.save({**state, "sha256": digest(state)}, buf)
    try:
        atomic_write(path, buf.getvalue(), keep_previous)
    except OSError as e:
        raise write_error(Path(path), "checkpoint", e) from None


def _torch_reason(e: Exception) -> str:
    """The informative line of a torch.load error (its first line is often boilerplate)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "Unsupported" in ln or "unsupported" in ln:
            return ln[:200]
    boiler = ("Weights only load failed", "Re-running", "Check the documentation", "Please file an issue")
    for ln in lines:
        if not ln.startswith(boiler):
            return f"{type(e).__name__}: {ln[:200]}"
    return type(e).__name__


def load(path: Path) -> dict[str, Any]:
    """Load and check a stagetrain checkpoint; raise a StagetrainError saying what is wrong.

    Checked: it is a readable torch file that asks to run no code, carries our format
    marker and a version we read, is complete, matches its content digest, and (when it
    lies in a run directory's checkpoints/) belongs to that run.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise StagetrainError(f"Checkpoint {path} does not exist.")
    data = userfile.read_bytes(path, "checkpoint", "source")  # a regular file of bounded size, or refused
    if not data:
        raise StagetrainError(f"Checkpoint {path} is empty (0 bytes): it was not written completely.")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, corrupt or unsafe files
        reason = _torch_reason(e)
        if "GLOBAL" in reason:
            raise StagetrainError(
                f"Checkpoint {path} was refused: it asks to import and call code ({reason}), which a "
                "stagetrain checkpoint never does; it may be malicious. Nothing was executed from it."
            ) from None
        raise StagetrainError(
            f"Checkpoint {path} cannot be read: it is truncated, corrupt, or not a stagetrain "
            f"checkpoint (torch.load with weights_only=True said: {reason}). Nothing was "
            "executed from it."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StagetrainError(
            f"{path} is not a stagetrain checkpoint (no '{FORMAT}' marker). Give a run "
            "directory or a checkpoint written by stagetrain."
        )
    if state.get("version") not in READABLE_VERSIONS:
        raise StagetrainError(
            f"Checkpoint {path} has format version {state.get('version')!r}; this stagetrain "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}."
        )
    missing = [k for k in ("format", "version", *REQUIRED) + (("sha256",) if state["version"] >= 2 else ())
               if k not in state]
    if missing:
        raise StagetrainError(f"Checkpoint {path} is incomplete: it lacks {', '.join(missing)}.")
    if "sha256" in state and digest(state) != state["sha256"]:
        raise StagetrainError(
            f"Checkpoint {path} is corrupt: its content does not match the SHA-256 digest stored "
            "with it (a flipped bit or a damaged copy). Do not train on it."
        )
    _check_belongs_to_run(path, state)
    return state


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_leaves(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def _check_belongs_to_run(path: Path, state: dict[str, Any]) -> None:
    """A checkpoint inside ``<run>/checkpoints/`` must have been written by that run."""
    run_json = path.parent.parent / "run.json"
    if path.parent.name != "checkpoints" or not run_json.is_file():
        return
    try:
        run_cfg = json.loads(userfile.read_bytes(run_json, "run.json", "record")).get("config") or {}
        ckpt_cfg = yaml.safe_load(state[CONFIG_KEY]) or {}
    except (OSError, ValueError, yaml.YAMLError, StagetrainError):
        return  # run.json being rewritten or not ours to judge: the other checks stand
    ours = _leaves({k: run_cfg.get(k) for k in IDENTITY_KEYS if k in run_cfg})
    theirs = _leaves({k: ckpt_cfg.get(k) for k in IDENTITY_KEYS if k in ckpt_cfg})
    differ = sorted(k for k in ours.keys() & theirs.keys()
                    if k not in NOT_IDENTITY and ours[k] != theirs[k])
    if differ:
        shown = ", ".join(f"{k} ({theirs[k]!r} in the checkpoint, {ours[k]!r} in run.json)" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        raise StagetrainError(
            f"Checkpoint {path} does not belong to the run in {run_json.parent}: it was written "
            f"with another configuration or architecture ({shown}{more}). It was not loaded."
        )


def estimated_size(n_params: int, optimizer: str, momentum: float = 0.0) -> int:
    """Bytes of a mid-stage checkpoint: fp32 parameters plus the optimizer's per-parameter state."""
    state_factor = {"adam": 2, "adamw": 2, "sgd": 1 if momentum else 0}.get(optimizer, 2)
    return n_params * (1 + state_factor) * 4


def preflight_disk(folder: Path, n_params: int, optim: Any, stages: int) -> str | None:
    """Warn (and return the warning) when ``folder`` has room for fewer checkpoints than a run
    keeps at once: last, last-prev, best, a temp file and one per stage."""
    size = estimated_size(n_params, optim.name, getattr(optim, "momentum", 0.0))
    need = size * (CHECKPOINT_COPIES + stages)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need:
        return None
    message = (f"Low disk space for {folder}: {_human(free)} free, but this run keeps up to "
               f"{CHECKPOINT_COPIES + stages} checkpoints of about {_human(size)} each "
               f"({_human(need)}). A checkpoint write may fail with a full disk.")
    log.warning("%s", message)
    return message
