"""The one exception type a user should ever see: a short message, no traceback."""

from __future__ import annotations

import difflib
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import fields
from typing import Any


class StagetrainError(Exception):
    """A problem with the user's input or environment, phrased for the user.

    The CLI prints ``str(error)`` as one paragraph and exits non-zero; it never shows a
    traceback for these unless ``HYDRA_FULL_ERROR=1`` is set.
    """


def did_you_mean(value: str, options: Iterable[str]) -> str:
    """Return " Did you mean 'x'?" for the closest option, or an empty string."""
    match = difflib.get_close_matches(str(value), [str(o) for o in options], n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def check_choice(key: str, value: str, options: Iterable[str]) -> None:
    """Raise a StagetrainError naming ``key`` when ``value`` is not one of ``options``."""
    options = list(options)
    if value not in options:
        raise StagetrainError(
            f"{key}={value!r} is not valid: choose one of {', '.join(options)}."
            + did_you_mean(value, options)
        )


def check_positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    """Raise a StagetrainError naming ``key`` when ``value`` is not > 0 (or >= 0), or not finite."""
    if value is None:
        return
    bad = value < 0 if allow_zero else value <= 0
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise StagetrainError(f"{key}={value} is out of range: it must be {bound}.")


class StopRequested(Exception):
    """Raised after a signal-triggered checkpoint; the run is marked ``stopped``."""


def run_exists_error(path: object) -> StagetrainError:
    """A new run was asked for in a directory that already holds one."""
    return StagetrainError(
        f"The run directory {path} already holds a run. Add resume=auto to continue it, "
        "or leave hydra.run.dir at its default to start a new run directory.")


def no_run_error(resume: object) -> StagetrainError:
    """``resume=<dir>`` names a directory without a run."""
    return StagetrainError(f"resume={resume}: that directory holds no stagetrain run (no run.json). "
                           "Give a run directory, or use hydra.run.dir=<dir> resume=auto to start one there.")


_SIMPLE = {float: (int, float), int: (int,), str: (str,), bool: (bool,), dict: (dict,), list: (list,)}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` read from a file fits the simple annotation ``hint`` (float, int, str,
    bool, dict[...], list[...], X | None); other annotations are not checked."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_accepts(h, value) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    base = typing.get_origin(hint) or hint
    if base not in _SIMPLE:
        return True
    return isinstance(value, _SIMPLE[base]) and (base is bool or not isinstance(value, bool))


def check_types(record: type, values: dict[str, Any], what: str) -> None:
    """One paragraph when a value read from a file (run.json's plan) does not have the type the
    dataclass ``record`` declares for it."""
    hints = typing.get_type_hints(record)
    for f in fields(record):
        if f.name in values and not _accepts(hints[f.name], values[f.name]):
            raise StagetrainError(f"{what}: {f.name}={values[f.name]!r} is not a {hints[f.name]}, the type "
                                  f"{record.__name__}.{f.name} has. The plan was not written by stagetrain, or was altered.")
