"""Helpers every strategy uses to build its stages."""

from __future__ import annotations

from typing import Any

from stagetrain.plan import Stage


def stage_from_cfg(cfg: Any, **fields: Any) -> Stage:
    """A stage with the run's optimizer settings; ``fields`` override them."""
    defaults = {
        "optimizer": cfg.optim.name, "lr": float(cfg.optim.lr),
        "weight_decay": float(cfg.optim.weight_decay), "momentum": float(cfg.optim.momentum),
        "sched": cfg.sched.name,
    }
    return Stage(**{**defaults, **fields})


def head_input_shape(spec: dict[str, Any]) -> list[int]:
    """The input shape of an auxiliary head that can become the model's head: the head's flat
    input, or the [T, D] sequence a sequence head pools (its Linear then has the head's shape)."""
    last = spec["blocks"][-1]["out_shape"] if spec["blocks"] else []
    return list(last) if len(last) == 2 else [spec["head"]["in"]]


def all_groups(spec: dict[str, Any]) -> list[str]:
    """Every trainable group of a model, input to output: its stem (if any), blocks and head."""
    return (["stem"] if spec.get("stem") else []) + [b["name"] for b in spec["blocks"]] + ["head"]
