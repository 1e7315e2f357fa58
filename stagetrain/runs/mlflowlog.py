"""``logger.mlflow=true``: the run in MLflow, beside its run directory.

One MLflow run per stagetrain run (a resumed run continues its MLflow run: the id is kept in
``<run>/mlflow_run.json``): the flattened config as params; the metrics of metrics.jsonl per
epoch (the same tags as TensorBoard's, greedy stages' auxiliary metrics under
``aux/<stage>/``) and every ``logger.every_steps`` steps (``train_steps/loss``,
``train/lr``); the final metrics; the status (FINISHED, FAILED, KILLED for a stopped run);
and the run directory's files (run.json, metrics.jsonl, config, plots, model.safetensors)
as artifacts. A sweep (``-m``) is a parent run (``<sweep>/mlflow_sweep.json``) with the
summary files; its jobs' runs are nested under it. The store is ``logger.mlflow_uri``, by
default the local file store ``<cwd>/mlruns``; nothing is sent over the network unless the
URI says so. Needs the optional extra ``stagetrain[mlflow]`` (mlflow-skinny).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError
from stagetrain.runs.tensorboard import SKIP, StepLog, aux_stages, flat_params, split_tag

EXPERIMENT = "stagetrain"
STATUS = {"completed": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}
ARTIFACTS = ("run.json", "metrics.jsonl", ".hydra/config.yaml", "model.safetensors", "*.png",
             "summary.md", "summary.csv")
MAX_PARAM = 6000  # MLflow's longest param value


def tracking_uri(uri: str | None) -> str:
    return str(uri) if uri else (Path.cwd() / "mlruns").as_uri()


def client(uri: str | None) -> tuple[Any, str]:
    """An MlflowClient on ``uri`` and the id of the ``stagetrain`` experiment (created once)."""
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
    except ImportError as e:
        raise StagetrainError(f"logger.mlflow=true needs the 'mlflow-skinny' package ({e}). Install it with "
                              "pip install 'stagetrain[mlflow]', or set logger.mlflow=false.") from e
    uri = tracking_uri(uri)
    if uri.startswith("file:") or "://" not in uri:  # MLflow 3 keeps its file store behind this switch
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow = MlflowClient(tracking_uri=uri)
    found = mlflow.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return mlflow, found.experiment_id
    try:
        return mlflow, mlflow.create_experiment(EXPERIMENT)
    except MlflowException:  # a parallel job created it first
        return mlflow, mlflow.get_experiment_by_name(EXPERIMENT).experiment_id


def _read_id(path: Path) -> str | None:
    """The MLflow run id a run directory recorded (through the file gate); None when absent or unreadable."""
    from stagetrain.core import userfile

    if not path.exists():
        return None
    try:
        return str(json.loads(userfile.read_bytes(path, "", "record"))["run_id"])
    except (StagetrainError, ValueError, KeyError, TypeError):
        return None


def _open_run(mlflow: Any, experiment: str, record: Path, name: str, tags: dict[str, str]) -> str:
    """The MLflow run whose id ``record`` holds (set running again), else a new one."""
    run_id = _read_id(record)
    if run_id is not None:
        try:
            mlflow.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # noqa: BLE001 - an id of another store: start a new run
            pass
    run_id = mlflow.create_run(experiment, tags=tags, run_name=name).info.run_id
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"run_id": run_id}) + "\n")
    return run_id


def _artifacts(mlflow: Any, run_id: str, folder: Path) -> None:
    for pattern in ARTIFACTS:
        for path in sorted(folder.glob(pattern)):
            if path.is_file() and not path.is_symlink():
                where = str(path.parent.relative_to(folder)) if path.parent != folder else None
                mlflow.log_artifact(run_id, str(path), where)


class MlflowSink:
    """Called by the engine with each new metrics event (as ``TensorBoardSink``); ``finish``
    after run.json and the model are written; ``close`` finishes a failed or stopped run."""

    def __init__(self, run_dir: Path, config: dict[str, Any], plan: dict[str, Any] | None, every_steps: int,
                 uri: str | None, status: Callable[[], str]):
        from mlflow.entities import Param

        self.run_dir, self.status = Path(run_dir), status
        self.client, experiment = client(uri)
        tags = {"stagetrain.run_dir": str(self.run_dir.resolve())}
        parent = next((i for p in self.run_dir.resolve().parents[:4]
                       if (i := _read_id(p / "mlflow_sweep.json")) is not None), None)
        if parent is not None:
            tags["mlflow.parentRunId"] = parent
        self.run_id = _open_run(self.client, experiment, self.run_dir / "mlflow_run.json", self.run_dir.name, tags)
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in flat_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.aux = aux_stages(plan)
        self.steps = StepLog(every_steps, self._metrics)
        self.on_step = self.steps.on_step
        self.done = False

    def _metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def __call__(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        if "split" in event:
            where = split_tag(event, self.aux)
            metrics = {f"{where}/{k}": v for k, v in event.items()
                       if k not in SKIP and isinstance(v, int | float) and not isinstance(v, bool)}
            if event["split"] == "train" and not (self.steps.every and step % self.steps.every == 0):
                metrics["train/lr"] = self.steps.lr(event.get("lr", 0.0))
            if event["split"] == "val":
                metrics["compute/flops"] = event.get("flops", 0)
            self._metrics(metrics, step)
        elif event.get("event") == "growth":
            self._metrics({"growth/params": event["params_after"]}, step)
        elif event.get("event") == "final":
            self._metrics({f"final/{k}": v for k, v in event.items() if "/" in k and isinstance(v, int | float)},
                          step)

    def close(self) -> None:
        """At the end of the engine's run: a failed or stopped run is finished here."""
        if self.status() in ("failed", "stopped"):
            self.finish()

    def finish(self) -> None:
        """The run directory's files as artifacts, then the run's status."""
        if self.done:
            return
        self.done = True
        _artifacts(self.client, self.run_id, self.run_dir)
        self.client.set_terminated(self.run_id, STATUS.get(self.status(), "FAILED"))


def start_sweep(sweep_dir: Path, uri: str | None) -> str:
    """The sweep's parent run (continued by ``resume=auto``); its id in ``mlflow_sweep.json``."""
    mlflow, experiment = client(uri)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return _open_run(mlflow, experiment, sweep_dir / "mlflow_sweep.json", sweep_dir.name,
                     {"stagetrain.sweep_dir": str(sweep_dir.resolve())})


def end_sweep(sweep_dir: Path, rows: list[dict[str, Any]], uri: str | None) -> None:
    """The summary files as the parent's artifacts; FINISHED when every job completed."""
    run_id = _read_id(sweep_dir / "mlflow_sweep.json")
    if run_id is None:
        return
    mlflow, _ = client(uri)
    _artifacts(mlflow, run_id, sweep_dir)
    ok = bool(rows) and all(r.get("status") == "completed" for r in rows)
    mlflow.set_terminated(run_id, "FINISHED" if ok else "FAILED")
