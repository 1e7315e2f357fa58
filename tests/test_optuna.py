"""Hyperparameter search with Hydra's Optuna sweeper: every job returns its objective
(``objective.metric``, a validation metric) as a float, a failed trial does not end the
search, and the README's resumable example (SQLite storage in the sweep directory) works."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from conftest import make_cfg, run_cli

from stagetrain.core.errors import StagetrainError
from stagetrain.runs.search import objective_value, worst

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper",
                    reason="needs the Optuna sweeper: pip install 'stagetrain[optuna]'")

TINY = ["strategy=scratch", "train.epochs=1", "dataset.max_train=300", "progress=off", "plots=false"]


def _finals(sweep: Path) -> dict[float, dict]:
    """optim.lr -> the run's final metrics, for every job of the sweep."""
    out = {}
    for path in sweep.rglob("run.json"):
        info = json.loads(path.read_text())
        out[info["config"]["optim"]["lr"]] = info
    return out


@pytest.mark.full  # two CLI invocations, 4 trials: ~30 s idle, a minute on a busy machine
def test_optuna_search_completes_and_reports_the_best_validation_setting(tmp_path):
    """The README example: 3 trials, storage in the sweep directory, job folders unique per
    invocation; continuing it (resume=auto) adds trials to the same study."""
    sweep = tmp_path / "search"
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=maximize",
            "hydra.sweeper.study_name=lr", "hydra.sweeper.storage=sqlite:///${hydra.sweep.dir}/optuna.db",
            f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}_${stagetrain_uid:}",
            "optim.lr=interval(0.0001,0.01)", *TINY]
    proc = run_cli(*args, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "float-castable" not in out and "setup plugin" not in out
    assert "A new study created" not in out  # Optuna's own handler, kept off the terminal
    finals = _finals(sweep)
    assert len(finals) == 3 and all(i["status"] == "completed" for i in finals.values())
    top = max(info["final"]["val/acc"] for info in finals.values())
    best = {lr for lr, info in finals.items() if info["final"]["val/acc"] == top}  # ties are possible
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_params"]["optim.lr"] in best and result["best_value"] == pytest.approx(top)
    assert (sweep / "optuna.db").is_file()
    line = next(x for x in out.splitlines() if x.startswith("selected by val/acc (maximum): job "))
    job = line.split("job ", 1)[1].split()[0]
    chosen = next(info for info in finals.values() if Path(info["run_dir"]).name == job)
    assert chosen["config"]["optim"]["lr"] in best
    assert f"test/acc={chosen['final']['test/acc']:.4g}" in (sweep / "summary.md").read_text()

    again = run_cli(*args[:2], "hydra.sweeper.n_trials=1", *args[3:], "resume=auto", cwd=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert len(_finals(sweep)) == 4  # a new job folder: no earlier trial's result reused


def test_failed_trial_gets_the_worst_value_and_the_search_goes_on(tmp_path):
    sweep = tmp_path / "grid"
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=grid", "hydra.sweeper.direction=maximize",
                   "optim.lr=choice(0.003,-1)", f"hydra.sweep.dir={sweep}", *TINY, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert "No trials are completed" not in out and "Traceback" not in out, out[-3000:]
    assert proc.returncode == 1  # the sweep summary reports the failed job
    assert "optim.lr=-1.0 is out of range" in out
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_params"]["optim.lr"] == 0.003


def test_sweeper_direction_against_the_objective_is_refused(tmp_path):
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=minimize", *TINY, cwd=tmp_path)
    assert proc.returncode == 1
    assert "hydra.sweeper.direction=maximize" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("run.json"))


def test_a_test_metric_is_never_an_objective():
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match="test metric"):
        validate(make_cfg("objective.metric=test/acc"))
    with pytest.raises(StagetrainError, match="objective.mode"):
        validate(make_cfg("objective.mode=up"))


def test_objective_value_of_completed_and_failed_runs():
    done = {"status": "completed", "final": {"val/acc": 0.9, "val/loss": 0.3, "test/acc": 0.1}}
    assert objective_value(done, "val/acc", "auto") == 0.9
    assert objective_value(done, "val/loss", "auto") == 0.3
    failed = {"status": "failed", "final": {}}
    assert objective_value(failed, "val/acc", "auto") == worst("val/acc", "auto") == -math.inf
    assert objective_value(failed, "val/loss", "auto") == math.inf
    assert objective_value(None, "val/acc", "min") == math.inf
