"""Progress display: a live rich bar on a terminal, periodic plain log lines elsewhere.

SLURM logs and CI output are not terminals; there a live bar would write thousands of
control sequences, so the plain mode logs one line per epoch and, within long epochs, at
most one line every ``interval`` seconds. On a terminal the bar is the display: the
per-epoch lines go to ``stagetrain.log`` only (as they do with ``progress=off``).
"""

from __future__ import annotations

import logging
import sys
import time

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


class Reporter:
    def __init__(self, mode: str, interval: float = 30.0):
        self.mode = resolve_mode(mode)
        self.interval = interval
        self._last = time.monotonic()
        self._bar: Progress | None = None
        self._task = None
        self.console = make_console()
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

    def step(self, text: str) -> None:
        if self.mode == "rich" and self._bar is not None:
            self._bar.update(self._task, advance=1, status=text)
        elif self.mode == "plain" and time.monotonic() - self._last > self.interval:
            self._last = time.monotonic()
            log.info("  %s", text)

    def epoch_end(self, text: str) -> None:
        self._last = time.monotonic()
        if self._bar is not None:  # drawn at least once per epoch, however short (auto-refresh is timed)
            self._bar.refresh()
        log.info("%s", text, extra=self._epoch_extra)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
