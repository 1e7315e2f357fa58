"""Did each stage train what it promised? Two checks after a run, from metrics.jsonl:

- *still falling* (stages that classify: their loss is comparable from start to end):
  more than ``STEEP`` of the stage's whole fall of the training loss
  happened in its second half (at least 4 epochs), unless its final training accuracy is
  ``FITTED`` (the training set is learnt; the loss then falls towards 0). A converged stage makes nearly all its
  progress early (a 20-epoch digits MLP: 0.3% in the second half); an under-trained one is
  still descending when its schedule ends (the default linear probe of issue 17: 6.6%).
  More epochs or a larger learning rate would change its result, so a comparison built on
  it measures the budget, not the method;
- *near chance*: its final training accuracy is below 1.5 x chance (1 / classes).

Each finding is logged as a warning and listed in run.json under ``warnings``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("stagetrain")
STEEP = 0.05  # share of a stage's training-loss fall that happened in its second half
FITTED = 0.99  # final training accuracy at which a falling loss is no longer a warning


def stage_warnings(events: list[dict[str, Any]], num_classes: int) -> list[str]:
    """The warnings of every stage, from metrics.jsonl's events."""
    losses: dict[tuple[int, str], list[tuple[float, float | None]]] = {}
    for e in events:
        if e.get("split") == "train" and "loss" in e:
            losses.setdefault((e["stage"], e.get("stage_name", "?")), []).append((float(e["loss"]), e.get("acc")))
    out = []
    for (stage, name), points in losses.items():
        loss = [p[0] for p in points]
        half = len(loss) // 2
        scored = points[-1][1] is not None and min(loss) > 0  # a classifier's loss, not CD's or a decoder's
        fitted = scored and points[-1][1] >= FITTED  # the training set is learnt: more epochs would only overfit
        if scored and not fitted and len(loss) >= 4 and loss[0] > loss[-1] and (loss[half] - loss[-1]) / (loss[0] - loss[-1]) > STEEP:
            out.append(f"stage {stage} ({name}): training loss still falling at its end ({loss[half]:.4g} -> "
                       f"{loss[-1]:.4g} over its second half, {(loss[half] - loss[-1]) / (loss[0] - loss[-1]):.0%} "
                       "of its whole fall); it is under-trained: give it more epochs or a larger learning rate.")
        acc = points[-1][1]
        if acc is not None and num_classes > 1 and float(acc) < 1.5 / num_classes:
            out.append(f"stage {stage} ({name}): training accuracy {float(acc):.3g} is near chance "
                       f"(1/{num_classes} classes): the stage did not learn its task.")
    return out


def check_run(info: dict[str, Any], run_dir: Path, num_classes: int) -> list[str]:
    """Add ``warnings`` to ``info`` (run.json's content) and log them; returns them."""
    from stagetrain.rundir import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    found = stage_warnings(read_metrics(path), num_classes) if path.is_file() else []
    for w in found:
        log.warning("%s", w)
    info["warnings"] = found
    return found


def under_trained(info: dict[str, Any]) -> bool:
    """Whether a run (run.json's content) has an under-trained stage.

    True when any entry of its ``convergence`` list has ``converged`` false (the stage's loss
    was still falling at its end) or ``barely_learnt`` true (it ended within 10% of its
    trivial baseline). Runs recorded before the list existed (no ``convergence`` key, or
    not a list) are unknown, and unknown reads as False: never a crash on an old run.json.
    """
    entries = info.get("convergence") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        return False
    return any(isinstance(e, dict) and (e.get("converged") is False or e.get("barely_learnt") is True)
               for e in entries)
