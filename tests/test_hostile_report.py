"""stagetrain-report over damaged run directories: a malformed run.json or metrics line is
listed as unreadable with the reason, the rest of the report is produced, no traceback, and
the run directories are left exactly as they were.

Every row runs the real ``stagetrain.report.command.main`` in-process on a copy of one real run.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from hostile import fingerprint, good_run  # noqa: F401 - good_run: the session's real run (fixture)

from stagetrain.report import command as report


def _write(name: str, data: bytes | str) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        path = run / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return mutate


def _edit(**changes: object) -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        info = json.loads((run / "run.json").read_text())
        info.update(changes)
        (run / "run.json").write_text(json.dumps(info))
    return mutate


def _metrics_line(line: bytes, where: str = "middle") -> Callable[[Path], None]:
    def mutate(run: Path) -> None:
        lines = (run / "metrics.jsonl").read_bytes().splitlines(keepends=True)
        at = {"middle": len(lines) // 2, "first": 0, "end": len(lines)}[where]
        (run / "metrics.jsonl").write_bytes(b"".join([*lines[:at], line + b"\n", *lines[at:]]))
    return mutate


def _truncate_run_json(run: Path) -> None:
    data = (run / "run.json").read_bytes()
    (run / "run.json").write_bytes(data[: len(data) // 2])


def _metrics_dir(run: Path) -> None:
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").mkdir()


def _run_json_link_loop(run: Path) -> None:
    (run / "run.json").unlink()
    (run / "run.json").symlink_to("run.json")


NESTED = "[" * 100_000 + "]" * 100_000
# (id, what is done to the damaged run, extra report arguments, text the output must hold)
CASES: list[tuple[str, Callable[[Path], None], list[str], str]] = [
    ("run.json is []", _write("run.json", "[]"), [], "holds a JSON list"),
    ("run.json is null", _write("run.json", "null"), [], "holds a JSON NoneType"),
    ("run.json is a string", _write("run.json", '"done"'), [], "holds a JSON str"),
    ("run.json is a number", _write("run.json", "3.5"), ["--plot", "p.png"], "holds a JSON float"),
    ("run.json is empty", _write("run.json", ""), [], "JSONDecodeError"),
    ("run.json is truncated", _truncate_run_json, ["--plot", "p.png"], "JSONDecodeError"),
    ("run.json is binary", _write("run.json", b"\xff\xfe\x00\x01garbage"), [], "UnicodeDecodeError"),
    ("run.json is deeply nested", _write("run.json", NESTED), [], "RecursionError"),
    ("run.json has NaN tokens", _write("run.json", '{"status": NaN, "final": NaN}'), [], "NaN"),
    ("run.json is a symlink loop", _run_json_link_loop, [], "run.json"),
    ("config is null", _edit(config=None), ["--plot", "p.png"], "2 runs"),
    ("config is a list", _edit(config=[1, 2]), ["--csv", "t.csv"], "2 runs"),
    ("error is a number", _edit(status="failed", error=42), [], "failed:"),
    ("tune keys is a number", _edit(tune={"keys": 5}), ["--group-by", "strategy"], "2 runs"),
    ("error is an object", _edit(status="failed", error={"why": "x"}), [], '"why"'),
    ("error is a list", _edit(status="failed", error=["a", "b"]), ["--markdown", "t.md"], "failed:"),
    ("status is a number", _edit(status=7), [], "7"),
    ("strategy is an object", _edit(strategy={"x": 1}), ["--group-by", "strategy"], "runs"),
    ("final metric is a string + --plot", _edit(final={"test/acc": "high", "val/acc": "x"}), ["--plot", "p.png"],
     "completed"),
    ("final is a list + --plot", _edit(final=[0.9]), ["--plot", "p.png"], "completed"),
    ("final is null + --group-by", _edit(final=None), ["--group-by", "strategy"], "runs"),
    ("flops is a string + --plot", _edit(flops="many"), ["--plot", "p.png"], "completed"),
    ("flops is negative infinity + --plot", _write("run.json", '{"status": "completed", "flops": -Infinity}'),
     ["--plot", "p.png"], "2 runs"),
    ("seconds is a list", _edit(seconds=[1]), ["--group-by", "strategy"], "runs"),
    ("stages is a string", _edit(stages="x"), [], "completed"),
    ("stop_reason is a number", _edit(stop_reason=3), [], "completed"),
    ("garbage metrics line + --curves", _metrics_line(b"@@ not json @@"), ["--curves", "c.png"],
     "line"),
    ("binary metrics line + --curves", _metrics_line(b"\x00\xff\xfe\x80"), ["--curves", "c.png"],
     "UnicodeDecodeError"),
    ("JSON list as a metrics line + --curves", _metrics_line(b"[1, 2, 3]"), ["--curves", "c.png"],
     "a JSON list, not an event"),
    ("JSON string as a metrics line + --curves", _metrics_line(b'"hello"'), ["--curves", "c.png"],
     "a JSON str, not an event"),
    ("garbage first metrics line + --curves", _metrics_line(b"{{{", "first"), ["--curves", "c.png"],
     "line 1"),
    ("metrics acc is a string + --curves",
     _metrics_line(b'{"split": "val", "acc": "high", "flops": 5, "stage": 1}'), ["--curves", "c.png"], "runs"),
    ("metrics stage is a list + --curves",
     _metrics_line(b'{"split": "val", "acc": 0.5, "flops": 5, "stage": [1]}', "end"), ["--curves", "c.png"],
     "runs"),
    ("metrics.jsonl is empty + --curves", _write("metrics.jsonl", ""), ["--curves", "c.png"], "runs"),
    ("metrics.jsonl is a directory + --curves", _metrics_dir, ["--curves", "c.png"], "metrics.jsonl"),
    ("metrics.jsonl is not UTF-8 + --curves", _write("metrics.jsonl", "é\n".encode("latin-1")),
     ["--curves", "c.png"], "UnicodeDecodeError"),
    ("--csv names a directory", lambda run: None, ["--csv", "."], "could not write"),
    ("--markdown under a file", lambda run: None, ["--markdown", "ok/run.json/t.md"], "could not write"),
    ("--plot under a missing file's parent that is a file", lambda run: (run / "f").write_text("x"),
     ["--plot", "damaged/f/p.png"], "could not write"),
]


def test_the_report_table_has_distinct_cases():
    assert len({c[0] for c in CASES}) == len(CASES) >= 35


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_report_survives_a_damaged_run(case, good_run, tmp_path, monkeypatch, capsys):  # noqa: F811
    _, mutate, args, expected = case
    monkeypatch.chdir(tmp_path)
    shutil.copytree(good_run, tmp_path / "ok")
    shutil.copytree(good_run, tmp_path / "damaged")
    mutate(tmp_path / "damaged")
    runs_before = {name: fingerprint(tmp_path / name) for name in ("ok", "damaged")}
    code = report.main(["ok", "damaged", "--csv", "all.csv", *args])  # a --csv of the case wins
    out = capsys.readouterr()
    text = out.out + out.err
    assert "Traceback" not in text
    assert expected in text, text
    assert "2 runs" in text, "both runs must be in the report"
    if (tmp_path / "all.csv").is_file() and "--group-by" not in args:  # the rest: the intact run's row
        rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "all.csv").read_text()))}
        assert rows["ok"]["status"] == "completed" and float(rows["ok"]["test/acc"]) > 0, rows
    writes_fail = "could not write" in expected
    assert code == (2 if writes_fail else 0), text
    for flag, name in zip(args, args[1:], strict=False):
        if flag in ("--plot", "--curves", "--csv", "--markdown") and not writes_fail:
            assert (tmp_path / name).is_file(), f"{flag} {name} was not written"
    assert {name: fingerprint(tmp_path / name) for name in ("ok", "damaged")} == runs_before
