"""``dry_run=true``: the plan as a table -- stages, growth operations, what trains, budget,
estimated FLOPs -- computed with the engine's own stage entry (``runtime.prepare``)."""

from __future__ import annotations

from typing import Any

import torch

from stagetrain import distributed
from stagetrain.core.plan import Plan, Stage
from stagetrain.core.schema import RunConfig
from stagetrain.datasets import dataset_meta
from stagetrain.engine.runtime import planned_length, prepare, wants_cache
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel, count_parameters, trainable_parameters
from stagetrain.nn.objectives import probe_batch
from stagetrain.nn.optim import LBFGS_MAX_PASSES
from stagetrain.runs import preflight
from stagetrain.runs.parts import initial_spec, run_specs
from stagetrain.runs.preflight import memory_of, shard_count
from stagetrain.strategies import STRATEGIES, hook


def estimate_plan(cfg: RunConfig, plan: Plan, spec: dict[str, Any], n_train: int,
                  n_labeled: int) -> list[dict[str, Any]]:
    """Per stage: samples per epoch, planned epochs and estimated training FLOPs with and
    without caching (a FLOP-bounded stage: what its budget buys)."""
    model = StagedModel(spec)
    x, y = probe_batch(spec, 2, unit=plan.input_norm == "unit")
    g = torch.Generator().manual_seed(0)
    extra = (hook(cfg.strategy.name, "datasets") or (lambda c: {}))(cfg)  # e.g. in-run pretraining
    sizes = {"target": (n_train, n_labeled), **{k: tuple(dataset_meta(v)[2:4]) for k, v in extra.items()}}
    bs = int(cfg.train.batch_size)
    shards = shard_count(cfg.device)  # device.shard=fsdp under torchrun: per-rank memory of the shards
    rows = []
    for stage in plan.stages:
        for op in stage.ops:
            model, _ = apply_op(model, op, g)
        helper, p, step, pre, aux = prepare(model, stage, x, y)
        n_all, n_lab = sizes.get(stage.dataset, sizes["target"])
        n = max(1, round((n_lab if stage.data == "labeled" else n_all) * stage.extra.data_fraction))
        cacheable = p > 0 and stage.cache != "off"
        passes = LBFGS_MAX_PASSES if stage.optimizer == "lbfgs" else 1  # at most: a line search's evaluations
        per_sample = step * passes + (0.0 if cacheable else pre)  # a frozen prefix runs once per step
        epochs, _ = planned_length(stage, n, bs, per_sample)
        samples = n * epochs if stage.epochs is not None else min(n * epochs, stage.max_flops / per_sample)
        plain = (step * passes + pre) * samples
        cached = pre * n + step * passes * samples
        use_cache = wants_cache(stage, p, epochs)
        rows.append({"stage": stage, "samples": n, "epochs": epochs, "params": count_parameters(model),
                     "trainable": trainable_parameters(model, helper),
                     "flops": cached if use_cache else plain, "flops_no_cache": plain,
                     "flops_cache": cached if p > 0 else None, "growth": describe_ops(stage),
                     "aux_flops": aux * passes * samples,  # the auxiliary head's share of flops
                     "memory_per_rank": memory_of(model, model.spec, bs, 0, shards).device, "shards": shards})
    return rows


def describe_ops(stage: Stage) -> str:
    """'widen block1 16->64 (net2net, noise 0)' etc., one per growth op of the stage."""
    return "; ".join(op.describe() for op in stage.ops)


def _size(n: int) -> str:
    return f"{n / 1024**3:.3g} GB" if n >= 1024**3 else f"{n / 1024**2:.3g} MB"


def print_plan(plan: Plan, rows: list[dict[str, Any]], params: int) -> None:
    from rich.table import Table

    from stagetrain.progress import make_console

    table = Table(title=f"stagetrain plan: strategy={plan.strategy} ({params:,} parameters at the start)")
    for col in ("stage", "name", "growth", "objective", "trains", "data", "epochs", "params",
                "est. FLOPs", "of which aux head", "FLOPs no cache", "memory/rank"):
        table.add_column(col)
    for k, row in enumerate(rows):
        s = row["stage"]
        budget = str(row["epochs"]) if s.epochs is not None else f"{row['epochs']} ({s.max_flops:.3g} FLOPs)"
        budget = f"auto (max {row['epochs']})" if s.auto else budget  # est. FLOPs: at the max
        table.add_row(str(k + 1), s.name, row["growth"] or "-", s.objective, ", ".join(s.trainable),
                      f"{s.data} ({row['samples']:,}/epoch)", budget, f"{row['params']:,}", f"{row['flops']:.3g}",
                      f"{row['aux_flops']:.3g}" if row["aux_flops"] else "-",
                      f"{row['flops_no_cache']:.3g}" if row["flops_cache"] is not None else "-",
                      _size(row["memory_per_rank"]))
    console = make_console()
    console.print(table)
    total = sum(r["flops"] for r in rows)
    aux = sum(r["aux_flops"] for r in rows)
    of_aux = f" (auxiliary heads: {aux:.3g}, {aux / total:.1%})" if aux and total else ""
    console.print(f"Total estimated training FLOPs: {total:.3g}{of_aux}. Dry run: nothing was trained or written.")
    shards = rows[0]["shards"] if rows else 1
    console.print("memory/rank: fp32 weights, gradients and Adam state" + (
        f" sharded over {shards} ranks (device.shard=fsdp), plus the whole model gathered to evaluate" if shards > 1
        else "") + ", and activations of a batch (the in-memory dataset not included)")


def dry_run(settings: RunConfig) -> dict[str, Any]:
    """``dry_run=true``: the checks, the plan and its estimates, printed and returned; nothing
    is read beyond the dataset's sizes and nothing is written."""
    preflight.check_run(settings, None, run_specs)
    shape, classes, n_train, n_labeled = dataset_meta(settings.dataset)
    spec = initial_spec(settings, shape, classes)
    plan = STRATEGIES[settings.strategy.name].build(settings, spec)
    rows = estimate_plan(settings, plan, spec, n_train, n_labeled)
    if distributed.is_main():
        print_plan(plan, rows, count_parameters(StagedModel(spec)))
    return {"dry_run": True, "plan": plan.to_dict(),
            "estimates": [{k: v for k, v in r.items() if k != "stage"} for r in rows]}
