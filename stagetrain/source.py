"""Reading a transfer source: a run directory, a checkpoint or a model.safetensors file.

The source is only ever read (never opened for writing); its SHA-256 goes into run.json.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stagetrain import checkpoint as ckpt
from stagetrain.checkpoint.schema import weights
from stagetrain.errors import StagetrainError


@dataclass
class Source:
    path: Path
    sha256: str
    arch: dict[str, Any]
    state: dict[str, torch.Tensor]


def _resolve(path: Path, which: str) -> Path:
    """The file a run directory's ``which`` (best | last | stage-<k>) refers to."""
    folder = path / "checkpoints"
    if which in ("best", "last"):
        file = folder / f"{which}.pt"
        if which == "best" and not file.exists():  # runs without a full-model stage have no best
            file = folder / "last.pt"
        if file.exists():
            return file
    elif which.startswith("stage-"):
        matches = sorted(folder.glob(f"{which}-*.pt"))
        if matches:
            return matches[0]
    available = ", ".join(sorted(p.stem for p in folder.glob("*.pt"))) or "none"
    raise StagetrainError(
        f"strategy.source_checkpoint={which}: {path} has no such checkpoint (it has: {available}). "
        "Use best, last or stage-<k>.")


def load_source(source: str, which: str = "best") -> Source:
    path = Path(source).expanduser()
    if not path.exists():
        raise StagetrainError(
            f"strategy.source={source} does not exist. Give a stagetrain run directory, a checkpoint "
            "(.pt) or a model.safetensors file.")
    if path.is_dir():
        if not (path / "run.json").exists():
            raise StagetrainError(f"strategy.source={source} is a folder but not a stagetrain run directory (no run.json).")
        path = _resolve(path, which)
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
            arch = json.loads(meta["arch"])
            state = load(data)
        except Exception as e:
            raise StagetrainError(
                f"strategy.source={path} is not a stagetrain model.safetensors (no readable 'arch' metadata: {e}).") from None
        return Source(path, digest, arch, state)
    arch, model = weights(ckpt.load(path))
    return Source(path, digest, arch, model)
