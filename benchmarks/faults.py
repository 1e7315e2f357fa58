"""kill -9 at scale: each strategy SIGKILLed at random moments, resumed until done, 200 kills.

The harness of ``tests/faults`` (``tests/faults/harness.py``), run longer: for each
strategy (scratch; layerwise with ``strategy.cache=on``; grow across its growth steps;
finetune with gradual unfreezing after in-run pretraining), one uninterrupted reference
run, then ``--chains`` runs each killed ``kills / (4 * chains)`` times and resumed with
``resume=auto`` after every kill until it completes. Every chain includes the fixed
moments (inside a last.pt write: temp file half written, complete, between the two
renames; inside a stage-checkpoint write; at a stage end and the next stage start; right
after a growth) and the rest at seeded random steps, checkpoint writes, stage transitions
and wall-clock delays. Per chain it checks: the run completes, its final weights are
bit-identical to the reference's (CPU), metrics.jsonl equals the reference's apart from
timing fields (so every epoch is there exactly once), and the work lost per kill (steps
done when killed minus the step of the checkpoint resumed from) is at most
``checkpoint.every_steps``.

    python benchmarks/faults.py            # 200 kills, 5 chains per strategy (~10 min idle)
    python benchmarks/faults.py --quick    # 4 chains of a few kills: a smoke test
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchutil import REPO, RESULTS, RUN_ROOT, finish, machine

sys.path.insert(0, str(REPO / "tests"))

from faults.harness import (  # noqa: E402  (tests/ on the path first)
    COMMON,
    EVERY,
    SCENARIOS,
    reference_run,
    required_plans,
    run_scenario,
)

from stagetrain.runs.rundir import read_metrics  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 chain per strategy, the fixed moments only")
    p.add_argument("--kills", type=int, default=200, help="kills in all (default 200)")
    p.add_argument("--chains", type=int, default=5,
                   help="killed runs per strategy (default 5; more while fewer than kills/4 fired)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = p.parse_args()
    args.no_plot = True
    chains = 1 if args.quick else args.chains
    per_chain = 0 if args.quick else max(1, round(args.kills / (len(SCENARIOS) * chains)))
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="stagetrain-faults-bench-", dir=RUN_ROOT))
    result: dict[str, Any] = {"machine": machine(), "quick": args.quick, "seed": args.seed,
                              "checkpoint_every_steps": EVERY, "common_overrides": COMMON,
                              "scenarios": {k: v for k, v in SCENARIOS.items()}, "chains": []}
    ok = False
    try:
        for name, overrides in SCENARIOS.items():
            cmd = [*COMMON, *overrides]
            reference, ref_seconds = reference_run(name, cmd, root)
            n_required = len(required_plans(read_metrics(reference / "metrics.jsonl")))
            killed, c = 0, 0
            # chains until this strategy's share of the kills is reached (a drawn moment that
            # never comes, e.g. a best.pt write after the last improvement, fires no kill)
            while c < chains or (not args.quick and killed < args.kills / len(SCENARIOS) and c < 4 * chains):
                r = run_scenario(name, cmd, root, kills=max(0, per_chain - n_required),
                                 seed=args.seed * 1000 + c, reference=reference)
                killed += r.kills
                c += 1
                row = {**r.summary(), "chain": c - 1, "reference_seconds": round(ref_seconds, 2),
                       "lost_steps": r.lost_steps}
                result["chains"].append(row)
                print(f"{name} chain {c}: {r.kills} kills, completed={r.completed}, identical="
                      f"{r.weights_identical}, metrics={r.metrics_identical}, lost max "
                      f"{row['lost_steps_max']} steps, {r.seconds:.0f} s", flush=True)
                for d in root.glob(f"{name}-killed-*"):
                    shutil.rmtree(d, ignore_errors=True)
        ok = True
    finally:
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root} (logs/ there) for a look at what failed", flush=True)
    rows = result["chains"]
    lost = [x for r in rows for x in r["lost_steps"]]
    kinds: Counter = Counter()
    for r in rows:
        kinds.update(r["kill_kinds"])
    result["totals"] = {
        "kills": sum(r["kills"] for r in rows), "runs": len(rows),
        "runs_completed": sum(r["completed"] for r in rows),
        "runs_weights_identical": sum(r["weights_identical"] for r in rows),
        "runs_metrics_identical": sum(r["metrics_identical"] for r in rows),
        "runs_epochs_exactly_once": sum(r["epochs_exactly_once"] for r in rows),
        "processes": sum(r["attempts"] for r in rows),
        "lost_steps_measured": len(lost), "lost_steps_max": max(lost, default=0),
        "lost_steps_mean": statistics.fmean(lost) if lost else 0.0,
        "lost_steps_over_interval": sum(x > EVERY for x in lost),
        "kill_kinds": dict(kinds), "temp_files_left": sum(r["temp_files_left"] for r in rows),
    }
    print(result["totals"])
    finish(result, args, start, None)


if __name__ == "__main__":
    main()
