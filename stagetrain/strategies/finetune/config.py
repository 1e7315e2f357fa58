"""finetune's options and their checks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.plan import StageExtra
from stagetrain.core.schema import CACHE_MAX_BYTES, StrategyConfig
from stagetrain.datasets import DATASETS, check_classes, dataset_meta
from stagetrain.strategies.layerwise.config import AutoConfig, check_epochs

MODES = ("full", "linear_probe", "partial", "add_layers", "gradual_unfreeze", "lp_ft", "bitfit", "lora")
# The learning rate of a mode that trains a small part on a frozen backbone, as a multiple of
# optim.lr: at 1x (1e-3, 10 epochs) BitFit, LoRA and added layers were still descending on
# digits 0-4 -> 5-9 (0.67 / 0.81 / 0.73 test accuracy); the factors are the best on its
# validation split of 1x, 3x, 10x, 30x (0.92 / 0.96 / 0.90; issue 17). BitFit and LoRA were
# published with learning rates about 10-50x those of full fine-tuning (Ben Zaken et al. 2022,
# Hu et al. 2021).
MODE_LR_FACTOR = {"bitfit": 30.0, "lora": 10.0, "add_layers": 10.0}
PRETRAIN_OBJECTIVES = ("supervised", "autoencoder", "denoising", "lm", "mlm")  # lm, mlm: text classification data
RANDOM = "random"  # strategy.source=random: no transfer, the control run of a transfer sweep


@dataclass
class FinetuneStage(StageExtra, kind="finetune"):
    """finetune's own settings of one stage (``Stage.extra``; run.json ``{"kind": "finetune", ...}``):
    ``partial``, per trainable group the parameter-name patterns (fnmatch) that train in it
    (bitfit ``*bias``, lora ``*lora_*``; a group not named trains whole), and ``bn``, the
    BatchNorm of frozen groups (``strategy.bn``: eval | train_stats | train_affine)."""

    partial: dict[str, list[str]] = field(default_factory=dict)
    bn: str = "eval"


@dataclass
class LoraConfig:
    rank: int = 4
    alpha: float = 8.0
    merge: bool = True
    targets: list[str] = field(default_factory=list)  # module-name patterns; empty: every Linear in the blocks


@dataclass
class PretrainConfig:
    enabled: bool = False
    dataset: str | None = None
    classes: list[int] | None = None
    objective: str = "supervised"
    epochs: Any = 5  # or "auto": until each pretraining stage's validation loss plateaus (pretrain.auto)
    auto: AutoConfig = field(default_factory=AutoConfig)
    lr: float | None = None
    noise: float = 0.2
    tied: bool = True


@dataclass
class Config(StrategyConfig):
    name: str = "finetune"
    source: str | None = None
    source_checkpoint: str = "best"
    source_keys: Any = None  # bare weights file: old key prefix -> new
    mode: str = "full"
    epochs: int | None = None
    lr: float | None = None
    lr_factor: float | None = None  # null: the mode's (MODE_LR_FACTOR); strategy.lr wins when set
    freeze_blocks: int = 1
    new_layers: int = 1
    unfreeze_every: int = 1
    lr_decay: float | None = None
    probe_epochs: int | None = None
    probe_lr: float | None = 0.1
    probe: str = "lbfgs"  # linear_probe / lp_ft's probe: lbfgs (full batch) | gradient (optim.name at probe_lr)
    probe_l2: float = 3e-4  # L2 penalty of the L-BFGS probe's weights
    ft_lr_factor: float = 0.1
    lora: LoraConfig = field(default_factory=LoraConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    bn: str = "eval"
    head: str = "new"
    cache: str = "auto"
    cache_max_bytes: int = CACHE_MAX_BYTES
    cache_dtype: str = "fp32"


def validate(cfg: Any) -> None:
    s = cfg.strategy
    check_choice("strategy.mode", s.mode, MODES)
    check_choice("strategy.bn", s.bn, ("eval", "train_stats", "train_affine"))
    check_choice("strategy.head", s.head, ("new", "reuse"))
    check_choice("strategy.cache", s.cache, ("auto", "on", "off"))
    p = s.pretrain
    if s.source == RANDOM and s.head == "reuse":
        raise StagetrainError("strategy.head=reuse needs a source run; strategy.source=random has no head to reuse.")
    if p.enabled:
        if s.source not in (None, RANDOM):
            raise StagetrainError("strategy.source and strategy.pretrain.enabled=true exclude each other: "
                                  "transfer from a source run, or pretrain inside this run.")
        check_choice("strategy.pretrain.objective", p.objective, PRETRAIN_OBJECTIVES)
        if p.objective in ("lm", "mlm"):
            _validate_text_pretrain(cfg)
        if p.dataset is not None:
            check_choice("strategy.pretrain.dataset", p.dataset, DATASETS)
        check_classes("strategy.pretrain.classes", p.classes)
        check_epochs("strategy.pretrain.epochs", p.epochs, p.auto, "strategy.pretrain.auto")
        if (p.lr is not None and p.lr <= 0) or not 0 <= p.noise < 1:
            raise StagetrainError("strategy.pretrain: lr must be > 0 and noise in [0, 1).")
        if s.head == "reuse":
            raise StagetrainError("strategy.head=reuse needs a source run; in-run pretraining always gets a new head.")
        src_shape, shape = (tuple(dataset_meta(d)[0]) for d in (source_dataset_cfg(cfg), cfg.dataset))
        if src_shape != shape:
            raise StagetrainError(
                f"strategy.pretrain.dataset={p.dataset} has inputs of shape {src_shape}, but dataset="
                f"{cfg.dataset.name} has {shape}; they must match.")
        return _validate_numbers(s)
    if s.source == RANDOM:  # the no-transfer control: the same stages from random weights
        return _validate_numbers(s)
    if s.source is None:
        raise StagetrainError(
            "strategy=finetune needs strategy.source=<a run directory, a .pt checkpoint, a model.safetensors, or a "
            "state-dict .pth / .safetensors with model= naming its architecture>, "
            "e.g. strategy.source=outputs/2026-11-23/12-00-00_scratch_ab12cd, or strategy.pretrain.enabled=true "
            "to pretrain inside this run, or strategy.source=random for the no-transfer control.")
    if not Path(str(s.source)).expanduser().exists():
        raise StagetrainError(f"strategy.source={s.source} does not exist. Give a stagetrain run directory, "
                              "a checkpoint (.pt), a model.safetensors file, or a state-dict file (.pth, "
                              ".safetensors) whose architecture model= names.")
    _validate_keys(s)
    if not re.fullmatch(r"best|last|stage-\d+", s.source_checkpoint):
        raise StagetrainError(f"strategy.source_checkpoint={s.source_checkpoint!r} is not valid: use best, last or stage-<k>.")
    _validate_numbers(s)
    _carry_tokenizer(cfg)


def _carry_tokenizer(cfg: Any) -> None:
    """A fine-tune from a run keeps the run's vocabulary: when the source run trained a BPE
    (run.json ``data.tokenizer``), this run's ``dataset.tokenizer=bpe`` reuses it
    (``dataset.tokenizer_path`` = the source run, unless given); another tokenizer is refused,
    since the source's token embeddings would mean other text."""
    import json

    from stagetrain import datasets
    from stagetrain.core import userfile

    ds, source = cfg.dataset, Path(str(cfg.strategy.source)).expanduser()
    run_json = source / "run.json"
    if not source.is_dir() or not run_json.is_file() or datasets.inputs(ds) != "tokens":
        return
    try:
        tok = json.loads(userfile.read_text(run_json, "strategy.source", "record"))["data"]["tokenizer"]
        kind, size = tok["kind"], int(tok["vocab_size"])
    except (ValueError, KeyError, TypeError):
        return  # a run without a recorded tokenizer: the vocabulary checks of the source's spec apply
    if kind != "bpe":
        return
    if getattr(ds, "tokenizer", None) != "bpe":
        raise StagetrainError(
            f"strategy.source={cfg.strategy.source} was trained on a BPE of {size} token ids, so its embeddings "
            f"mean nothing under dataset.tokenizer={getattr(ds, 'tokenizer', None)}. Add dataset.tokenizer=bpe "
            f"dataset.vocab_size={size - 1}: the fine-tune then reuses the source run's BPE.")
    if getattr(ds, "tokenizer_path", None) is None:
        ds.tokenizer_path = str(source)


def _validate_text_pretrain(cfg: Any) -> None:
    """lm / mlm pretraining reads the run's own labelled texts as unlabelled sequences."""
    from stagetrain import datasets, families

    p, ds = cfg.strategy.pretrain, cfg.dataset
    if datasets.inputs(ds) != "tokens" or datasets.is_lm(ds):
        raise StagetrainError(
            f"strategy.pretrain.objective={p.objective} pretrains on the run's texts without their labels, then "
            f"fine-tunes a classifier on them, but dataset={ds.name}{' dataset.task=lm' if hasattr(ds, 'task') else ''} "
            "has no labels to fine-tune on. Use labelled texts (dataset=fortunes or dataset=text_classification); to "
            "fine-tune a language model trained on a corpus, give its run as strategy.source=<run dir>.")
    if p.dataset not in (None, ds.name) or p.classes is not None:
        raise StagetrainError(f"strategy.pretrain.objective={p.objective} pretrains on every training text of "
                              f"dataset={ds.name}; strategy.pretrain.dataset and strategy.pretrain.classes do not "
                              "apply (leave them null).")
    if families.hook(cfg.model, "with_mask_token") is None:
        readers = " or ".join(f"model={n}" for n in families.offering("with_mask_token"))
        raise StagetrainError(f"strategy.pretrain.objective={p.objective} needs a token model that can pretrain "
                              f"on text: {readers}.")
    check = families.hook(cfg.model, "check_text_pretrain")  # a family whose layers fix causality
    if check is not None:
        return check(cfg.model, p.objective)
    if p.objective == "lm" and cfg.model.causal is False:
        raise StagetrainError("strategy.pretrain.objective=lm trains next-token prediction, which needs causal "
                              "layers: leave model.causal=null (lm makes it causal) or use objective=mlm.")
    if p.objective == "mlm" and cfg.model.causal:
        raise StagetrainError("strategy.pretrain.objective=mlm predicts masked tokens from both sides: it needs "
                              "bidirectional layers. Set model.causal=null or false, or use objective=lm.")


def _validate_keys(s: Any) -> None:
    keys = s.source_keys
    if keys is not None and (not isinstance(keys, dict) or not all(isinstance(v, str) for v in keys.values())):
        raise StagetrainError(f"strategy.source_keys={keys!r} must map old key prefixes to new ones, e.g. "
                              "strategy.source_keys='{backbone.: \"\"}' (drops a 'backbone.' prefix).")


def _validate_numbers(s: Any) -> None:
    for key in ("epochs", "lr", "lr_factor", "new_layers", "unfreeze_every", "probe_epochs", "probe_lr", "ft_lr_factor", "lr_decay"):
        value = getattr(s, key)
        if value is not None and not value > 0:
            raise StagetrainError(f"strategy.{key}={value} is out of range: it must be > 0.")
    check_choice("strategy.probe", s.probe, ("lbfgs", "gradient"))
    if not s.probe_l2 >= 0:
        raise StagetrainError(f"strategy.probe_l2={s.probe_l2} is out of range: it must be >= 0 (0: no penalty).")
    if s.freeze_blocks < 0 or s.lora.rank < 1 or s.lora.alpha <= 0:
        raise StagetrainError("strategy.freeze_blocks must be >= 0, strategy.lora.rank >= 1 and strategy.lora.alpha > 0.")


def source_dataset_cfg(cfg: Any) -> Any:
    """The dataset config of in-run pretraining: the run's, with the pretrain dataset/classes."""
    p, ds = cfg.strategy.pretrain, cfg.dataset
    if p.dataset is not None and p.dataset != ds.name:
        ds = replace(ds, name=p.dataset, classes=None)
    classes = list(p.classes) if p.classes is not None else ds.classes
    return replace(ds, classes=classes, labeled_fraction=1.0)
