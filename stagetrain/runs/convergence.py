"""Did each stage train what it promised? Checks after a run, from metrics.jsonl and the
stages' summaries, for every stage objective (supervised, lm, mlm, autoencoder, denoising,
rbm; through the model's head or a helper: greedy layer-wise stages, finetune's in-run
pretraining, grow's stages):

- *still falling*: judged on the stage's **validation loss of its own objective** (the
  loss the stage logs for its val split each epoch: an auxiliary head's cross-entropy, the
  masked tokens' cross-entropy, the reconstruction error; an RBM logs its mean-field
  reconstruction error there, not its contrastive-divergence loss, which is not comparable
  across epochs) **and** its training loss: a stage is still falling when both are (a
  training loss that falls while the validation loss does not is fitting, not learning; a
  validation loss that falls while the training loss has settled is the decaying LR's
  noise -- the rule on the training loss alone was calibrated in issue 17); with one curve
  only (no validation split; an RBM's CD), on that one. A curve with at least 4 epochs: more than ``STEEP`` of the
  stage's whole fall happened in its second half (a validation curve's fall counted from
  the first epoch's training loss, the closest the log comes to the stage's start). With 2-3 epochs: the last epoch took more
  than ``SHORT_FALL`` off the loss. A converged stage makes nearly all its progress early (a
  20-epoch digits MLP: 0.3% in the second half); an under-trained one is still descending
  when its schedule ends (the default linear probe of issue 17: 6.6%; 6 epochs of MLM on
  fortunes texts: still at a byte-frequency model's loss, issue 29). A one-epoch stage
  cannot be judged (``converged`` null). A stage stopped by patience, a plateau
  (``epochs=auto``) or its target has converged by definition, and so has a classifier
  whose final training accuracy is ``FITTED`` (its training set is learnt: more epochs
  sharpen its confidence, and its losses keep falling, but its answers stay). An RBM
  without validation data cannot be judged.
- *barely learnt*: its final metric is within ``BARELY`` (10%) of the stage's trivial
  baseline (``runs/baselines.py``: majority class, unigram, mean image): "chance".
- *near chance*: its final training accuracy is below 1.5 x chance (1 / classes).

Each finding is logged as a warning and listed in run.json under ``warnings``; run.json's
``convergence`` lists every stage's verdict and ``baselines`` what was computed;
``under_trained`` reads them back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from stagetrain.nn.objective_registry import find as find_objective

log = logging.getLogger("stagetrain")
STEEP = 0.05  # share of a stage's loss fall that happened in its second half (4+ epochs)
SHORT_FALL = 0.01  # 2-3 epochs: the last epoch's relative fall of the loss above which it is still falling
FITTED = 0.99  # final training accuracy at which a falling training loss is no longer a warning
BARELY = 0.10  # within this share of the baseline: barely learnt
SETTLED = ("patience", "plateau", "target")  # stop reasons that mean the stage's metric stopped improving


def _series(events: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, list[Any]]]:
    """Per stage: its val losses and its (training loss, training accuracy) per epoch."""
    out: dict[tuple[int, str], dict[str, list[Any]]] = {}
    for e in events:
        if e.get("split") in ("train", "val") and "loss" in e and "stage" in e:
            s = out.setdefault((e["stage"], e.get("stage_name", "?")), {"train": [], "val": []})
            s[e["split"]].append(float(e["loss"]) if e["split"] == "val" else (float(e["loss"]), e.get("acc")))
    return out


def still_falling(loss: list[float], start: float | None = None) -> tuple[bool, str] | None:
    """Whether a loss curve (one value per epoch) was still falling at its end, and how;
    None with fewer than 2 points. ``start``: the loss before the first value (a validation
    curve's: the first epoch's training loss), so the whole fall counts from the stage's start."""
    n = len(loss)
    if n < 2:
        return None
    if n < 4:
        fall = (loss[-2] - loss[-1]) / max(abs(loss[-2]), 1e-12)
        return fall > SHORT_FALL, f"{loss[-2]:.4g} -> {loss[-1]:.4g} over its last epoch ({fall:.1%})"
    if start is not None and start > loss[0]:
        loss = [start, *loss]
    half = len(loss) // 2
    share = (loss[half] - loss[-1]) / (loss[0] - loss[-1]) if loss[0] > loss[-1] else 0.0
    return share > STEEP, (f"{loss[half]:.4g} -> {loss[-1]:.4g} over its second half, {share:.0%} of its whole fall")


def _judge(s: dict[str, list[Any]], objective: str, stop: str | None) -> tuple[bool | None, str, str]:
    """(converged, which loss was judged, how it ended)."""
    which = "validation" if s["val"] else "training"
    train = s["train"]
    if stop in SETTLED:
        return True, which, f"stopped: {stop}"
    if train and train[-1][1] is not None and float(train[-1][1]) >= FITTED:  # more epochs: sharper, not better
        return True, which, f"training accuracy {float(train[-1][1]):.3g}: the training set is learnt"
    kind = find_objective(objective)  # None: an unknown name (an old or hand-made run.json), judged as comparable
    comparable = [p[0] for p in train] if kind is None or kind.comparable_loss else []  # CD is no comparable loss
    on_train = still_falling(comparable) if comparable else None
    on_val = still_falling(s["val"], comparable[0] if comparable else None) if s["val"] else None
    if on_val is None or on_train is None:  # one curve to judge (or none)
        verdict = on_val or on_train
        return (None if verdict is None else not verdict[0]), which if on_val else "training", verdict[1] if verdict else ""
    return not (on_val[0] and on_train[0]), which, on_val[1] + ("" if on_train[0] else "; training loss settled")


def _beyond(metric: str, final: float | None, base: float | None) -> float | None:
    if final is None or base is None or base != base:
        return None
    if metric == "acc":
        return (final - base) / (1 - base) if base < 1 else None
    return (base - final) / base if base > 0 else None


def convergence(stages: list[dict[str, Any]], events: list[dict[str, Any]],
                baselines: list[dict[str, Any] | None] | None = None,
                before_growth: frozenset[int] = frozenset()) -> list[dict[str, Any]]:
    """run.json's ``convergence``: one entry per finished stage (``stages``: run.json's
    stage summaries; ``baselines``: ``baselines.for_plan``'s per-stage list, by stage index;
    ``before_growth``: the stages after which the model grows -- short on purpose, so their
    entries are recorded but mark no run under-trained)."""
    series = _series(events)
    out = []
    for summary in stages:
        k, name, objective = summary["stage"], summary["name"], summary.get("objective", "supervised")
        s = series.get((k, name), {"train": [], "val": []})
        converged, which, how = _judge(s, objective, summary.get("stop_reason"))
        base = (baselines or [])[k - 1] if baselines and k - 1 < len(baselines) else None
        metric = base["metric"] if base else "loss"
        final = summary.get("final") or {}
        value = final.get(f"val/{metric}", final.get(f"train/{metric}"))
        value = None if value is None else float(value)
        beyond = _beyond(metric, value, base["value"] if base else None)
        out.append({"stage": k, "name": name, "objective": objective, "metric": metric, "final": value,
                    "baseline": base["value"] if base else None, "baseline_kind": base["kind"] if base else None,
                    "beyond_baseline": beyond, "converged": converged,
                    "barely_learnt": beyond is not None and beyond < BARELY,
                    "judged_on": f"{which} loss", "epochs": summary.get("epochs"), "how": how,
                    "before_growth": k in before_growth})
    return out


def growth_follows(plan: Any) -> frozenset[int]:
    """The (1-based) stages of ``plan`` that the next stage's growth ops end: progressive growth
    trains each intermediate size briefly by design, so such a stage still falling is the
    method, not an under-trained arm; the final size's stage is judged as every other."""
    stages = list(getattr(plan, "stages", []) or [])
    return frozenset(k for k in range(1, len(stages)) if getattr(stages[k], "ops", None))


def entry_warnings(entries: list[dict[str, Any]]) -> list[str]:
    """The log lines of the stages that did not converge or barely learnt."""
    out = []
    for e in entries:
        if e.get("before_growth"):  # reported in the closing table and run.json, not warned
            continue
        head = f"stage {e['stage']} ({e['name']}, {e['objective']})"
        if e["converged"] is False:
            out.append(f"{head}: {e['judged_on']} still falling at its end ({e['how']}); it is under-trained: "
                       "give it more epochs (epochs=auto where the strategy offers it) or a larger learning rate.")
        if e["barely_learnt"]:
            where = (f"is no better than chance ({e['baseline_kind']} {e['baseline']:.4g})" if e["beyond_baseline"] <= 0
                     else f"is within {BARELY:.0%} of chance ({e['baseline_kind']} {e['baseline']:.4g}; "
                     f"{e['beyond_baseline']:.1%} of the way beyond it)")
            out.append(f"{head}: barely learnt: its final val {e['metric']} {e['final']:.4g} {where}.")
    return out


def near_chance(events: list[dict[str, Any]], num_classes: int, skip: frozenset[int] = frozenset()) -> list[str]:
    """Stages (but those in ``skip``: before growth) whose final training accuracy is below 1.5 x 1/classes."""
    out = []
    for (stage, name), s in _series(events).items():
        acc = s["train"][-1][1] if s["train"] and stage not in skip else None
        if acc is not None and num_classes > 1 and float(acc) < 1.5 / num_classes:
            out.append(f"stage {stage} ({name}): training accuracy {float(acc):.3g} is near chance "
                       f"(1/{num_classes} classes): the stage did not learn its task.")
    return out


def stage_warnings(events: list[dict[str, Any]], num_classes: int) -> list[str]:
    """The warnings of every stage, from metrics.jsonl's events alone (no baselines)."""
    stages = [{"stage": k, "name": n, "objective": "supervised" if s["train"] and s["train"][-1][1] is not None
               else "?"} for (k, n), s in _series(events).items()]
    return entry_warnings(convergence(stages, events)) + near_chance(events, num_classes)


def check_run(info: dict[str, Any], run_dir: Path, num_classes: int,
              baselines: tuple[dict[str, Any], list[dict[str, Any] | None]] | None = None,
              before_growth: frozenset[int] = frozenset()) -> list[str]:
    """Add ``warnings``, ``convergence`` and ``baselines`` to ``info`` (run.json's content)
    and log the warnings; returns them. ``baselines``: ``baselines.for_plan``'s result."""
    from stagetrain.runs.rundir import read_metrics

    path = Path(run_dir) / "metrics.jsonl"
    events = read_metrics(path) if path.is_file() else []
    table, per_stage = baselines if baselines is not None else ({}, None)
    entries = convergence(info.get("stages") or [], events, per_stage, before_growth)
    found = entry_warnings(entries) + near_chance(events, num_classes, before_growth) + source_warnings(info)
    for w in found:
        log.warning("%s", w)
    info["warnings"], info["convergence"], info["baselines"] = found, entries, table
    return found


def source_warnings(info: dict[str, Any]) -> list[str]:
    """A fine-tune from a source run builds on that run's stages: when its run.json flags any
    (still falling or barely learnt, none before growth), record ``source.under_trained``
    (which ``under_trained`` reads) and warn. A source that is a bare weights file, or a run
    recorded before the check, is unknown: nothing is recorded."""
    from stagetrain.core.errors import StagetrainError
    from stagetrain.runs.rundir import RunDir

    src = info.get("source")
    path = Path(src["path"]) if isinstance(src, dict) and isinstance(src.get("path"), str) else None
    run_dir = next((p for p in (path.parent, path.parent.parent) if (p / "run.json").is_file()), None) if path else None
    if run_dir is None:
        return []
    try:
        entries = RunDir(run_dir).read_run_json().get("convergence")
    except StagetrainError as e:
        log.warning("The source run's record could not be read to check its stages: %s", e)
        return []
    if not isinstance(entries, list):
        return []
    from stagetrain.runread import flagged

    bad = [f"stage {e.get('stage')} ({e.get('name')})" for e in entries if flagged(e)]
    src["under_trained"] = bool(bad)
    return [f"the source run {run_dir} has under-trained stages ({', '.join(bad)}): this fine-tune builds on "
            "them, so its comparison measures the source's budget too; train the source longer "
            "(epochs=auto where its strategy offers it)."] if bad else []


def check_after_run(info: dict[str, Any], run_dir: Path, plan: Any, datasets: dict[str, Any], show: bool) -> None:
    """The end of a run: baselines (``baselines.for_plan``), ``check_run``, and, when the run
    shows progress, the convergence table (``banner.final_table``). A baseline that cannot
    be computed is logged and left out; it never fails the run."""
    from stagetrain.runs.baselines import for_plan

    try:
        found = for_plan(plan, datasets)
    except (RuntimeError, ValueError, IndexError, OSError) as e:
        log.warning("Could not compute the stages' trivial baselines: %s", e)
        found = None
    check_run(info, run_dir, datasets["target"].num_classes, found, growth_follows(plan))
    if show:
        from stagetrain.runs import banner

        banner.show(banner.final_table(info))
