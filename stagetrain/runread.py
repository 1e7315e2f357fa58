"""Reading run directories defensively, for reports and sweep summaries.

A run directory may hold anything: a run.json truncated by a full disk, hand-edited into a
list, with ``"config": null`` or an error that is a number; a metrics.jsonl with a garbage
or binary line that a resumed run kept. Nothing here raises on such content: a file that
cannot be used gives a run of status ``unreadable`` with the reason, a bad metrics line is
skipped and reported, and every field a report reads comes back with the type it expects.
Files are opened through the gate (``userfile``, kind ``record``): a run.json or
metrics.jsonl that is a FIFO, a device or larger than a run record can be is unreadable,
never read (a report never hangs). Text a report prints from a run directory goes through
``clean`` first: a run name or error message cannot drive the terminal. No torch:
``stagetrain-report`` starts in well under a second.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError

# terminal control sequences: CSI (ESC [ ... final), OSC / DCS / SOS / PM / APC (ESC ] ... BEL or
# ESC \\), their 8-bit forms, then any other ESC + one character
_SEQUENCE = re.compile(r"(\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"
                       r"|(\x1b[\]P^_X]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(\x07|\x1b\\|\x9c)?"
                       r"|\x1b[ -~]?")
# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional overrides that
# reorder what a terminal shows (U+202A-202E, U+2066-2069)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: Any) -> Any:
    """``text`` with terminal control sequences removed and other control characters shown
    as ``?`` (tab and newline kept); a value that is not a string is returned as it is."""
    if not isinstance(text, str):
        return text
    return _CONTROL.sub("?", _SEQUENCE.sub("", text))


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
        info = json.loads(userfile.read_bytes(path, "", "record").decode("utf-8"))
    except StagetrainError as e:  # a FIFO, a device, a folder, too large, a link loop: not read
        return unreadable(str(e))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
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
        data = userfile.read_bytes(path, "", "record")
    except StagetrainError as e:
        return [], [str(e)]
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
    keys = tune.get("keys") if isinstance(tune.get("keys"), list) else None
    for key in keys or [k for k in selected if k != "run_dir"]:
        config[str(key)] = "tuned"
    return config


def under_trained_flag(info: dict[str, Any]) -> bool | None:
    """Whether a run has an under-trained stage (``under_trained``: a stage still
    falling at its end, or barely beyond its trivial baseline); None for a run recorded
    before run.json had a ``convergence`` list (unknown: no flag)."""
    return under_trained(info) if isinstance(info.get("convergence"), list) else None


def baseline(info: dict[str, Any], key: str = "acc") -> float | None:
    """The trivial baseline ("chance") of a run's ``acc`` (run.json ``baselines.accuracy``,
    the majority class) or, for ``loss``, of its last stage's objective (its ``convergence``
    entry); None for runs recorded without them."""
    if key == "acc":
        baselines = info.get("baselines") if isinstance(info.get("baselines"), dict) else {}
        acc = baselines.get("accuracy") if isinstance(baselines.get("accuracy"), dict) else {}
        return number(acc.get("value"))
    entries = info.get("convergence") if isinstance(info.get("convergence"), list) else []
    entries = [e for e in entries if isinstance(e, dict)]
    return number(entries[-1].get("baseline")) if entries else None


def fmt(v: Any) -> str:
    """The one number format of stagetrain's tables: integers with thousands separators
    (50,826), every other number to 4 significant digits (0.9583, 12.35, 1.234e+09)."""
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def under_trained(info: dict[str, Any]) -> bool:
    """Whether a run (run.json's content) has an under-trained stage.

    True when any entry of its ``convergence`` list has ``converged`` false (the stage's loss
    was still falling at its end) or ``barely_learnt`` true (it ended within 10% of its
    trivial baseline), except a stage the model grew after (``before_growth``), or when the
    source run a fine-tune started from had one (``source.under_trained``). Runs recorded
    before the list existed (no ``convergence`` key, or not a list) are unknown, and unknown
    reads as False: never a crash on an old run.json.
    """
    src = info.get("source") if isinstance(info, dict) else None
    if isinstance(src, dict) and src.get("under_trained") is True:
        return True
    entries = info.get("convergence") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        return False
    return any(flagged(e) for e in entries)


def flagged(entry: Any) -> bool:
    """One ``convergence`` entry that makes its run under-trained: still falling or barely
    learnt, and not a stage the model grew after."""
    return isinstance(entry, dict) and not entry.get("before_growth") and (
        entry.get("converged") is False or entry.get("barely_learnt") is True)
