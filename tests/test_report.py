"""stagetrain-report over a real small sweep: rows, groups, CSV, Markdown, plot, failures."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli

from stagetrain.runread import fmt
from stagetrain.runs.plots import pareto_front


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    proc = run_cli("-m", "strategy=scratch,grow", "seed=0,1", "train.epochs=2", "progress=off",
                   f"hydra.sweep.dir={root / 'sweep'}", cwd=root)
    assert proc.returncode == 0, proc.stderr
    failed = run_cli("strategy=scratch", "optim.name=sgd", "optim.lr=1e6", "sched.name=constant", "progress=off",
                     f"hydra.run.dir={root / 'diverged'}", cwd=root)
    assert failed.returncode != 0
    return root


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "stagetrain-report"
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_report_table_csv_markdown_and_plot(sweep):
    proc = report(str(sweep / "sweep"), "--csv", "t.csv", "--markdown", "t.md", "--plot", "p.png", cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    for name in ("t.csv", "t.md", "p.png"):  # every file written is named, with its full path
        assert f"wrote {sweep.resolve() / name}" in proc.stdout.splitlines()
    rows = list(csv.DictReader(io.StringIO((sweep / "t.csv").read_text())))
    assert len(rows) == 4 and sorted(r["strategy"] for r in rows) == ["grow", "grow", "scratch", "scratch"]
    assert {r["seed"] for r in rows} == {"0", "1"}, "the overrides that differ are columns"
    assert all(0 < float(r["test/acc"]) <= 1 for r in rows)
    assert (sweep / "t.md").read_text().startswith("| run | strategy |")
    png = (sweep / "p.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000


def test_group_by_strategy_gives_mean_and_std_over_seeds(sweep):
    assert report(str(sweep / "sweep"), "--csv", "all.csv", cwd=sweep).returncode == 0
    proc = report(str(sweep / "sweep"), "--group-by", "strategy", "--csv", "g.csv", cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    groups = {r["strategy"]: r for r in csv.DictReader(io.StringIO((sweep / "g.csv").read_text()))}
    assert set(groups) == {"scratch", "grow"} and all(g["runs"] == "2" for g in groups.values())
    rows = list(csv.DictReader(io.StringIO((sweep / "all.csv").read_text())))
    accs = [float(r["test/acc"]) for r in rows if r["strategy"] == "scratch"]
    assert float(groups["scratch"]["test/acc mean"]) == pytest.approx(sum(accs) / 2)
    assert float(groups["scratch"]["test/acc std"]) == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)


def test_failed_runs_are_listed_with_their_error(sweep):
    proc = report(str(sweep), cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    assert "failed:" in proc.stdout and "non-finite" in proc.stdout


def test_path_without_runs_exits_nonzero_with_a_message(tmp_path):
    proc = report(str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "no runs found" in proc.stderr


def test_pareto_front_keeps_only_undominated_points():
    assert pareto_front([(1, 0.5), (2, 0.4), (3, 0.9), (4, 0.8), (5, 0.95)]) == [(1, 0.5), (3, 0.9), (5, 0.95)]


def test_one_number_format():
    assert [fmt(v) for v in (50826, 0.95833333, 12.3456, 1234567890.0, 3, None, "x")] == \
        ["50,826", "0.9583", "12.35", "1.235e+09", "3", "", "x"]


def test_group_by_prints_the_verdict_table_in_100_columns(sweep):
    proc = report(str(sweep / "sweep"), "--group-by", "strategy", cwd=sweep)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("verdict: ")[0]
    assert max(len(line) for line in table.splitlines()) <= 100, table
    grow = next(line for line in table.splitlines() if line.strip().startswith("grow"))
    assert grow.rstrip().endswith(("better", "worse", "no evidence")) and "scratch" in grow, table
    assert "control" in next(line for line in table.splitlines() if line.strip().startswith("scratch"))
    assert "…" not in table and "--markdown FILE" in proc.stdout


def _end_of_sweep(sweep_dir: Path, sweeper: dict, capsys) -> str:
    from omegaconf import OmegaConf

    from stagetrain.app.callbacks import SweepSummary

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "sweeper": sweeper},
                            "compare": {"control_key": "strategy", "control_value": "scratch", "level": 0.95},
                            "objective": {"metric": "val/acc", "mode": "auto"}, "logger": {"mlflow": False}})
    SweepSummary().on_multirun_end(cfg)
    return capsys.readouterr().out


def test_a_comparison_prints_verdicts_and_selects_no_job_a_search_selects_one(sweep, tmp_path, capsys):
    import shutil

    copy = tmp_path / "sweep"
    shutil.copytree(sweep / "sweep", copy)
    out = _end_of_sweep(copy, {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}, capsys)
    assert "selected by" not in out and "selected by" not in (copy / "summary.md").read_text()
    verdicts = out.split("verdicts against strategy=scratch")[1].split("summary: ")[0]
    assert max(len(line) for line in verdicts.splitlines()) <= 100 and "control" in verdicts, out
    out = _end_of_sweep(copy, {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                               "direction": "maximize"}, capsys)
    assert "selected by val/acc (maximum): job " in out
