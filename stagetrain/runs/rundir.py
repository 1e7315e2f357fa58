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
import socket
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from stagetrain import distributed
from stagetrain.checkpoint import atomic_write, write_error
from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError
from stagetrain.runread import read_events

HYDRA_FILES = {".hydra", "stagetrain.log"}
RESERVED: list[str] = []  # run directories this process created with reserve_run_dir


def _draw_run_dir_name(strategy: str) -> str:
    now = datetime.now()
    return f"outputs/{now:%Y-%m-%d}/{now:%H-%M-%S}_{strategy}_{secrets.token_hex(3)}"


def new_run_dir_name(strategy: str) -> str:
    """outputs/<date>/<time>_<strategy>_<random>: two runs in the same second never collide."""
    name = _draw_run_dir_name(strategy)
    return distributed.agree(name)  # under torchrun: rank 0's name, so all ranks share one directory


def reserve_run_dir(strategy: str) -> str:
    """A new run directory, created here with an exclusive mkdir: if another process took
    the same name (same second, same random part), a new name is drawn, so concurrent
    launches never share a directory. Under torchrun rank 0 creates it and every rank
    gets its name."""
    name = None
    if distributed.rank() == 0:
        while name is None:
            candidate = Path(_draw_run_dir_name(strategy))
            RESERVED.append(str(candidate))  # removed again if a signal ends the process before training
            candidate.parent.mkdir(parents=True, exist_ok=True)
            try:
                candidate.mkdir()
                name = str(candidate)
            except FileExistsError:  # another process's: never ours to remove
                RESERVED.pop()
                continue
    return distributed.agree(name)


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
        """run.json as a dict; StagetrainError naming the file when it cannot be read
        (truncated by a full disk, hand-edited, not a JSON object; a FIFO, a device or a file too
        large for a run record is not read: the gate, ``userfile``)."""
        try:
            info = json.loads(userfile.read_bytes(self.run_json, "", "record").decode("utf-8"))
        except StagetrainError as e:
            raise StagetrainError(
                f"Could not read the run record: {e} The run's status is unknown; move the directory aside, or restore "
                "run.json (its config is also in .hydra/config.yaml), then try again.") from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise StagetrainError(
                f"Could not read {self.run_json}: {e}. The run's status is unknown; move the "
                "directory aside, or restore run.json (its config is also in .hydra/config.yaml), "
                "then try again.") from None
        if not isinstance(info, dict):
            raise StagetrainError(f"Could not read {self.run_json}: it holds a JSON {type(info).__name__}, "
                                  "not a run record. Move the directory aside or restore run.json.")
        return info

    def write_run_json(self, info: dict[str, Any]) -> None:
        try:
            atomic_write(self.run_json, (json.dumps(info, indent=2, default=str) + "\n").encode())
        except OSError as e:
            raise write_error(self.run_json, "the run status", e) from None

    def resume_candidates(self) -> list[Path]:
        """Checkpoints to resume from, newest first: last, its predecessor, stage ends.

        Only a resuming run asks, so this is also where the temp files of writes that a
        kill interrupted are cleared away (``remove_stale_temp_files``).
        """
        self.remove_stale_temp_files()
        stages = sorted(self.checkpoints.glob("stage-*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        return [p for p in (self.last, self.last_prev, *stages) if p.exists()]

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete ``.<name>.<host>.<pid>.*.tmp`` files whose writer (on this host) is dead.

        A write killed before its rename leaves one behind; it is never read, only its
        space is lost. A live writer's file, or another host's, is left alone.
        """
        host = socket.gethostname()
        removed = []
        for folder in (self.path, self.checkpoints):
            for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
                parts = tmp.name.split(".")  # ['', name..., host..., pid, random, 'tmp']
                try:
                    pid = int(parts[-3])
                except (ValueError, IndexError):
                    continue
                if f".{host}.{pid}." not in tmp.name or _alive(pid):
                    continue
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
        return removed

    def remove_if_unused(self) -> None:
        """Delete a directory Hydra made for a run that never started (bad input, dry run).

        Only Hydra's own files may be in it; anything else means it is not ours to delete.
        Under torchrun only rank 0 deletes (the ranks share the directory).
        """
        if not distributed.is_main() or not self.path.is_dir() or self.has_run():
            return
        if {p.name for p in self.path.iterdir()} - HYDRA_FILES:
            return
        remove_tree_and_empty_parents(self.path)


def discard_reserved() -> None:
    """Remove what ``reserve_run_dir`` made in this process for runs that never started
    (a signal before training): the empty directory and the empty ``outputs/<date>/`` above."""
    while RESERVED:
        path = Path(RESERVED.pop())
        if path.is_dir():
            RunDir(path).remove_if_unused()
        elif path.parent.is_dir() and not any(path.parent.iterdir()):
            remove_tree_and_empty_parents(path.parent)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_tree_and_empty_parents(path: Path) -> None:
    """Delete ``path`` and then its parents below the cwd that it leaves empty (the
    outputs/<date>/ folders Hydra made for a run or sweep that never ran)."""
    resolved = Path(path).resolve()
    shutil.rmtree(resolved, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in resolved.parents:
        if parent == cwd or cwd not in parent.parents or any(parent.iterdir()):
            break
        try:
            parent.rmdir()
        except OSError:  # a mount point, or another process's: it stays
            break


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
        # no checkpoint (None): the run restarts from nothing and replays every line there is
        self.skip = max(0, self.lines - (recorded_lines or 0))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _count(self) -> int:
        if not os.path.lexists(self.path):
            return 0
        with userfile.open_file(self.path, "the metrics log", "record") as f:
            return sum(1 for _ in f)

    def _repair_partial_line(self) -> None:
        """Drop a trailing half-written line (a kill mid-write); it is always replayed. A
        metrics.jsonl that is not a regular file of a run record's size is refused (the gate)."""
        if not os.path.lexists(self.path):
            return
        data = userfile.read_bytes(self.path, "the metrics log", "record")
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    @property
    def position(self) -> int:
        """Events logged so far by this run, replayed ones included (what checkpoints record)."""
        return self.lines - self.skip

    def log(self, event: dict[str, Any]) -> bool:
        """Append ``event``; False when it was a replayed event already in the file."""
        if self.skip > 0:
            self.skip -= 1
            return False
        event = {**event, "wall": round(time.time(), 3)}
        try:
            os.write(self._fd, (json.dumps(event, default=float) + "\n").encode())
        except OSError as e:
            raise write_error(self.path, "the metrics log", e) from None
        self.lines += 1
        return True

    def close(self) -> None:
        os.close(self._fd)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All events of a metrics.jsonl; a half-written last line (a run being written) and
    lines that are not events (garbage a resumed run kept) are left out."""
    return read_events(path)[0]
