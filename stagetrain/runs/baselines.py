"""Trivial baselines ("chance"): what a stage's objective scores without learning anything
from its inputs. Computed once per run after it ends, fitted on the TRAINING split only (the
samples the stage trains on: the labelled subset for labelled stages, every training input
otherwise), evaluated on the split the stage's logged metric uses (validation; training
when a dataset has none).

* ``majority`` (supervised, through the head or an auxiliary head): the accuracy of always
  answering the most frequent training class (the lowest class id among ties), and its loss:
  the cross-entropy of the class-frequency prior, add-one smoothed over the dataset's
  classes, ``-mean log p(y)`` with ``p(c) = (count_c + 1) / (n + classes)``.
* ``unigram`` (lm, mlm): the cross-entropy in nats per token of the token-frequency model,
  add-one smoothed over the tokenizer's real tokens (ids 1..V-1; 0 is padding):
  ``-mean log p(t)`` with ``p(t) = (count_t + 1) / (n + V - 1)``. Which tokens are targets:
  lm on corpus windows -- every next token (the windows' ``y``); lm on padded texts (in-run
  pretraining) -- the non-padding tokens at positions 1..T-1 (position t predicts t + 1);
  mlm -- every non-padding token: ``objectives.mlm_corrupt`` chooses each one with the same
  probability (15%) whatever its id, so the masked positions' targets are distributed as the
  non-padding tokens and this is the expected unigram loss over the masking.
* ``mean_image`` (autoencoder, denoising, rbm on block 1): the loss the objective would
  have if its reconstruction were always the training mean input, in the objective's units
  -- the mean squared error per input element, on the inputs normalised as the stage sees
  them (``plan.input_norm``: standardised, or [0, 1] for RBMs; the RBM's comparable loss is
  its mean-field reconstruction error). A deeper block reconstructs the features of the
  blocks below it, which the run changes afterwards: no baseline (null).

A split larger than ``CAP`` samples is read through a fixed seeded sample of ``CAP``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from stagetrain.core.plan import Plan, Stage
from stagetrain.data import DataBundle
from stagetrain.nn.objective_registry import find as find_objective
from stagetrain.nn.objective_registry import objective_type

CAP = 20_000  # samples read per split (a fixed seeded sample beyond)
CHUNK = 4096
KINDS = {"majority": "accuracy", "unigram": None, "mean_image": "mean_image"}  # run.json key per kind (unigram: lm/mlm)


def majority(train_y: torch.Tensor, eval_y: torch.Tensor, classes: int) -> dict[str, float]:
    """Accuracy of the majority training class on ``eval_y``, and the prior's cross-entropy."""
    counts = torch.bincount(train_y.flatten().long().cpu(), minlength=classes).double()
    ev = eval_y.flatten().long().cpu()
    prior = (counts + 1) / (counts.sum() + len(counts))
    return {"acc": float((ev == int(torch.argmax(counts))).double().mean()),
            "loss": float(-prior[ev].log().mean())}


def unigram(train_tokens: torch.Tensor, eval_tokens: torch.Tensor, vocab: int) -> float:
    """Nats per token of the add-one smoothed token-frequency model (real ids 1..vocab-1)."""
    counts = torch.bincount(train_tokens.flatten().long().cpu(), minlength=vocab).double()[1:vocab]
    p = (counts + 1) / (counts.sum() + len(counts))
    ev = eval_tokens.flatten().long().cpu()
    return float(-p[ev - 1].log().mean())


def mean_image(train_x: torch.Tensor, eval_x: torch.Tensor) -> float:
    """Mean squared error per element of predicting every ``eval_x`` by the mean of ``train_x``."""
    mean = train_x.double().mean(0)
    return float(((eval_x.double() - mean) ** 2).mean())


def kind_of(stage: Stage) -> str | None:
    """The baseline a stage is compared with (None: none applies): its objective's record's
    ``baseline``, for a reconstruction only on the raw input (block 1)."""
    kind = find_objective(stage.objective)
    if kind is None or (kind.baseline_raw_input_only and stage.stop_block != 1):
        return None
    return kind.baseline


def _sample(n: int, seed: int = 0) -> torch.Tensor:
    if n <= CAP:
        return torch.arange(n)
    return torch.sort(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:CAP]).values


def _train_index(bundle: DataBundle, stage: Stage) -> torch.Tensor:
    base = bundle.labeled.cpu() if stage.data == "labeled" else torch.arange(len(bundle.train))
    return base[_sample(len(base))]


def _eval_split(bundle: DataBundle) -> tuple[str, Any]:
    return ("val", bundle.val) if len(bundle.val) else ("train", bundle.train)


def _targets(stage: Stage, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The tokens a stage's loss predicts (see the module docstring), padding dropped."""
    if objective_type(stage.objective).targets == "inputs":  # mlm: the (masked) input tokens
        t = x
    elif stage.helper is not None and stage.helper.reads_tokens:  # lm on padded texts: next real tokens
        t = x[:, 1:]
    else:
        t = y
    return t[t > 0]


def _rows(split: Any, idx: torch.Tensor, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return split.x[idx.to(dev)], split.y[idx.to(dev)]


def _normalised(bundle: DataBundle, split: Any, idx: torch.Tensor, norm: str) -> torch.Tensor:
    dev = split.y.device
    return torch.cat([bundle.normalize(split.x[idx[i:i + CHUNK].to(dev)], norm).flatten(1).cpu()
                      for i in range(0, len(idx), CHUNK)])


def stage_baseline(stage: Stage, bundle: DataBundle, input_norm: str) -> dict[str, Any] | None:
    """The stage's baseline: ``{"kind", "metric", "value", "split"}`` (+ ``loss`` for majority)."""
    kind = kind_of(stage)
    if kind is None:
        return None
    split_name, ev = _eval_split(bundle)
    tr, ev_idx = _train_index(bundle, stage), _sample(len(ev), 1)
    dev = bundle.train.y.device
    if kind == "majority":
        out = majority(bundle.train.y[tr.to(dev)], ev.y[ev_idx.to(dev)], bundle.num_classes)
        return {"kind": kind, "metric": "acc", "value": out["acc"], "loss": out["loss"], "split": split_name}
    if kind == "unigram":
        vocab = int(bundle.info.get("vocab_size") or 0)
        train_t, eval_t = _targets(stage, *_rows(bundle.train, tr, dev)), _targets(stage, *_rows(ev, ev_idx, dev))
        vocab = max(vocab, int(train_t.max()) + 1 if len(train_t) else 1, int(eval_t.max()) + 1 if len(eval_t) else 1)
        value = unigram(train_t, eval_t, vocab) if len(eval_t) else math.nan
        return {"kind": kind, "metric": "loss", "value": value, "unit": "nats per token", "split": split_name}
    value = mean_image(_normalised(bundle, bundle.train, tr, input_norm), _normalised(bundle, ev, ev_idx, input_norm))
    return {"kind": kind, "metric": "loss", "value": value, "unit": "mean squared error per input element",
            "split": split_name}


def for_plan(plan: Plan, datasets: dict[str, DataBundle]) -> tuple[dict[str, Any], list[dict[str, Any] | None]]:
    """Every stage's baseline (computed once per distinct one), and run.json's ``baselines``:
    one entry per kind and dataset (``accuracy``, ``lm``, ``mlm``, ``mean_image``; a
    ``source:`` prefix for finetune's in-run pretraining data)."""
    done: dict[tuple[Any, ...], dict[str, Any] | None] = {}
    per_stage, table = [], {}
    for stage in plan.stages:
        kind = kind_of(stage)
        key = (kind, stage.dataset, stage.data, stage.objective if kind == "unigram" else None,
               stage.helper is not None and stage.helper.reads_tokens, plan.input_norm)
        if key not in done:
            bundle = datasets.get(stage.dataset)
            done[key] = None if kind is None or bundle is None else stage_baseline(stage, bundle, plan.input_norm)
        base = done[key]
        per_stage.append(base)
        if base is not None:
            name = KINDS[kind] or stage.objective
            table[name if stage.dataset == "target" else f"{stage.dataset}:{name}"] = {
                **base, "dataset": stage.dataset}
    return table, per_stage
