"""The under-trained flag beside a verdict, and the trivial baseline ("chance"), through the
real sweep summary (printed after ``stagetrain -m``) and ``stagetrain-report``, on real tiny
digits runs: 2 epochs leaves a run still falling (run.json ``convergence``), 30 do not."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from stagetrain.report.compare import flag_verdict


def _sweep(root: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    proc = run_cli("-m", "strategy=scratch", "seed=0,1,2", "progress=off", *args,
                   f"hydra.sweep.dir={root / name}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """``short``: 2 epochs (under-trained) against 30 (converged); ``labels``: 10% of the
    labels against all of them, both for 60 epochs at lr 0.003 (the training sets are learnt:
    converged; 10% of the labels is clearly worse)."""
    root = tmp_path_factory.mktemp("flags")
    short = _sweep(root, "short", "train.epochs=2,30", "compare.control_key=train.epochs",
                   "compare.control_value=30")
    labels = _sweep(root, "labels", "train.epochs=60", "optim.lr=0.003", "dataset.labeled_fraction=0.1,1.0",
                    "compare.control_key=dataset.labeled_fraction", "compare.control_value=1.0")
    return root, short.stdout, labels.stdout


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "stagetrain-report"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _verdict_line(out: str, arm: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(arm))


def _runs(sweep: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(sweep.rglob("run.json"))]


def test_the_runs_record_what_the_flag_reads(sweeps):
    root, _, _ = sweeps
    from stagetrain.runread import under_trained

    runs = _runs(root / "short")
    by_epochs = {e: [under_trained(r) for r in runs if r["config"]["train"]["epochs"] == e] for e in (2, 30)}
    assert by_epochs == {2: [True] * 3, 30: [False] * 3}, "2 epochs: still falling; 30: converged"
    assert all(0 < r["baselines"]["accuracy"]["value"] < 0.5 for r in runs)


def test_sweep_summary_says_under_trained_instead_of_worse(sweeps):
    _, short, labels = sweeps
    verdicts = short.split("verdicts against train.epochs=30")[1].split("summary: ")[0]
    assert max(len(line) for line in verdicts.splitlines()) <= 100, verdicts
    assert _verdict_line(verdicts, "scratch").rstrip().endswith("under-trained"), verdicts  # epochs=2 first
    assert "worse" not in verdicts and "; chance 0.0" in verdicts.splitlines()[0], verdicts  # one chance: the title
    converged = labels.split("verdicts against dataset.labeled_fraction=1.0")[1].split("summary: ")[0]
    assert _verdict_line(converged, "scratch").rstrip().endswith("worse"), converged  # 10%: its row comes first
    assert "under-trained" not in converged and "control" in converged, converged
    assert "chance" in converged.splitlines()[2], converged  # 10% and all labels: two majorities, a column


def test_summary_files_carry_the_flag_and_chance(sweeps):
    root, _, _ = sweeps
    md = (root / "short" / "summary.md").read_text()
    assert "under-trained" in md and "| chance |" in md.replace("chance | ", "chance |")
    rows = list(csv.DictReader(io.StringIO((root / "short" / "summary.csv").read_text())))
    assert {r["under-trained"] for r in rows} == {"True", "False"} and all(float(r["chance"]) > 0 for r in rows)


def test_report_flags_the_arm_in_the_table_and_its_files(sweeps):
    root, _, _ = sweeps
    proc = report(str(root / "short"), "--group-by", "train.epochs", "--control", "train.epochs=30",
                  "--csv", "g.csv", "--markdown", "g.md", cwd=root)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("verdict: ")[0]
    assert _verdict_line(table, "epochs=2").rstrip().endswith("under-trained"), table
    assert "control" in _verdict_line(table, "epochs=30")
    groups = {r["train.epochs"]: r for r in csv.DictReader(io.StringIO((root / "g.csv").read_text()))}
    assert groups["2"]["verdict"] == "under-trained" and groups["2"]["under-trained"] == "3"
    assert groups["30"]["under-trained"] == "0" and float(groups["30"]["chance"]) > 0
    assert "under-trained" in (root / "g.md").read_text()


def test_report_stages_say_per_group_and_stage_whether_it_converged(sweeps):
    root, _, _ = sweeps
    proc = report(str(root / "short"), "--group-by", "train.epochs", "--control", "train.epochs=30",
                  "--stages", "s.md", cwd=root)
    assert proc.returncode == 0, proc.stderr
    lines = (root / "s.md").read_text().splitlines()
    cols = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {r["train.epochs"]: r for r in ({c: v.strip() for c, v in zip(cols, line.strip("|").split("|"), strict=True)}
                                           for line in lines[2:])}
    assert rows["2"]["converged"] == "0/3" and rows["30"]["converged"] == "3/3", lines
    assert rows["30"]["barely learnt"] == "0/3" and float(rows["30"]["beyond chance"]) > 0.9
    assert float(rows["2"]["chance"]) == pytest.approx(float(rows["30"]["chance"]))


def test_report_keeps_a_converged_arms_verdict(sweeps):
    root, _, _ = sweeps
    proc = report(str(root / "labels"), "--group-by", "dataset.labeled_fraction",
                  "--control", "dataset.labeled_fraction=1.0", cwd=root)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("verdict: ")[0]
    assert _verdict_line(table, "labeled_fr").rstrip().endswith("worse"), table  # the 10% arm's first line
    assert "under-trained" not in table and "control" in table, table


def test_plots_draw_chance_where_runs_have_a_baseline(sweeps):
    from stagetrain.report.command import find_runs, load_rows
    from stagetrain.runs.plots import plot, plot_curves

    root, _, _ = sweeps
    rows, _ = load_rows(find_runs([root / "short"]))
    labels = plot(rows, root / "p.png") + plot_curves(rows, root / "c.png")
    assert sum(label.startswith("chance") for label in labels) == 2, labels  # a line, or named below the axis
    assert (root / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_old_runs_without_the_keys_get_no_flag_and_no_chance(sweeps, tmp_path):
    from stagetrain.report.command import find_runs, load_rows
    from stagetrain.runs.plots import plot

    root, _, _ = sweeps
    old = tmp_path / "old"
    shutil.copytree(root / "short", old)
    for path in old.rglob("run.json"):  # as written before the convergence check
        info = json.loads(path.read_text())
        path.write_text(json.dumps({k: v for k, v in info.items() if k not in ("convergence", "baselines")}))
    proc = report(str(old), "--group-by", "train.epochs", "--control", "train.epochs=30", "--csv", "g.csv",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("verdict: ")[0]
    assert "under-trained" not in table and "chance" not in table, table
    assert _verdict_line(table, "epochs=2").rstrip().endswith("worse"), table
    assert "under-trained" not in (tmp_path / "g.csv").read_text()
    rows, _ = load_rows(find_runs([old]))
    assert not any(label.startswith("chance") for label in plot(rows, tmp_path / "p.png"))


def test_flag_verdict_marks_every_verdict_of_an_under_trained_arm():
    assert [flag_verdict(v, True) for v in ("worse", "better", "no evidence")] == \
        ["under-trained", "better (under-trained)", "no evidence (under-trained)"]
    assert [flag_verdict(v, False) for v in ("worse", "better")] == ["worse", "better"]
    assert flag_verdict("better", False, control_under=True) == "better (control under-trained)"
