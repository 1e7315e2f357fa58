"""The start banner: one block that says what is about to run, before the first step --
run directory, device, data sizes, parameters (total, and trainable per stage), the plan."""

from __future__ import annotations

from typing import Any

import torch

from stagetrain.core.schema import RunConfig
from stagetrain.data import DataBundle
from stagetrain.engine import Engine
from stagetrain.models import count_parameters
from stagetrain.runread import fmt
from stagetrain.runs.dryrun import estimate_plan
from stagetrain.runs.parts import Parts


def start_banner(strategy: str, run_dir: str, device: torch.device, bf16: bool, data: DataBundle,
                 params: int, rows: list[dict[str, Any]], resumed: str | None) -> str:
    """The banner's text; ``rows`` are the dry run's per-stage estimates (``dryrun.estimate_plan``)."""
    threads = f"{torch.get_num_threads()} threads" if device.type == "cpu" else str(device)
    lines = [
        f"stagetrain {strategy}: {len(rows)} stage{'s' if len(rows) != 1 else ''}, "
        f"est. {fmt(float(sum(r['flops'] for r in rows)))} training FLOPs" + (f" ({resumed})" if resumed else ""),
        f"  run directory  {run_dir}",
        f"  device         {device.type} ({threads}, {'bf16 autocast' if bf16 else 'fp32'})",
        f"  data           {_data_line(data)}",
        f"  storage        {_storage(data)}",
        f"  model          {fmt(params)} parameters",
    ]
    for k, row in enumerate(rows):
        s = row["stage"]
        budget = f"{fmt(row['epochs'])} epochs" if s.epochs is not None else f"{fmt(float(s.max_flops))} FLOPs"
        budget = f"auto epochs (max {fmt(row['epochs'])})" if s.auto else budget
        grows = f"; {row['growth']}" if row.get("growth") else ""
        lines.append(f"  stage {k + 1} {s.name}: trains {fmt(row['trainable'])} of {fmt(row['params'])} "
                     f"({', '.join(s.trainable)}), {s.objective}, {budget}{grows}")
    return "\n".join(lines)


MARKS = {True: "converged", False: "STILL FALLING", None: "?"}


def final_table(info: dict[str, Any]) -> str:
    """The run's closing table, one row per stage: its final validation metric beside
    "chance" (the objective's trivial baseline, ``runs/baselines.py``), how far beyond chance it
    got, and a mark -- converged, STILL FALLING (under-trained), BARELY LEARNT (within 10%
    of chance), ? (one epoch: not judged), "(then grown)" for a stage the model grew after
    (short on purpose) -- from run.json's ``convergence``."""
    rows = [("stage", "objective", "final", "chance", "beyond chance", "mark")]
    for e in info.get("convergence") or []:
        final = "-" if e["final"] is None else f"val {e['metric']} {fmt(float(e['final']))}"
        chance = "-" if e["baseline"] is None else f"{fmt(float(e['baseline']))} ({e['baseline_kind']})"
        beyond = "-" if e["beyond_baseline"] is None else f"{e['beyond_baseline']:.0%}"
        mark = MARKS[e["converged"]] + (", BARELY LEARNT" if e["barely_learnt"] else "")
        if e.get("before_growth"):  # short on purpose: judged, never an under-trained run
            mark = f"{MARKS[e['converged']].lower()} (then grown)"
        rows.append((f"{e['stage']} {e['name']}", e["objective"], final, chance, beyond, mark))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["stage convergence (chance: the objective's trivial baseline on the same split)"]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _data_line(data: DataBundle) -> str:
    """Split sizes; a classifier's labelled share and classes, a language model's vocabulary
    (its targets are the next tokens: no labels, no classes)."""
    sizes = f"val {fmt(len(data.val))}, test {fmt(len(data.test))}"
    if data.info.get("task") == "lm":
        return f"{data.name}: train {fmt(len(data.train))} windows, {sizes}, vocabulary of {data.num_classes} tokens"
    return (f"{data.name}: train {fmt(len(data.train))} (labelled {fmt(len(data.labeled))}), {sizes}, "
            f"{data.num_classes} classes")


def _storage(data: DataBundle) -> str:
    """In memory or streamed, and why; for a streamed split its workers and augmentation."""
    info = data.info
    line = f"{info.get('storage', 'memory')} ({info.get('storage_reason', 'in memory')})"
    if info.get("storage") == "stream":
        line += f", {info['workers']} loader workers, augment={info['augment']}"
        if info["augment"] != "none":
            line += " (no frozen-prefix feature cache)"
    return line


def show(text: str) -> None:
    from stagetrain.progress import make_console

    make_console().print(text, markup=False, highlight=False)


def run_banner(settings: RunConfig, parts: Parts, engine: Engine, run_dir: str, resumed: dict[str, Any] | None) -> None:
    """The start banner of a run: where it writes, its data, model and plan with estimates."""
    data = parts.datasets["target"]
    rows = estimate_plan(settings, parts.plan, parts.model.spec, len(data.train), len(data.labeled))
    at = f"resuming at stage {engine.state.stage + 1}, step {engine.state.global_step}" if resumed else None
    show(start_banner(parts.plan.strategy, run_dir, engine.device, engine.opts.bf16, data,
                      count_parameters(engine.model), rows, at))
