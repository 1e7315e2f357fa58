"""Comparisons with uncertainty: per group of runs (the arms of a sweep), the mean of a
metric over seeds with its t-interval, and the difference to the control arm, paired by
seed, with its interval and a verdict (``stats``). Used by the sweep summary and
``stagetrain-report``; reads only the rows ``report.load_rows`` makes.

The control is the rows matching ``control`` (``key=value``; default ``strategy=scratch``)
that agree with the arm on every grouping column that does not define the arm (e.g. the
label fraction of ``layerwise_vs_scratch``) -- or, when every run of a group has its own
equal-FLOPs control (``compare.scratch=true``: ``<run>/control``), those; with ``strategy=...`` as the control key, the
strategy's own options define the arm too. The transfer experiments compare each mode with
its no-transfer run: ``control=strategy.pretrain.enabled=False``.
"""

from __future__ import annotations

import math
from typing import Any

from stagetrain.report import stats

CONTROL = "strategy=scratch"
UNDER = "under-trained"  # a run with a stage still falling at its end or barely beyond its baseline
CONTROL_KEYS = ("strategy.arch_from", "strategy.flops", "compare.scratch")  # tell controls apart, not arms


def label_controls(rows: list[dict[str, Any]], by: list[str]) -> list[str]:
    """Equal-FLOPs controls (``<run>/control``) take their arm's grouping values and the
    strategy ``scratch control of <arm's strategy>``, so they group per arm; returns ``by``
    without the keys that differ only between controls."""
    from pathlib import Path

    by_run = {str(Path(r["run"])): r for r in rows}
    by = [k for k in by if k not in CONTROL_KEYS]
    for row in rows:
        parent = by_run.get(str(Path(row["run"]).parent)) if Path(row["run"]).name == "control" else None
        if parent is not None:
            row.update({k: parent.get(k) for k in by if k not in ("strategy", "seed")})
            row["strategy"] = f"scratch control of {parent.get('strategy')}"
    return by


def _is_control(row: dict[str, Any], key: str, value: str) -> bool:
    return str(row.get(key)) == value


def _context(by: list[str], key: str) -> list[str]:
    """The grouping columns an arm and its control share."""
    arm_keys = {key} | ({k for k in by if k.startswith("strategy.")} if key == "strategy" else set())
    return [k for k in by if k not in arm_keys and k != "seed"]


def with_intervals(groups: list[dict[str, Any]], rows: list[dict[str, Any]], by: list[str],
                   metric: str = "test/acc", control: str = CONTROL, level: float = stats.LEVEL) -> list[dict[str, Any]]:
    """``groups`` (``report.group_rows``) with, per group: ``<metric> ±`` (t-interval half-width
    over seeds), and against the control: ``diff``, ``diff low``, ``diff high``, ``pairs`` and
    ``verdict``. ``higher is better`` for accuracies, lower for losses."""
    key, _, value = control.partition("=")
    done = [r for r in rows if r.get("status") == "completed" and isinstance(r.get(metric), int | float)]
    context = _context(by, key)
    pct = f"{level * 100:g}%"
    out = []
    for g in groups:
        members = [r for r in done if all(r.get(k) == g.get(k) for k in by)]
        mean, half = stats.mean_ci([r[metric] for r in members], level)
        g = {**g, f"{metric} mean": mean, f"{metric} ±{pct}": half}
        own = _own_controls(members, done)
        if own or (key in by and not _is_control(g, key, value)):
            ctrl = own or [r for r in done if _is_control(r, key, value) and all(r.get(k) == g.get(k) for k in context)]
            if ctrl:
                d = stats.paired({r.get("seed", 0): r[metric] for r in members},
                                 {r.get("seed", 0): r[metric] for r in ctrl}, level)
                verdict = stats.verdict(d["low"], d["high"], not metric.endswith("loss"))
                g.update({"vs": "own equal-FLOPs scratch" if own else control, "pairs": d["n"], "diff": d["diff"], "diff low": d["low"],
                          "diff high": d["high"],
                          "verdict": flag_verdict(verdict, bool(g.get(UNDER)), any(r.get(UNDER) for r in ctrl))})
        out.append(g)
    return out


def flag_verdict(verdict: str, arm_under: bool, control_under: bool = False) -> str:
    """The verdict with the under-training flag: an under-trained arm's "worse" reads
    "under-trained" (it measures the budget, not the method); its other verdicts, and every
    verdict against an under-trained control, carry the flag beside them."""
    if arm_under:
        return UNDER if verdict == "worse" else f"{verdict} ({UNDER})"
    return f"{verdict} (control {UNDER})" if control_under else verdict


def _own_controls(members: list[dict[str, Any]], done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The equal-FLOPs controls (``<run>/control``, compare.scratch=true) of every member, or []."""
    from pathlib import Path

    by_run = {str(Path(r["run"])): r for r in done}
    own = [by_run.get(str(Path(m["run"]) / "control")) for m in members]
    return [r for r in own if r is not None] if members and all(own) else []


def verdict_note(metric: str, control: str, level: float = stats.LEVEL) -> str:
    """The sentence that states what the verdict column means."""
    return (f"verdict: {metric} of the arm minus its control ({control}, same other settings), paired by "
            f"seed; 'better'/'worse' when the two-sided {level * 100:g}% t-interval of the mean difference "
            "excludes 0, else 'no evidence' (also with fewer than 2 seeds). 'under-trained' instead of "
            "'worse', '(under-trained)' beside any other verdict: a run of the arm has a stage still "
            "falling at its end or within 10% of its trivial baseline (run.json convergence); "
            "'(control under-trained)': the control's. chance: the trivial baseline (majority class).")


def interval_points(groups: list[dict[str, Any]], metric: str = "test/acc") -> list[tuple[float, float, float]]:
    """(mean FLOPs, mean metric, half-width) per group, for the summary plot's error bars."""
    pts = []
    for g in groups:
        half = next((v for k, v in g.items() if k.startswith(f"{metric} ±")), math.nan)
        x, y = g.get("flops mean"), g.get(f"{metric} mean")
        if isinstance(x, int | float) and isinstance(y, int | float) and not math.isnan(half):
            pts.append((float(x), float(y), float(half)))
    return pts


def verdict_rows(groups: list[dict[str, Any]], by: list[str], metric: str = "test/acc") -> list[dict[str, str]]:
    """The answer of a comparison, one short row per arm: arm, n, mean ± interval, the control it
    is compared with, the paired difference [interval] and the verdict (``with_intervals``'s groups)."""
    out = []
    for g in groups:
        half = next((v for k, v in g.items() if k.startswith(f"{metric} ±")), None)
        mean = g.get(f"{metric} mean")
        diff = g.get("diff")
        out.append({
            "arm": _arm(g, by), "n": str(g.get("runs", "")),
            "mean ± interval": "" if mean is None else f"{_num(mean)} ± {_num(half)}",
            "vs": _short_control(g.get("vs")),
            "difference [interval]": "" if diff is None else
            f"{diff:+.4f} [{_num(g.get('diff low'), '+')}, {_num(g.get('diff high'), '+')}]",
            **({"chance": _num(g.get("chance"))} if any("chance" in h for h in groups) else {}),
            "verdict": str(g.get("verdict") or _control_verdict(g, diff)),
        })
    return out


def _control_verdict(g: dict[str, Any], diff: Any) -> str:
    """A group without a difference: the control (flagged when under-trained), or blank."""
    if diff is not None or g.get("vs") is not None:
        return ""
    return f"control ({UNDER})" if g.get(UNDER) else "control"


def _arm(g: dict[str, Any], by: list[str]) -> str:
    """``layerwise label_fraction=0.1``: the strategy, then the last part of each other key."""
    from stagetrain.runread import fmt

    parts = [str(g[k]) if k == "strategy" else f"{k.rsplit('.', 1)[-1]}={g[k] if isinstance(g[k], int) else fmt(g[k])}"
             for k in by if g.get(k) is not None]
    return " ".join(parts) or "(all runs)"


def _num(v: Any, sign: str = "") -> str:
    return "n/a" if not isinstance(v, int | float) or math.isnan(v) else f"{v:{sign}.4f}"


def _short_control(vs: Any) -> str:
    """``strategy=scratch`` -> ``scratch``; the own equal-FLOPs controls -> ``own scratch``."""
    if vs is None:
        return ""
    return "own scratch" if str(vs).startswith("own ") else str(vs).partition("=")[2] or str(vs)


WIDTH = 100  # the verdict table fits a 100-column terminal; the wide table goes to files


def print_verdicts(groups: list[dict[str, Any]], by: list[str], title: str, metric: str = "test/acc",
                   console: Any = None) -> None:
    """The compact verdict table on the terminal, at most ``WIDTH`` columns wide: long arm
    names wrap, the numbers never do, a flagged verdict takes two lines. ``chance`` is a
    column only where it differs between the arms, else in the title."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from stagetrain.runread import clean

    if console is None:
        from stagetrain.progress import make_console

        term = make_console()
        console = Console(width=min(WIDTH, term.width) if term.is_terminal else WIDTH, soft_wrap=False)
    from rich import box

    level = next((k.split("±")[1] for g in groups for k in g if k.startswith(f"{metric} ±")), "")
    rows = verdict_rows(groups, by, metric)
    chance = {r.pop("chance") for r in rows if "chance" in r} if len({r.get("chance") for r in rows}) == 1 else set()
    if chance:  # one chance for every arm: in the title, so the arm column keeps its width
        title += f"; chance {chance.pop()}"
    table = Table(title=Text(clean(title)), box=box.SIMPLE_HEAD, expand=True)
    cols = list(rows[0]) if rows else ["arm", "n", "mean ± interval", "vs", "difference [interval]", "verdict"]
    for col in cols:
        wrap = col in ("arm", "vs", "verdict")  # a flagged verdict may take two lines, never an ellipsis
        name = f"{metric} ± {level}".strip() if col == "mean ± interval" else col
        table.add_column(Text(name), overflow="fold" if wrap else "ellipsis", no_wrap=not wrap,
                         ratio=1 if col == "arm" else None, max_width=16 if col == "verdict" else None)
    style = {"better": "green", "worse": "red", UNDER: "yellow"}
    for r in rows:
        table.add_row(*(Text(clean(v)) for v in r.values()), style=style.get(r["verdict"]))
    console.print(table)
