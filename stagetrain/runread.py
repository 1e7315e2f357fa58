"""Reading run directories defensively, for reports and sweep summaries.

A run directory may hold anything: a run.json truncated by a full disk, hand-edited into a
list, with ``"config": null`` or an error that is a number; a metrics.jsonl with a garbage
or binary line that a resumed run kept. Nothing here raises on such content: a file that
cannot be used gives a run of status ``unreadable`` with the reason, a bad metrics line is
skipped and reported, and every field a report reads comes back with the type it expects.
No torch: ``stagetrain-report`` starts in well under a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_RUN_JSON_BYTES = 64 * 1024**2  # a run.json is a few kB; anything this large is not one


def number(v: Any) -> float | int | None:
    """A finite number, else None (a string, a list, null, NaN in a hand-edited file)."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return v if math.isfinite(v) else None


def unreadable(reason: str) -> dict[str, Any]:
    return {"status": "unreadable", "error": reason, "config": {}, "final": {}}


def read_info(run: Path) -> dict[str, Any]:
    """run.json of ``run`` with every field a report uses of the expected type; a file
    that cannot be read or is not a run record gives status ``unreadable`` and the reason."""
    path = Path(run) / "run.json"
    try:
        if path.stat().st_size > MAX_RUN_JSON_BYTES:
            return unreadable(f"run.json: {path.stat().st_size:,} bytes is too large to be a run record")
        info = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return unreadable(f"run.json: {type(e).__name__}: {str(e)[:200]}")
    if not isinstance(info, dict):
        return unreadable(f"run.json holds a JSON {type(info).__name__}, not a run record (an object)")
    out = dict(info)
    out["config"] = info["config"] if isinstance(info.get("config"), dict) else {}
    final = info.get("final") if isinstance(info.get("final"), dict) else {}
    out["final"] = {str(k): number(v) for k, v in final.items()}
    for key in ("flops", "seconds"):
        out[key] = number(info.get(key))
    for key in ("strategy", "status", "stop_reason"):
        if key in info and not isinstance(info[key], str):
            out[key] = json.dumps(info[key])[:100]
    error = info.get("error")
    out["error"] = error if isinstance(error, str) else "" if error is None else json.dumps(error)[:300]
    if not isinstance(info.get("stages", []), list):
        out["stages"] = []
    return out


def read_events(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The events of a metrics.jsonl and a reason for every line that is not one (not
    UTF-8, not JSON, not an object). A half-written last line (a run being written) is
    left out silently."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return [], [f"{path}: {e.strerror or e}"]
    lines = data.split(b"\n")
    partial = not data.endswith(b"\n")
    events, problems = [], []
    for i, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            event = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            if not (partial and i == len(lines)):
                problems.append(f"{path} line {i}: {type(e).__name__}: {str(e)[:120]}")
            continue
        if not isinstance(event, dict):
            problems.append(f"{path} line {i}: a JSON {type(event).__name__}, not an event (an object)")
            continue
        events.append(event)
    return events, problems


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (lists as JSON text, so they compare and print)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out


def job_config(info: dict[str, Any]) -> dict[str, Any]:
    """A run's flat config; a tuned job's searched keys read ``tuned`` (its run.json holds the
    selected trial's values, which differ between seeds and must not split an arm's group)."""
    config = flatten(info.get("config", {}))
    tune = info.get("tune") if isinstance(info.get("tune"), dict) else {}
    selected = tune.get("selected") if isinstance(tune.get("selected"), dict) else {}
    for key in tune.get("keys") or [k for k in selected if k != "run_dir"]:
        config[str(key)] = "tuned"
    return config
