"""Checkpoints: plain dicts of tensors and primitives, written atomically, read safely.

A checkpoint never holds a pickled object of ours (no DictConfig, no module): it loads
with ``torch.load(weights_only=True)``, which refuses anything that could execute code.
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stagetrain.errors import StagetrainError

FORMAT = "stagetrain-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "version", "arch", "model", "position", "config_yaml")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, keep_previous: Path | None = None) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then rename over ``path``.

    With ``keep_previous`` the old file is first renamed there, so one good copy always
    exists even if the process dies between the two renames. On any error (a full disk)
    the temp file is removed and the old file is left as it was.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def save(state: dict[str, Any], path: Path, keep_previous: Path | None = None) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write(path, buf.getvalue(), keep_previous)
    except OSError as e:
        raise StagetrainError(
            f"Could not write checkpoint {path}: {e.strerror or e}. The previous checkpoint "
            "is unchanged; free some disk space (or point hydra.run.dir elsewhere) and "
            "continue with resume=auto."
        ) from None


def load(path: Path) -> dict[str, Any]:
    """Load and check a stagetrain checkpoint; raise a StagetrainError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise StagetrainError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise StagetrainError(f"Checkpoint {path} is empty (0 bytes): it was not written completely.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, corrupt or unsafe files
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
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
    if state.get("version") != FORMAT_VERSION:
        raise StagetrainError(
            f"Checkpoint {path} has format version {state.get('version')!r}; this stagetrain "
            f"reads version {FORMAT_VERSION}."
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise StagetrainError(f"Checkpoint {path} is incomplete: it lacks {', '.join(missing)}.")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG the run draws from, as tensors and lists (safe to load)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
