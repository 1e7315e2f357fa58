"""layerwise: greedy layer-wise pretraining, one stage per block, then fine-tuning.

Stage l trains block l alone on the (frozen, cacheable) output of blocks 1..l-1, through
a helper that exists only in that stage:

* supervised  -- an auxiliary classifier (strategy.aux_head, stagetrain/nn/auxheads.py: linear --
                 Linear, for CNNs global pooling [+ k plain convs], for sequences mean over
                 positions + LayerNorm + Linear; conv -- layerCNN's; mlp_sr -- DGL's); on language-model data
                 (model.head=lm) an auxiliary LM head (LayerNorm + Linear to the vocabulary, per
                 position) trained on the next tokens
* autoencoder -- a decoder (tied W^T or untied) reconstructing the block's input
* denoising   -- the same from masked input (level per layer), the target is clean
* rbm         -- the block as an RBM trained with CD-k (sigmoid MLP blocks)

Unsupervised objectives see every training input; supervised stages and the fine-tune
stage see only the ``dataset.labeled_fraction`` labelled subset.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.core.partbase import Block
from stagetrain.core.parts import Dense
from stagetrain.core.plan import Plan, Stage, auto_length
from stagetrain.core.schema import as_list
from stagetrain.core.spec import ModelSpec, as_spec
from stagetrain.models.registry import part_type
from stagetrain.nn.auxheads import DEFAULTS as AUX_DEFAULTS
from stagetrain.nn.objective_registry import objective_type
from stagetrain.nn.objectives import head_objective
from stagetrain.nn.stagehelpers import AuxHead, Decoder, Helper, LMHead, RBMVisible
from stagetrain.nn.stagehelpers import from_dict as helper_from_dict
from stagetrain.strategies.common import (
    all_groups,
    head_input_shape,
    head_probe_stage,
    stage_from_cfg,
)
from stagetrain.strategies.layerwise.config import Config


@dataclass
class GreedySettings:
    """What ``greedy_stages`` reads: layerwise's own options (``of(cfg.strategy)``), or
    another strategy's greedy stages (finetune's in-run autoencoder/denoising pretraining)
    built from its options; what it leaves out is layerwise's default."""

    objective: str = Config.objective
    epochs_per_layer: Any = Config.epochs_per_layer
    lr: float | None = Config.lr
    optimizer: str | None = Config.optimizer
    noise: Any = 0.0  # a masking level, or one per layer (denoising)
    tied: bool = Config.tied
    aux_head: Any = Config.aux_head
    aux_layers: int | None = Config.aux_layers
    aux_width: int | None = Config.aux_width
    aux_grid: int | None = Config.aux_grid
    cd_k: int = Config.cd_k
    rbm_lr: float = Config.rbm_lr
    cache: str = Config.cache
    auto: Any = None  # epochs_per_layer=auto: the plateau settings (None: plan.AUTO_DEFAULTS)

    @classmethod
    def of(cls, s: Any) -> GreedySettings:
        """The settings of a layerwise strategy config (every field by name)."""
        return cls(**{f.name: getattr(s, f.name) for f in fields(cls)})


def aux_head_spec(g: Any, block: Block, classes: int) -> AuxHead:
    """A supervised greedy stage's auxiliary classifier (stagetrain/nn/auxheads.py), its options
    resolved to the published defaults so the plan and run.json show what was built."""
    helper = {"kind": "aux_head", "in_shape": list(block.out_shape), "out": classes}
    kind = g.aux_head
    if kind in ("conv", "mlp_sr"):
        if len(block.out_shape) != 3:
            raise StagetrainError(
                f"strategy.aux_head={kind} builds a convolutional auxiliary head ({'3x3' if kind == 'conv' else '1x1'} "
                f"convs with BatchNorm, pooled to a grid), which reads feature maps [channels, height, width]; block "
                f"{block.name} (type {block.TAG!r}) outputs shape {list(block.out_shape)}. For MLP and "
                "Transformer blocks use strategy.aux_head=linear (a linear layer; sequences are averaged first).")
        options = {"layers": g.aux_layers, "width": g.aux_width, "grid": g.aux_grid}
        defaults = {**AUX_DEFAULTS[kind], "width": block.out_shape[0]}
        helper |= {"head": kind} | {k: int(defaults[k] if v is None else v) for k, v in options.items()}
        helper |= {k: v for k, v in AUX_DEFAULTS[kind].items() if k not in helper}
    elif kind != "linear" and len(block.out_shape) == 3:  # an older run's integer: k plain convs before pooling
        helper["extra_layers"] = int(kind)
    return helper_from_dict(helper)


def _helper(g: Any, spec: ModelSpec, index: int, last_to_head: bool) -> Helper:
    block = spec.blocks[index]
    kind = objective_type(g.objective).helper  # aux_head | decoder | rbm
    if kind == "aux_head" and g.aux_head in ("conv", "mlp_sr"):  # refused on vectors and sequences
        aux_head_spec(g, block, spec.num_classes)
    if kind == "aux_head" and head_objective(spec.head) == "mlm":
        raise StagetrainError(
            "strategy=layerwise trains each layer through an auxiliary head on the stage's targets, but a masked-"
            "token model (model=hf model.task=mlm) has no per-layer masked-token head yet. Use strategy=scratch or "
            "strategy=grow for mlm, or model.task=classification on labelled texts.")
    if kind == "aux_head" and head_objective(spec.head) == "lm":  # language model: next tokens
        return LMHead(spec.head.inp, spec.head.out)
    if kind == "aux_head" and last_to_head:  # the model head's shape: it becomes the head
        return AuxHead(tuple(head_input_shape(spec)), spec.num_classes)
    if kind == "aux_head":
        return aux_head_spec(g, block, spec.num_classes)
    assert isinstance(block, Dense)  # the decoder and rbm objectives are the linear and conv blocks' own
    if kind == "rbm":
        return RBMVisible(block.inp)
    pool = 0 if block.pool is None else block.pool
    return Decoder(block.TAG, block.inp, block.out, bool(g.tied), getattr(block, "kernel", None), pool)


# The LRs left null follow the objective. A supervised greedy stage trains one block and a
# fresh auxiliary head for a few epochs: at optim.lr (1e-3) the quick start's three stages
# were still descending (under-trained warnings); at 3x they converge (digits, seed 0:
# test/acc 0.972 -> 0.969, no warning). Sigmoid RBM blocks fine-tune slowly: at 1e-3 the
# fine-tuned network reached 0.675 on digits, at 3e-3 0.856, at 1e-2 0.953.
GREEDY_LR_FACTOR = {"supervised": 3.0}
FINETUNE_LR_FACTOR = {"rbm": 10.0}


def greedy_lr(cfg: Any, g: Any) -> float:
    """A greedy stage's LR: strategy.lr, else optim.lr x the objective's factor."""
    return float(g.lr) if g.lr is not None else float(cfg.optim.lr) * GREEDY_LR_FACTOR.get(g.objective, 1.0)


def finetune_lr(cfg: Any, s: Any) -> float:
    """The fine-tune stage's LR: strategy.finetune.lr, else optim.lr x the objective's factor."""
    ft = s.finetune
    return float(ft.lr) if ft.lr is not None else float(cfg.optim.lr) * FINETUNE_LR_FACTOR.get(s.objective, 1.0)


def greedy_stages(cfg: Any, spec: ModelSpec | dict[str, Any], g: GreedySettings, last_to_head: bool = False,
                  dataset: str = "target") -> list[Stage]:
    """One greedy stage per block, from the greedy settings ``g``; finetune's in-run
    pretraining reuses this with its own settings and ``dataset="source"``."""
    spec = as_spec(spec)
    blocks = spec.block_names
    for b in spec.blocks:
        offered = part_type(b.TAG).objectives
        if g.objective not in offered:
            raise StagetrainError(
                f"Layer-wise objective {g.objective} cannot train {b.name}, a block of type {b.TAG!r}; "
                f"that type supports: {', '.join(offered)}.")
    noise = as_list(g.noise)
    objective = objective_type(g.objective)
    stages: list[Stage] = []
    for i, name in enumerate(blocks):
        greedy = {"optimizer": g.optimizer or cfg.optim.name, "lr": greedy_lr(cfg, g)}
        if objective.helper == "rbm":  # the block as an RBM: CD-k with SGD at its own LR
            greedy = {"optimizer": "sgd", "lr": float(g.rbm_lr), "momentum": 0.5, "weight_decay": 0.0}
        to_head = last_to_head and i == len(blocks) - 1
        stages.append(stage_from_cfg(
            cfg, name=f"greedy-{name}", **auto_length(g.epochs_per_layer, g.auto),
            trainable=(["stem"] if i == 0 and spec.stem is not None else []) + [name, "helper"],
            objective=g.objective, stop_block=i + 1, helper=_helper(g, spec, i, to_head),
            helper_to_head=to_head, data="labeled" if objective.labels else "all", cache=g.cache,
            objective_args=objective.args_from(
                {"noise": float(noise[min(i, len(noise) - 1)]) if objective.noisy else 0.0, "cd_k": int(g.cd_k)}),
            dataset=dataset,
            description=f"{name} on the frozen blocks below it ({g.objective})", **greedy,
        ))
    return stages


def build(cfg: Any, spec: ModelSpec | dict[str, Any]) -> Plan:
    s = cfg.strategy
    spec = as_spec(spec)
    objective = objective_type(s.objective)
    last_to_head = objective.helper == "aux_head" and not s.finetune.enabled  # the last aux head becomes the head
    head_type = spec.head.TAG
    if last_to_head and head_objective(spec.head) == "lm":
        raise StagetrainError(
            "strategy.finetune.enabled=false makes the last block's auxiliary head the model's head, but a language "
            "model's LM head shares the token embedding and is not an auxiliary head's copy. Keep "
            "strategy.finetune.enabled=true: its fine-tune stage trains the model end to end.")
    if last_to_head and part_type(head_type).shared:
        raise StagetrainError(
            "strategy.finetune.enabled=false makes the last block's auxiliary head the model's head, which needs "
            f"a head stagetrain builds (a linear, pooling or sequence head); this model's head is its own module "
            f"({head_type!r}). Keep strategy.finetune.enabled=true: its fine-tune stage trains the model's own head.")
    stages = greedy_stages(cfg, spec, GreedySettings.of(s), last_to_head)
    ft = s.finetune
    if ft.enabled:
        lr = finetune_lr(cfg, s)
        if ft.head_warmup_epochs:
            stages.append(head_probe_stage(
                cfg, "finetune-head", ft.head_probe, int(ft.head_warmup_epochs), float(ft.probe_l2), float(cfg.optim.lr),
                cache=s.cache, description="new head on the frozen pretrained blocks"))
        stages.append(stage_from_cfg(
            cfg, name="finetune", epochs=int(ft.epochs or cfg.train.epochs), trainable=all_groups(spec),
            lr=lr, description="every block and the head, from the greedy weights"))
    return Plan("layerwise", stages, input_norm=objective.input_norm)
