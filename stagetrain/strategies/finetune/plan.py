"""finetune: start from a source model and adapt it to this run's data.

The source (``strategy.source``: a run directory, a ``.pt`` checkpoint or a
``model.safetensors``) gives the architecture and the weights, so no model settings are
repeated. A bare weights file (a torchvision-style ``state_dict`` ``.pth``, or a
safetensors file without stagetrain metadata; keys renamed by ``strategy.source_keys``)
has no architecture: ``model=`` gives it (e.g. ``model=torchvision model.arch=resnet18``).
Or ``strategy.pretrain.enabled=true`` pretrains inside the run on a source dataset / class
subset (supervised, autoencoder or denoising) before the mode's stages; on labelled
texts ``mlm`` / ``lm`` pretrain on every training text without its label (a mask token
added to the vocabulary for mlm, causal layers for lm).
``strategy.source=random`` starts from random weights of the ``model=`` architecture (no
transfer: the control run of a transfer comparison, same stages, same budget; with
pretraining enabled it is pretrained first). The head is new (sized for this run's
classes) unless ``strategy.head=reuse``.

| mode             | stages                                                            |
|------------------|-------------------------------------------------------------------|
| full             | everything trains                                                 |
| linear_probe     | head only, a probe (``probe=lbfgs``: full-batch L-BFGS; ``gradient``: ``probe_lr``, 5 x epochs); the backbone frozen, features cached |
| partial          | blocks after the first ``freeze_blocks``, and the head            |
| add_layers       | ``new_layers`` fresh blocks inserted before the head, and the head |
| gradual_unfreeze | one stage per group, top down (the head first, as a probe), then everything |
| lp_ft            | a probe, then everything at ``ft_lr_factor`` x the LR             |
| bitfit           | every bias (Linear, conv, norm shift) of the stem and blocks, and the head |
| lora             | low-rank adapters on ``lora.targets`` (every Linear), and the head; merged at the end |

Without ``strategy.lr``, a mode trains at ``optim.lr`` x ``strategy.lr_factor`` (null: the
mode's, ``MODE_LR_FACTOR``: bitfit 30, lora 10, add_layers 10 -- they train a small part on
a frozen backbone -- others 1). ``strategy.lr_decay=d`` gives group i (block1 = 1 ... head = K+1) the LR lr * d^(K+1-i) in
any mode (discriminative learning rates).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Plan, Stage, auto_length
from stagetrain.core.spec import ModelSpec, as_spec, from_dict
from stagetrain.datasets import dataset_meta
from stagetrain.families import build_spec, is_lm
from stagetrain.families import hook as family_hook
from stagetrain.growth import fresh_name
from stagetrain.models import StagedModel
from stagetrain.models.registry import part_type
from stagetrain.nn.modelops import AddLora, Deepen, MergeLora, ModelOp
from stagetrain.nn.objective_registry import objective_type
from stagetrain.nn.objectives import head_objective
from stagetrain.nn.stagehelpers import AuxHead, LMHead
from stagetrain.source import Source, load_bare, load_source
from stagetrain.strategies.common import (
    LBFGS_STEPS,
    all_groups,
    head_input_shape,
    head_probe_stage,
    stage_from_cfg,
)
from stagetrain.strategies.finetune.config import (
    MODE_LR_FACTOR,
    RANDOM,
    FinetuneStage,
    source_dataset_cfg,
)
from stagetrain.strategies.layerwise.plan import GreedySettings, greedy_stages


def _source(path: str, which: str) -> Source:
    """The source, read once per process while its files are unchanged."""
    target = Path(path).expanduser()
    stamp = max((p.stat().st_mtime_ns for p in [target, *target.glob("checkpoints/*")] if p.exists()), default=0)
    return _cached_source(path, which, stamp)


@functools.lru_cache(maxsize=4)
def _cached_source(path: str, which: str, stamp: int) -> Source:
    return load_source(path, which)


def datasets(cfg: Any) -> dict[str, Any]:
    """Extra datasets this strategy trains on: the in-run pretraining data."""
    return {"source": source_dataset_cfg(cfg)} if cfg.strategy.pretrain.enabled else {}


def initial_spec(cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The source's architecture, with a head for this run's classes (or, with in-run
    pretraining or a bare weights file, the architecture ``model=`` describes)."""
    s = cfg.strategy
    if s.pretrain.enabled and objective_type(s.pretrain.objective).tokens:  # lm, mlm
        return _text_pretrain_spec(cfg, in_shape, num_classes)
    if s.pretrain.enabled or s.source == RANDOM:
        return build_spec(cfg.model, in_shape, num_classes)
    src = _source(str(s.source), s.source_checkpoint)
    if src.arch is None:  # a bare state dict (.pth, foreign safetensors): model= gives the architecture
        arch = build_spec(cfg.model, in_shape, num_classes)
        with torch.device("meta"):  # its keys checked against that architecture now (a dry run too), unallocated
            load_bare(StagedModel(arch), src, dict(s.source_keys or {}), s.head == "reuse", _arch_name(cfg), True)
    else:
        arch = _source_arch(cfg, src, in_shape, num_classes)
    depth = len(as_spec(arch).blocks)
    if s.freeze_blocks > depth and s.mode == "partial":
        raise StagetrainError(f"strategy.freeze_blocks={s.freeze_blocks} exceeds the source's {depth} blocks.")
    return arch


def _text_pretrain_spec(cfg: Any, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    """The classifier that in-run lm / mlm pretraining prepares: causal layers for lm (unless
    model.causal says otherwise), a mask token in the vocabulary for mlm."""
    model, objective = cfg.model, objective_type(cfg.strategy.pretrain.objective)
    if objective.causal and getattr(model, "causal", False) is None:  # model=hf: its layers decide
        model = replace(model, causal=True)
    arch = build_spec(model, in_shape, num_classes)
    return family_hook(cfg.model, "with_mask_token")(arch) if objective.mask_token else arch


def _source_arch(cfg: Any, src: Source, in_shape: tuple[int, ...], num_classes: int) -> dict[str, Any]:
    s = cfg.strategy
    arch = from_dict(src.arch, f"the source {src.path}")  # a copy
    if tuple(arch.in_shape) != tuple(in_shape):
        raise StagetrainError(
            f"The source {src.path} takes inputs of shape {tuple(arch.in_shape)}, but dataset={cfg.dataset.name} "
            f"gives {tuple(in_shape)}. Fine-tune on a dataset with the source's input shape.")
    if s.head == "reuse":
        if arch.num_classes != num_classes:
            raise StagetrainError(
                f"strategy.head=reuse needs the same number of classes, but the source {src.path} has "
                f"{arch.num_classes} and this run's data has {num_classes}. Use strategy.head=new.")
    elif head_objective(arch.head) is not None and not is_lm(cfg.model) and (
            as_classifier := family_hook(cfg.model, "as_classifier")):  # LM / MLM pretraining -> labels
        return as_classifier(arch.to_dict(), num_classes, cfg.model)
    else:
        arch.head.out = arch.num_classes = int(num_classes)
    return arch.to_dict()


def _arch_name(cfg: Any) -> str:
    return f"model={cfg.model.name}" + (f" model.arch={cfg.model.arch}" if hasattr(cfg.model, "arch") else "")


def init_model(cfg: Any, model: StagedModel) -> dict[str, Any]:
    """Load the source weights (all but a new head); returns what run.json records."""
    s = cfg.strategy
    if s.pretrain.enabled:
        p = s.pretrain
        record = {"dataset": p.dataset or cfg.dataset.name, "classes": p.classes, "objective": p.objective}
        if getattr(model.arch.stem, "mask_id", None) is not None:
            record["mask_id"] = model.arch.stem.mask_id
        return {"pretrain": record}
    if s.source == RANDOM:
        return {"random": "no transfer: the model= architecture from random initial weights (control)"}
    src = _source(str(s.source), s.source_checkpoint)
    record = {"path": str(src.path.resolve()), "sha256": src.sha256, "checkpoint": s.source_checkpoint}
    if src.arch is None:
        arch, keys = _arch_name(cfg), dict(s.source_keys or {})
        load_bare(model, src, keys, s.head == "reuse", arch)
        return {**record, "checkpoint": None, "format": "state_dict", "model": arch, "source_keys": keys}
    if s.source_keys:
        raise StagetrainError(f"strategy.source_keys renames the keys of a bare weights file, but {src.path} is a "
                              "stagetrain source that names its own architecture; leave strategy.source_keys empty.")
    state = {k: v for k, v in src.state.items() if s.head == "reuse" or not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("head.")] + list(unexpected)
    if bad:
        raise StagetrainError(f"The source {src.path} does not match its own architecture spec ({bad[:3]}...).")
    return record


def _added_blocks(spec: ModelSpec, blocks: list[str], n: int) -> tuple[list[str], list[ModelOp]]:
    """add_layers: the names of ``n`` fresh blocks after the last, and the deepen ops that make them."""
    last = spec.blocks[-1].TAG
    if "deepen:random" not in part_type(last).grow:
        raise StagetrainError(
            f"strategy.mode=add_layers inserts fresh blocks of the last block's type, and blocks of type {last!r} "
            "cannot be created (model=custom/torchvision blocks are the user's own modules). Use mode=partial, "
            "gradual_unfreeze, lora or full.")
    new_blocks: list[str] = []
    ops: list[ModelOp] = []
    for _ in range(n):
        new_blocks.append(fresh_name(blocks + new_blocks))
        ops.append(Deepen((blocks + new_blocks)[-2], "random"))
    return new_blocks, ops


# linear_probe's length with probe=gradient: a multiple of the run's epochs. A head on frozen,
# cached features costs a few percent of a full step, and at 1x (20 epochs, ~220 steps on
# digits) it stopped at 0.40 test accuracy, still descending (issue 17).
PROBE_EPOCHS = 5


def mode_lr(cfg: Any) -> float:
    """The mode's learning rate: ``strategy.lr``, else ``optim.lr`` x ``strategy.lr_factor``
    (null: the mode's factor, ``MODE_LR_FACTOR``)."""
    s = cfg.strategy
    if s.lr is not None:
        return float(s.lr)
    return float(cfg.optim.lr) * float(s.lr_factor if s.lr_factor is not None else MODE_LR_FACTOR.get(s.mode, 1.0))


def build(cfg: Any, spec: ModelSpec | dict[str, Any]) -> Plan:
    s = cfg.strategy
    spec = as_spec(spec)
    blocks = spec.block_names
    stem = ["stem"] if spec.stem is not None else []
    epochs = int(s.epochs or cfg.train.epochs)
    lr = mode_lr(cfg)
    probe_lr = float(s.probe_lr or lr)  # head-only stages (frozen backbone): issue 17
    ops: list[ModelOp] = []
    if s.mode == "add_layers":
        new_blocks, ops = _added_blocks(spec, blocks, int(s.new_layers))
        blocks = blocks + new_blocks
    if s.mode == "lora":
        ops.append(AddLora(int(s.lora.rank), float(s.lora.alpha), tuple(s.lora.targets)))
    groups = stem + blocks + ["head"]  # bottom to top
    lr_scale = ({g: float(s.lr_decay) ** (len(groups) - i) for i, g in enumerate(groups, 1)}
                if s.lr_decay else {})

    def stage(name: str, trainable: list[str], n: int, **kw: Any) -> Stage:
        return stage_from_cfg(cfg, name=name, epochs=max(1, n), trainable=trainable, lr=kw.pop("lr", lr),
                              lr_scale=lr_scale, extra=FinetuneStage(kw.pop("partial", {}), s.bn), cache=s.cache,
                              description=f"{s.mode}: trains {', '.join(trainable)}", **kw)

    def probe(name: str, n: int) -> Stage:  # a head-only stage: L-BFGS steps, or n epochs at probe_lr
        steps = int(s.probe_epochs or LBFGS_STEPS) if s.probe == "lbfgs" else n
        return head_probe_stage(cfg, name, s.probe, steps, float(s.probe_l2), probe_lr, lr_scale=lr_scale,
                                extra=FinetuneStage(bn=s.bn), cache=s.cache, description=f"{s.mode}: trains head")

    plan = Plan("finetune", _pretrain_stages(cfg, spec) if s.pretrain.enabled else [])
    mode = s.mode
    if mode == "full":
        plan.stages += [stage("finetune-full", groups, epochs)]
    elif mode == "linear_probe":  # head only, on cached features
        plan.stages += [probe("linear-probe", int(s.probe_epochs or PROBE_EPOCHS * epochs))]
    elif mode == "partial":
        kept = (stem if s.freeze_blocks == 0 else []) + blocks[s.freeze_blocks:]
        plan.stages += [stage(f"partial-{s.freeze_blocks}", [*kept, "head"], epochs)]
    elif mode == "add_layers":
        plan.stages += [stage("add-layers", new_blocks + ["head"], epochs, ops=ops)]
    elif mode == "gradual_unfreeze":
        plan.stages += _unfreezing(stage, probe, groups, epochs, int(s.unfreeze_every))
        plan.optimizer_state = "map"  # moments of already-trainable groups carry over
    elif mode == "lp_ft":
        lp = int(s.probe_epochs or max(1, epochs // 2))
        plan.stages += [probe("lp", lp), stage("ft", groups, epochs - lp, lr=lr * float(s.ft_lr_factor))]
    elif mode == "bitfit":
        partial = {g: ["*bias"] for g in stem + blocks}
        plan.stages += [stage("bitfit", groups, epochs, partial=partial)]
    elif mode == "lora":
        partial = {g: ["*lora_*"] for g in stem + blocks}
        plan.stages += [stage("lora", groups, epochs, ops=ops, partial=partial)]
        if s.lora.merge:
            plan.final_ops = [MergeLora()]
    return plan


def _unfreezing(stage: Any, probe: Any, groups: list[str], epochs: int, every: int) -> list[Stage]:
    """gradual_unfreeze: the head alone (a probe), then one more group down every ``every``
    epochs, then everything for the epochs left; refused when none are left."""
    top_down, steps = groups[::-1], every * (len(groups) - 1)
    if epochs - steps < 1:
        raise StagetrainError(
            f"strategy.mode=gradual_unfreeze unfreezes {len(groups) - 1} groups one by one, every "
            f"strategy.unfreeze_every={every} epochs, which takes {steps} epochs; it has {epochs} (strategy.epochs, "
            f"else train.epochs), leaving none for the final stage that trains everything. Give it more than "
            f"{steps} epochs or a smaller strategy.unfreeze_every.")
    stages = [probe("unfreeze-1", every)]  # the head alone first: a probe (issue 17)
    stages += [stage(f"unfreeze-{j}", top_down[:j], every) for j in range(2, len(top_down))]
    return [*stages, stage("unfreeze-all", groups, epochs - steps)]


def _pretrain_stages(cfg: Any, spec: ModelSpec) -> list[Stage]:
    """In-run pretraining on the source data: one supervised stage with its own head (a
    helper sized for the source classes, dropped afterwards), or greedy layer-wise
    autoencoder/denoising stages."""
    p = cfg.strategy.pretrain
    objective = objective_type(p.objective)
    if objective.tokens:  # lm, mlm
        stem = spec.stem
        helper = LMHead(stem.d_model, stem.vocab_size if stem.mask_id is None else stem.mask_id, targets="tokens")
        return [stage_from_cfg(
            cfg, name=f"pretrain-{p.objective}", **auto_length(p.epochs, p.auto),
            trainable=[*all_groups(spec)[:-1], "helper"],
            objective=p.objective, dataset="source", data="all", helper=helper, lr=float(p.lr or cfg.optim.lr),
            description=f"every block on every training text without its label, predicting {objective.predicts}")]
    if objective.labels:  # supervised: a head for the source classes
        classes = dataset_meta(source_dataset_cfg(cfg))[1]
        blocks = all_groups(spec)[:-1]
        return [stage_from_cfg(
            cfg, name="pretrain", **auto_length(p.epochs, p.auto), trainable=[*blocks, "helper"], dataset="source",
            helper=AuxHead(tuple(head_input_shape(spec)), classes),
            lr=float(p.lr or cfg.optim.lr), description="every block, with a source head, on the source data")]
    settings = GreedySettings(objective=p.objective, epochs_per_layer=p.epochs, lr=p.lr, noise=p.noise, tied=p.tied,
                              cache=cfg.strategy.cache)
    return [replace(st, name=f"pretrain-{st.name}", **auto_length(p.epochs, p.auto))
            for st in greedy_stages(cfg, spec, settings, dataset="source")]
