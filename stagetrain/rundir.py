"""The run directory: run.json (rewritten atomically), metrics.jsonl (append-only), paths.

Layout (the user contract, see the README):

    <run>/.hydra/ run.json metrics.jsonl stagetrain.log model.safetensors
          checkpoints/{last.pt, last-prev.pt, best.pt, stage-<k>-<name>.pt}  plots/
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from stagetrain.checkpoint import atomic_write

HYDRA_FILES = {".hydra", "stagetrain.log"}


def new_run_dir_name(strategy: str) -> str:
    """outputs/<date>/<time>_<strategy>_<random>: two runs in the same second never collide."""
    now = datetime.now()
    return f"outputs/{now:%Y-%m-%d}/{now:%H-%M-%S}_{strategy}_{secrets.token_hex(3)}"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.run_json = self.path / "run.json"
        self.metrics = self.path / "metrics.jsonl"
        self.last = self.checkpoints / "last.pt"
        self.last_prev = self.checkpoints / "last-prev.pt"
        self.best = self.checkpoints / "best.pt"
        self.safetensors = self.path / "model.safetensors"

    def stage_checkpoint(self, k: int, name: str) -> Path:
        return self.checkpoints / f"stage-{k + 1}-{name}.pt"

    def has_run(self) -> bool:
        return self.run_json.exists()

    def read_run_json(self) -> dict[str, Any]:
        return json.loads(self.run_json.read_text())

    def write_run_json(self, info: dict[str, Any]) -> None:
        atomic_write(self.run_json, (json.dumps(info, indent=2, default=str) + "\n").encode())

    def resume_candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first: last, its predecessor, stage ends."""
        stages = sorted(self.checkpoints.glob("stage-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [p for p in (self.last, self.last_prev, *stages) if p.exists()]

    def remove_if_unused(self) -> None:
        """Delete a directory Hydra made for a run that never started (bad input, dry run).

        Only Hydra's own files may be in it; anything else means it is not ours to delete.
        """
        if not self.path.is_dir() or self.has_run():
            return
        if {p.name for p in self.path.iterdir()} - HYDRA_FILES:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for parent in self.path.resolve().parents:  # outputs/<date>/ if that run made them
            if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
                break
            parent.rmdir()


class MetricsLog:
    """Append-only JSON-lines log that survives resume without duplicating or losing lines.

    A checkpoint records how many lines existed when it was written. A resumed run replays
    deterministically from there, so the first ``existing - recorded`` events it produces
    are already in the file: they are counted off instead of written again.
    """

    def __init__(self, path: Path, recorded_lines: int | None = None):
        self.path = Path(path)
        self._repair_partial_line()
        self.lines = self._count()
        self.skip = 0 if recorded_lines is None else max(0, self.lines - recorded_lines)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _count(self) -> int:
        if not self.path.exists():
            return 0
        with open(self.path, "rb") as f:
            return sum(1 for _ in f)

    def _repair_partial_line(self) -> None:
        """Drop a trailing half-written line (a kill mid-write); it is always replayed."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    @property
    def position(self) -> int:
        """Events logged so far by this run, replayed ones included (what checkpoints record)."""
        return self.lines - self.skip

    def log(self, event: dict[str, Any]) -> None:
        if self.skip > 0:
            self.skip -= 1
            return
        event = {**event, "wall": round(time.time(), 3)}
        os.write(self._fd, (json.dumps(event, default=float) + "\n").encode())
        self.lines += 1

    def close(self) -> None:
        os.close(self._fd)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All events of a metrics.jsonl; a half-written last line (a run being written) is left out."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    events = []
    for i, line in enumerate(lines):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise
    return events
