"""kill -9 harness: run a strategy, SIGKILL it at seeded random moments, resume until done.

Shared by ``tests/faults`` (CI size) and ``benchmarks/faults.py`` (200 kills). Each
scenario is a command line; ``run_scenario`` trains it once uninterrupted (the reference),
then again in another run directory with ``resume=auto`` after every kill, and returns what
an assertion or a report needs: kills, lost steps per kill, final weights, metrics.

Kill moments are drawn from a seeded ``random.Random``: which steps, which checkpoint
write and phase, which stage transition or growth, and wall-clock delays. The in-process
triggers (see ``victim.py``) land exactly where drawn; the wall-clock ones land wherever
the process happens to be (imports, data loading, evaluation, a write).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from stagetrain.runs.rundir import read_metrics

from .victim import child_main, read_record

REPO = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("STAGETRAIN_DATA", REPO.parent / "shared" / "data"))
TIMING_KEYS = {"wall", "time"}  # the only fields of metrics.jsonl that may differ after a resume

# Each strategy on digits with a tiny model: a few hundred steps, several stages.
COMMON = ["dataset=digits", "device=cpu", "progress=off", "plots=false", "train.batch_size=64",
          "checkpoint.every_steps=7", "device.threads=1"]
SCENARIOS: dict[str, list[str]] = {
    "scratch": ["strategy=scratch", "model.widths=[32,16]", "train.epochs=6"],
    "layerwise": ["strategy=layerwise", "model.widths=[32,16]", "strategy.epochs_per_layer=3",
                  "strategy.cache=on", "strategy.finetune.epochs=3"],
    "grow": ["strategy=grow", "strategy.widths=[[8],[16],[32,16]]", "strategy.epochs_per_stage=2",
             "strategy.final_epochs=3"],
    "finetune": ["strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.epochs=2",
                 "strategy.mode=gradual_unfreeze", "model.widths=[32,16]", "train.epochs=4"],
}
EVERY = 7  # checkpoint.every_steps above: the most work a kill may lose

_CTX: Any = None
PRELOAD = ["torch", "torchvision", "sklearn.datasets", "safetensors.torch", "hydra", "stagetrain.app.cli",
           "stagetrain.runs.runner", "stagetrain.engine"]


def context() -> Any:
    """A forkserver that has imported torch and stagetrain once; each child forks from it."""
    global _CTX
    if _CTX is None:
        ctx = mp.get_context("forkserver")
        # modules on the server's own path (Python 3.11's forkserver ignores the parent's
        # sys.path, and swallows an ImportError): the victim module itself is small
        ctx.set_forkserver_preload(PRELOAD)
        _CTX = ctx
    return _CTX


@dataclass
class Attempt:
    plan: dict[str, Any] | None
    exitcode: int | None
    record: dict[str, int]
    seconds: float
    resumed_from: int | None = None  # global step of the checkpoint the next process used


@dataclass
class ScenarioResult:
    name: str
    attempts: list[Attempt] = field(default_factory=list)
    kills: int = 0
    planned: int = 0
    lost_steps: list[int] = field(default_factory=list)  # per kill: steps done minus the step resumed from
    reference_seconds: float = 0.0
    seconds: float = 0.0
    weights_identical: bool = False
    metrics_identical: bool = False
    epochs_exactly_once: bool = False
    completed: bool = False
    kinds: Counter = field(default_factory=Counter)
    temp_files_left: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "kills": self.kills, "planned": self.planned, "attempts": len(self.attempts),
                "completed": self.completed, "weights_identical": self.weights_identical,
                "metrics_identical": self.metrics_identical, "epochs_exactly_once": self.epochs_exactly_once,
                "lost_steps_max": max(self.lost_steps, default=0),
                "lost_steps_mean": sum(self.lost_steps) / max(len(self.lost_steps), 1),
                "kill_kinds": dict(self.kinds), "temp_files_left": len(self.temp_files_left), "reference_seconds": round(self.reference_seconds, 2),
                "seconds": round(self.seconds, 2)}


def launch(args: list[str], run: Path, plan: dict[str, Any] | None, tag: str,
           wall_delay: float | None = None, timeout: float = 240) -> Attempt:
    """One process: the CLI on ``run`` with ``resume=auto``, killed per ``plan``."""
    logs = run.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    record = logs / f"{run.name}-{tag}.rec"
    env = {"STAGETRAIN_DATA": str(DATA_ROOT)}
    proc = context().Process(target=child_main, args=(
        [*args, f"hydra.run.dir={run}", "resume=auto"], plan, str(record), str(logs / f"{run.name}-{tag}.log"), env))
    start = time.perf_counter()
    proc.start()
    if wall_delay is not None:
        proc.join(wall_delay)
        if proc.exitcode is None:
            proc.kill()
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise AssertionError(f"{run}: attempt {tag} hung for {timeout} s (log: {logs})")
    return Attempt(plan, proc.exitcode, read_record(record), time.perf_counter() - start)


def required_plans(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The moments every scenario is killed at, whatever the random draw: inside a last.pt
    write in each phase, inside a stage checkpoint write, at the end of the first stage and
    the start of the second (a stage transition), mid-way through the second stage, and
    right after the first growth."""
    at = event_steps(events)
    ends = [at[i] for i, e in enumerate(events) if e.get("event") == "stage_end"]
    starts = [at[i] for i, e in enumerate(events) if e.get("event") == "stage_start"]
    growths = [at[i] for i, e in enumerate(events) if e.get("event") == "growth"]
    plans = [{"kind": "write", "at": 1, "phase": "partial", "file": "last.pt"},
             {"kind": "write", "at": max(8, ends[0] // 2), "phase": "between", "file": "last.pt"},
             {"kind": "event", "at": ends[0], "event": "stage_end"},
             {"kind": "write", "at": ends[0], "phase": "tmp", "file": "stage-*.pt"}]
    if len(starts) > 1:
        plans.append({"kind": "event", "at": starts[1], "event": "stage_start"})
    if len(ends) > 1:  # mid-way through the second stage (layerwise: its cache built, and rebuilt)
        plans.append({"kind": "step", "at": (ends[0] + ends[1]) // 2})
    if growths:
        plans.append({"kind": "event", "at": growths[0], "event": "growth"})
    return plans


def event_steps(events: list[dict[str, Any]]) -> list[int]:
    """The global step at each event (events without a ``step`` take the last one seen)."""
    steps, step = [], 0
    for e in events:
        step = e.get("step", step)
        steps.append(step)
    return steps


def draw_plans(rng: random.Random, n: int, total_steps: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``n`` kill plans at increasing moments over a run of ``total_steps`` steps.

    A mix: plain steps, each checkpoint-write phase, stage transitions and growths (taken
    from the reference run's events), and wall-clock delays.
    """
    marks = sorted(rng.randint(1, max(1, total_steps - 1)) for _ in range(n))
    transitions = [(e["event"], step) for e, step in zip(events, event_steps(events), strict=True)
                   if e.get("event") in ("stage_start", "stage_end", "growth")]
    plans = []
    for at in marks:
        kind = rng.choice(["step", "step", "write", "write", "write", "event", "wall"])
        if kind == "step":
            plans.append({"kind": "step", "at": at})
        elif kind == "write":
            file = rng.choice(["last.pt", "last.pt", "stage-*.pt", "best.pt", "run.json", "*"])
            if file == "stage-*.pt":  # stage checkpoints are written at stage ends only
                at = next((step for ev, step in transitions if ev == "stage_end" and step >= at), at)
            plans.append({"kind": "write", "at": at, "phase": rng.choice(["partial", "tmp", "between"]),
                          "file": file})
        elif kind == "event":
            later = [t for t in transitions if t[1] >= at] or transitions
            ev, step = rng.choice(later[:3])
            plans.append({"kind": "event", "at": step, "event": ev})
        else:
            plans.append({"kind": "wall", "at": at, "delay": round(rng.uniform(0.2, 2.0), 3)})
    return plans


def kind_name(plan: dict[str, Any] | None) -> str:
    """``step``, ``write:<phase>``, ``event:<event>`` or ``wall``."""
    if plan is None or plan["kind"] == "wall":
        return "wall"
    extra = plan.get("phase") or plan.get("event")
    return f"{plan['kind']}:{extra}" if extra else plan["kind"]


def load_final(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def strip_timing(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in TIMING_KEYS} for e in events]


def epochs_exactly_once(run: Path) -> bool:
    events = read_metrics(run / "metrics.jsonl")
    keys = Counter((e["stage"], e["epoch"], e["split"]) for e in events if "split" in e)
    if any(n != 1 for n in keys.values()):
        return False
    info = json.loads((run / "run.json").read_text())
    return all(sorted(e for (st, e, sp) in keys if st == s["stage"] and sp == split) == list(range(1, s["epochs"] + 1))
               for s in info["stages"] for split in ("train", "val"))


def reference_run(name: str, args: list[str], root: Path) -> tuple[Path, float]:
    """The uninterrupted run every killed run of ``name`` is compared with."""
    reference = root / f"{name}-reference"
    ref = launch(args, reference, None, "ref")
    assert ref.exitcode == 0, f"reference run {name} failed ({ref.exitcode}); see {root / 'logs'}"
    return reference, ref.seconds


def run_scenario(name: str, args: list[str], root: Path, kills: int, seed: int,
                 required: bool = True, reference: Path | None = None,
                 max_attempts: int | None = None) -> ScenarioResult:
    """A run killed ``kills`` times (at least; plus the ``required_plans`` moments) and
    resumed with ``resume=auto`` until it completes, checked against the reference run."""
    result = ScenarioResult(name)
    start = time.perf_counter()
    if reference is None:
        reference, result.reference_seconds = reference_run(name, args, root)
    ref_events = read_metrics(reference / "metrics.jsonl")
    total = json.loads((reference / "run.json").read_text())["global_step"]
    rng = random.Random(f"{seed}-{name}")
    plans = draw_plans(rng, kills, total, ref_events)
    if required:
        plans = sorted(required_plans(ref_events) + plans, key=lambda p: p["at"])
        kills = len(plans)
    result.planned = kills
    run = root / f"{name}-killed-{seed}"
    pending = list(plans)
    limit = max_attempts or kills * 3 + 10
    while len(result.attempts) < limit:
        plan = pending.pop(0) if pending else None
        if plan is None and result.kills < kills:  # a plan that never fired: draw a step kill later on
            done = json.loads((run / "run.json").read_text()) if (run / "run.json").exists() else {}
            if done.get("status") != "completed":
                plan = {"kind": "step", "at": rng.randint(1, max(1, total - 1))}
        delay = plan["delay"] if plan and plan["kind"] == "wall" else None
        attempt = launch(args, run, plan if plan and plan["kind"] != "wall" else None,
                         f"{len(result.attempts):03d}", wall_delay=delay)
        result.attempts.append(attempt)
        if attempt.exitcode == -9:
            result.kills += 1
            result.kinds[kind_name(plan)] += 1
            continue
        assert attempt.exitcode == 0, (
            f"{name}: attempt {len(result.attempts) - 1} exited {attempt.exitcode} (plan {plan}); see {root / 'logs'}")
        if json.loads((run / "run.json").read_text())["status"] == "completed":
            break
    result.completed = json.loads((run / "run.json").read_text())["status"] == "completed"
    _finish(result, reference, run, ref_events)
    result.seconds = time.perf_counter() - start
    return result


def _finish(result: ScenarioResult, reference: Path, run: Path, ref_events: list[dict[str, Any]]) -> None:
    # lost work: steps done when killed minus the step the next process resumed from
    # (a process killed before its engine started did no work; the next one that started says
    # where training resumed)
    for i, a in enumerate(result.attempts):
        if a.exitcode != -9 or not a.record["started"]:
            continue
        nxt = next((b for b in result.attempts[i + 1:] if b.record["started"]), None)
        if nxt is not None:
            a.resumed_from = nxt.record["resumed"]
            result.lost_steps.append(max(0, a.record["completed"] - a.resumed_from))
    ref_w, got_w = load_final(reference), load_final(run)
    result.weights_identical = ref_w.keys() == got_w.keys() and all(torch.equal(ref_w[k], got_w[k]) for k in ref_w)
    result.metrics_identical = strip_timing(ref_events) == strip_timing(read_metrics(run / "metrics.jsonl"))
    result.epochs_exactly_once = epochs_exactly_once(run)
    result.temp_files_left = sorted(p.name for p in run.rglob(".*.tmp"))
