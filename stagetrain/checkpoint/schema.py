"""What a checkpoint holds: the only place its content keys are named.

A checkpoint is a plain dict of tensors and primitives (loadable with
``torch.load(weights_only=True)``): the architecture spec, model/helper/optimizer/
scheduler states, the position (stage, epoch, batch, global step), the run state (flat,
see ``engine.state``), every RNG, the resolved config as YAML, what trains and the LR
groups, and how many metrics lines were written. ``io`` adds ``format``, ``version`` and
the content digest around it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

CONFIG_KEY = "config_yaml"
REQUIRED = ("arch", "model", "position", CONFIG_KEY)  # present in every version


def snapshot(model: Any, helper: nn.Module | None, optimizer: torch.optim.Optimizer | None,
             scheduler: Any, stage: int, stage_name: str | None, run_state: dict[str, Any],
             config_yaml: str, trainable: list[str], metrics_lines: int) -> dict[str, Any]:
    """Everything needed to continue exactly from here. ``optimizer=None``: the stage at
    index ``stage`` has not been entered (a stage-end checkpoint)."""
    groups = optimizer.param_groups if optimizer is not None else []
    return {
        "arch": model.spec,
        "model": model.state_dict(),
        "helper": helper.state_dict() if optimizer is not None and helper is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if optimizer is not None else None,
        "position": {"stage": stage, "stage_name": stage_name, "epoch": run_state["epoch"],
                     "batch": run_state["batch"], "global_step": run_state["global_step"]},
        "run_state": run_state,
        "rng": rng_state(),
        CONFIG_KEY: config_yaml,
        "trainable": list(trainable),
        "param_groups": [{"name": g.get("name"), "lr": g["lr"]} for g in groups],
        "metrics_lines": metrics_lines,
    }


def sharded_meta(arch: dict[str, Any], scheduler: Any, optimizer_groups: list[dict[str, Any]], stage: int,
                 stage_name: str | None, run_state: dict[str, Any], config_yaml: str, trainable: list[str],
                 metrics_lines: int, lr_groups: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``state.pt`` of a sharded checkpoint (``checkpoint.sharded``): the snapshot's keys, with
    the model, helper and optimizer tensors left to the DCP files (``model`` empty, ``helper``
    None); ``optimizer`` keeps the param groups of ``get_optimizer_state_dict`` (hyperparameters,
    parameter names)."""
    return {
        "arch": arch, "model": {}, "helper": None,
        "optimizer": {"param_groups": optimizer_groups}, "scheduler": scheduler.state_dict(),
        "position": {"stage": stage, "stage_name": stage_name, "epoch": run_state["epoch"],
                     "batch": run_state["batch"], "global_step": run_state["global_step"]},
        "run_state": run_state, "rng": rng_state(), CONFIG_KEY: config_yaml, "trainable": list(trainable),
        "param_groups": lr_groups, "metrics_lines": metrics_lines,
    }


@dataclass
class Restored:
    """A loaded checkpoint, by meaning."""

    arch: dict[str, Any]
    model: dict[str, torch.Tensor]
    helper: dict[str, torch.Tensor] | None
    optimizer: dict[str, Any] | None
    scheduler: dict[str, Any] | None
    position: dict[str, Any]
    run_state: dict[str, Any]
    rng: dict[str, Any]
    metrics_lines: int | None


def restore(state: dict[str, Any]) -> Restored:
    return Restored(state["arch"], state["model"], state.get("helper"), state.get("optimizer"),
                    state.get("scheduler"), state["position"], state["run_state"], state["rng"],
                    state.get("metrics_lines"))


def weights(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(architecture spec, model state dict) of a checkpoint, e.g. a fine-tuning source."""
    return state["arch"], state["model"]


def describe(state: dict[str, Any]) -> str:
    p = state["position"]
    return f"stage {p['stage'] + 1}, epoch {p['epoch']}, batch {p['batch']}"


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
