"""Progress display: a live rich bar on a terminal, periodic plain log lines elsewhere.

SLURM logs and CI output are not terminals; there a live bar would write thousands of
control sequences, so the plain mode logs one line per epoch and, within long epochs, at
most one line every ``interval`` seconds. On a terminal the bar is the display: the
per-epoch lines go to ``stagetrain.log`` only (as they do with ``progress=off``).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

log = logging.getLogger("stagetrain")
FILE_ONLY = {"file_only": True}  # extra= of a log record the console handlers leave out


class SkipFileOnly(logging.Filter):
    """On a console handler: drop the records logged with ``extra=FILE_ONLY``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, RichHandler) or (
        type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr))


def keep_file_only_off_the_console() -> None:
    """Add the SkipFileOnly filter to every console handler of the root logger (once)."""
    for handler in logging.getLogger().handlers:
        if _is_console(handler) and not any(isinstance(f, SkipFileOnly) for f in handler.filters):
            handler.addFilter(SkipFileOnly())


def make_console() -> Console:
    """A rich console; off a terminal (logs, pipes) it is wide enough not to wrap tables."""
    return Console() if sys.stdout.isatty() else Console(width=160, soft_wrap=True)


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "rich" if sys.stdout.isatty() else "plain"
    return mode


def running_loss(sums: list[Any] | None) -> float | None:
    """The epoch's mean training loss so far from the engine's epoch sums (loss sum, correct,
    samples); reading it synchronises a GPU, so the bar reads it a few times a second at most."""
    if not sums or not float(sums[2]):
        return None
    return float(sums[0]) / float(sums[2])


class Reporter:
    """The live bar shows the stage (its description), steps, the epoch, the epoch's running
    training loss and the last validation metric (``val/acc``, else ``val/loss``)."""

    LOSS_EVERY = 0.5  # seconds between two reads of the running loss

    def __init__(self, mode: str, interval: float = 30.0, console: Console | None = None):
        self.mode = resolve_mode(mode)
        self.interval = interval
        self._last = time.monotonic()
        self._bar: Progress | None = None
        self._task = None
        self._loss_at, self._loss, self._val = -math.inf, "", ""
        self.console = console or make_console()
        if self.mode == "rich":
            self._route_logging_through_rich()
        keep_file_only_off_the_console()
        # the per-epoch lines: on stdout only when it is not a terminal (plain mode)
        self._epoch_extra = None if self.mode == "plain" else FILE_ONLY

    def _route_logging_through_rich(self) -> None:
        """Console log lines go through rich so they print above the live bar, not over it."""
        root = logging.getLogger()
        for handler in list(root.handlers):
            if type(handler) is logging.StreamHandler and handler.stream in (sys.stdout, sys.stderr):
                root.removeHandler(handler)
        handler = RichHandler(console=self.console, show_path=False, markup=False)
        handler.addFilter(SkipFileOnly())
        root.addHandler(handler)

    def stage_start(self, label: str, total_steps: int, done_steps: int = 0) -> None:
        log.info("%s", label, extra=self._epoch_extra)
        if self.mode == "rich":
            if self._bar is None:
                self._bar = Progress(
                    TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                    console=self.console, transient=True,
                )
                self._bar.start()
            if self._task is not None:
                self._bar.remove_task(self._task)
            self._task = self._bar.add_task(label, total=total_steps, completed=done_steps, status="")
            self._loss_at, self._loss, self._val = -math.inf, "", ""

    def step(self, text: str, sums: list[Any] | None = None) -> None:
        """One optimizer step; ``sums``: the engine's epoch sums, for the running loss."""
        if self.mode == "rich" and self._bar is not None:
            now = time.monotonic()
            if sums is not None and now - self._loss_at >= self.LOSS_EVERY:
                self._loss_at, loss = now, running_loss(sums)
                self._loss = "" if loss is None else f"loss {loss:.4g}"
            status = "  ".join(t for t in (text, self._loss, self._val) if t)
            self._bar.update(self._task, advance=1, status=status)
        elif self.mode == "plain" and time.monotonic() - self._last > self.interval:
            self._last = time.monotonic()
            loss = running_loss(sums)
            log.info("  %s%s", text, "" if loss is None else f"  loss {loss:.4g}")

    def epoch_end(self, text: str, metrics: dict[str, float] | None = None) -> None:
        """``metrics``: the epoch's ``train/...`` and ``val/...`` values; the bar keeps the last
        validation accuracy (or loss) until the next epoch ends."""
        self._last = time.monotonic()
        name = next((m for m in ("val/acc", "val/loss") if m in (metrics or {})), None)
        if name is not None:
            self._val = f"{name} {metrics[name]:.4g}"
        if self._bar is not None:  # drawn at least once per epoch, however short (auto-refresh is timed)
            self._bar.refresh()
        log.info("%s", text, extra=self._epoch_extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
