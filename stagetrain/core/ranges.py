"""Ranges and choices of settings that the schema's types cannot express, as tables.

``check_values`` walks the whole typed config once: every float anywhere (a top-level key,
a strategy option, an element of a list) must be finite, so ``nan``/``inf`` are refused
wherever a float is accepted. ``RANGES`` then bounds the settings whose meaning has a
range (a count, a decay factor, a momentum, a seed, a probability) and ``CHOICES`` names the
valid words of the run-wide string settings. Each refusal is one paragraph naming the key,
the value and what is valid. No torch here: the command-line check runs it before anything
is imported or written. A plug checks its own options in its ``validate``.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.schema import AUGMENTS, OPTIMIZERS, SCHEDULES, SHARDS, STORAGES

SEED_MAX = 2**32 - 1  # numpy and torch seeds are 32-bit (torch takes 64, numpy does not)
MAX_CLASSES = 100_000
MAX_UNITS = 1_000_000  # widths, channels, d_model: more than any CPU or GPU run here can hold

MAX_SAMPLES = 100_000_000
# upper bounds of sizes, by key prefix: checked before anything is built or allocated
SIZE_CAPS = (("model.kwargs", 2**62), ("model.", MAX_UNITS), ("strategy.widths", MAX_UNITS),
             ("strategy.depths", 1000), ("dataset.shape", MAX_UNITS), ("dataset.n_", MAX_SAMPLES),
             ("dataset.max_train", MAX_SAMPLES))
# key -> (low, high, low inclusive, high inclusive); None: unbounded on that side
RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    "seed": (0, SEED_MAX, True, True),
    "train.epochs": (0, None, False, True),
    "train.batch_size": (0, None, False, True),
    "train.eval_batch_size": (0, None, False, True),
    "train.patience": (0, None, False, True),
    "optim.weight_decay": (0, None, True, True),
    "sched.step_size": (0, None, False, True),
    "sched.warmup_epochs": (0, None, True, True),
    "checkpoint.every_steps": (0, None, True, True),
    "device.threads": (0, None, True, True),
    "dataset.labeled_fraction": (0, 1, False, True),
    "dataset.val_fraction": (0, 1, False, False),
    "dataset.max_train": (0, None, False, True),
    "dataset.memory_budget": (0, None, False, True),
    "dataset.workers": (0, None, True, True),
    "optim.momentum": (0, 1, True, False),
    "optim.lr": (0, None, False, True),
    "sched.gamma": (0, 1, False, True),
    "dataset.noise": (0, None, True, True),
    "dataset.num_classes": (2, MAX_CLASSES, True, True),
    "model.dropout": (0, 1, True, False),
    "model.mlp_ratio": (0, None, False, True),
    "strategy.noise": (0, None, True, True),  # grow's copy noise; layerwise checks its own levels
    "strategy.lr_after_growth": (0, None, False, True),
    "strategy.lora.alpha": (0, None, False, True),
    "strategy.pretrain.noise": (0, 1, True, False),
    "strategy.ft_lr_factor": (0, None, False, True),
    "strategy.lr_decay": (0, 1, False, True),
    "strategy.rbm_lr": (0, None, False, True),
    "strategy.cache_max_bytes": (0, None, True, True),
    "logger.every_steps": (0, None, True, True),
}
# key -> the valid values of a run-wide string setting (a plug's own are checked by its validate)
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.storage": tuple(STORAGES),
    "dataset.augment": tuple(AUGMENTS),
    "train.on_nonfinite": ("stop", "skip_batch"),
    "optim.name": tuple(OPTIMIZERS),
    "sched.name": tuple(SCHEDULES),
    "device.name": ("auto", "cpu", "cuda", "mps"),
    "device.precision": ("fp32", "bf16"),
    "device.shard": tuple(SHARDS),
    "progress": ("auto", "rich", "plain", "off"),
}


def _walk(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a dataclass tree; list elements as key[i]."""
    if is_dataclass(node):
        out = []
        for f in fields(node):
            out += _walk(getattr(node, f.name), f"{prefix}{f.name}.")
        return out
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _walk(v, f"{prefix}{k}.")]
    if isinstance(node, list | tuple):
        key = prefix.rstrip(".")
        return [kv for i, v in enumerate(node) for kv in _walk(v, f"{key}[{i}].")]
    return [(prefix.rstrip("."), node)]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _bounds_text(low: float | None, high: float | None, low_in: bool, high_in: bool) -> str:
    if high is None:
        return f"{'>=' if low_in else '>'} {_num(low)}"
    if low is None:
        return f"{'<=' if high_in else '<'} {_num(high)}"
    return f"in {'[' if low_in else '('}{_num(low)}, {_num(high)}{']' if high_in else ')'}"


def check_values(cfg: Any) -> None:
    """Refuse a non-finite float anywhere in ``cfg``, a value outside ``RANGES`` and a word
    not in ``CHOICES``."""
    leaves = _walk(cfg)
    for key, value in leaves:
        if isinstance(value, float) and not math.isfinite(value):
            raise StagetrainError(f"{key}={value} is not a number stagetrain can use: every numeric setting "
                                  "must be finite (no nan or inf).")
    values = dict(leaves)
    for key, (low, high, low_in, high_in) in RANGES.items():
        value = values.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        too_low = low is not None and (value < low if low_in else value <= low)
        too_high = high is not None and (value > high if high_in else value >= high)
        if too_low or too_high:
            raise StagetrainError(f"{key}={value} is out of range: it must be "
                                  f"{_bounds_text(low, high, low_in, high_in)}.")
    for key, value in leaves:
        if not isinstance(value, int) or isinstance(value, bool):
            continue
        cap = next((c for prefix, c in SIZE_CAPS if key.startswith(prefix)), 2**62)
        if abs(value) > cap:
            raise StagetrainError(f"{key}={value} is out of range: it must be at most {cap:,}"
                                  f"{' (a size of the model or the data)' if cap < 2**62 else ''}.")
    for key, options in CHOICES.items():
        if key in values:
            check_choice(key, values[key], options)
