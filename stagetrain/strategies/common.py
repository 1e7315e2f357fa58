"""Helpers every strategy uses to build its stages."""

from __future__ import annotations

from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.parts import LinearHead
from stagetrain.core.plan import Stage
from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.families import is_lm


def stage_from_cfg(cfg: Any, **fields: Any) -> Stage:
    """A stage with the run's optimizer settings; ``fields`` override them. With a language-
    model head (``model.head=lm``) a supervised stage through the head (or an auxiliary LM head) trains ``lm``."""
    defaults = {
        "optimizer": cfg.optim.name, "lr": float(cfg.optim.lr),
        "weight_decay": float(cfg.optim.weight_decay), "momentum": float(cfg.optim.momentum),
        "sched": cfg.sched.name,
    }
    stage = Stage(**{**defaults, **fields})
    if stage.objective == "supervised" and is_lm(cfg.model):
        if not stage.uses_head and (stage.helper or {}).get("kind") != "lm_head":  # an auxiliary LM head is fine
            raise StagetrainError(
                f"strategy={cfg.strategy.name} trains stage '{stage.name}' through an auxiliary classifier, which "
                "a language model (model.head=lm) has no use for. Language models train with strategy=scratch, "
                "grow or finetune from a source run (strategy.source=<run>, without strategy.pretrain).")
        stage.objective = "lm"
    return stage


# A head-only stage on frozen features solved by full-batch L-BFGS (engine/solver.py): this
# many steps of optim.LBFGS_ITERS iterations unless the strategy says otherwise (issue 17).
LBFGS_STEPS = 5


def head_probe_stage(cfg: Any, name: str, probe: str, steps: int, l2: float, lr: float, **fields: Any) -> Stage:
    """A stage that trains only the head on frozen blocks: ``probe=lbfgs`` solves it with
    full-batch L-BFGS (``steps`` steps, L2 penalty ``l2``), ``probe=gradient`` runs the run's
    optimizer at ``lr`` for ``steps`` epochs."""
    if probe == "lbfgs":
        return stage_from_cfg(cfg, name=name, epochs=max(1, steps), trainable=["head"], optimizer="lbfgs", lr=1.0,
                              sched="constant", weight_decay=float(l2), **fields)
    return stage_from_cfg(cfg, name=name, epochs=max(1, steps), trainable=["head"], lr=float(lr), **fields)


def all_groups(spec: ModelSpec | dict[str, Any]) -> list[str]:
    """Every trainable group of a model, input to output: its stem (if any), blocks and head."""
    arch = as_spec(spec)
    return (["stem"] if arch.stem is not None else []) + arch.block_names + ["head"]


def head_input_shape(spec: ModelSpec | dict[str, Any]) -> list[int]:
    """The input shape of an auxiliary head that computes what the model's head computes (so
    it can become the head): the flat vector a flatten + linear head reads, or the last
    block's output for a head that pools it first (e.g. resnet's pool_linear)."""
    arch = as_spec(spec)
    if isinstance(arch.head, LinearHead):
        return [arch.head.inp]
    return list(arch.blocks[-1].out_shape)
