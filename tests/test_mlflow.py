"""``logger.mlflow=true``: params, metrics per epoch and per step, status and artifacts in a
local MLflow file store, read back with MLflow's own client; a sweep nests its runs."""

from __future__ import annotations

import os

import pytest
from conftest import make_cfg, run_cli

from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

pytest.importorskip("mlflow")
os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: the file store is opt-in


def _client(store):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=store.as_uri())


def _runs(store):
    client = _client(store)
    experiment = client.get_experiment_by_name("stagetrain")
    return client, client.search_runs([experiment.experiment_id])


def test_a_run_reads_back_params_metrics_status_and_artifacts(tmp_path):
    store = tmp_path / "mlruns"
    cfg = make_cfg("strategy=scratch", "train.epochs=2", "plots=false", "logger.mlflow=true",
                   f"logger.mlflow_uri={store.as_uri()}", "logger.every_steps=5")
    info = train(cfg, tmp_path / "run")
    client, runs = _runs(store)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "scratch" and float(run.data.params["optim.lr"]) == 0.001
    val = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("split") == "val"]
    history = client.get_metric_history(run.info.run_id, "val/acc")
    assert sorted((m.step, round(m.value, 5)) for m in history) == [(e["step"], round(e["acc"], 5)) for e in val]
    lr = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/lr"))
    assert [s for s, _ in lr][:2] == [5, 10] and all(v > 0 for _, v in lr), "the LR used, every 5 steps"
    assert lr[0][1] > lr[-1][1], "a cosine stage: the LR falls"
    assert len(client.get_metric_history(run.info.run_id, "train_steps/loss")) >= 2
    assert run.data.metrics["final/test/acc"] == pytest.approx(info["final"]["test/acc"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"run.json", "metrics.jsonl", "model.safetensors"} <= names, names


def test_a_failed_run_is_marked_failed_with_its_run_json(tmp_path):
    store = tmp_path / "mlruns"
    cfg = make_cfg("strategy=scratch", "optim.name=sgd", "optim.lr=1e6", "sched.name=constant", "plots=false",
                   "train.epochs=1", "logger.mlflow=true", f"logger.mlflow_uri={store.as_uri()}")
    with pytest.raises(Exception):  # noqa: B017 - the non-finite loss error
        train(cfg, tmp_path / "run")
    client, runs = _runs(store)
    assert [r.info.status for r in runs] == ["FAILED"]
    assert "run.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def test_a_sweep_is_a_parent_run_with_its_jobs_nested(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "strategy=scratch", "seed=0,1", "train.epochs=1", "progress=off", "plots=false",
                   "logger.mlflow=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
                   env={"MLFLOW_ALLOW_FILE_STORE": "true"})
    assert proc.returncode == 0, proc.stderr
    assert "selected by" not in proc.stdout, "a comparison of seeds selects no job"
    client, runs = _runs(tmp_path / "mlruns")  # the default store: <cwd>/mlruns
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert "summary.md" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


def test_logger_keys_have_equal_defaults_and_a_negative_every_steps_is_refused():
    from stagetrain.core.errors import StagetrainError
    from stagetrain.core.schema import LoggerConfig
    from stagetrain.runs.config import validate

    cfg = make_cfg()
    assert dict(cfg.logger) == vars(LoggerConfig()), "conf/config.yaml and schema.py agree"
    with pytest.raises(StagetrainError, match=r"logger.every_steps=-1 is out of range: it must be >= 0"):
        validate(make_cfg("logger.every_steps=-1"))
