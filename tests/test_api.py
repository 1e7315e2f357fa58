"""The Python API: stagetrain.run goes through the console script's code path in-process and
returns the run record; stagetrain.load rebuilds the trained model, config and metrics."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import stagetrain
from stagetrain.app.api import RunFailed

TINY = ["strategy=scratch", "train.epochs=2", "model.widths=[32]", "progress=off", "plots=false", "device=cpu"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple:
    run_dir = tmp_path_factory.mktemp("api") / "run"
    return stagetrain.run(TINY, run_dir=run_dir), run_dir


def test_run_returns_the_run_record_it_wrote(finished):
    info, run_dir = finished
    assert info == json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "completed" and info["run_dir"] == str(run_dir.resolve())
    assert info["config"]["train"]["epochs"] == 2 and len(info["stages"]) == 1
    assert (run_dir / "stagetrain.log").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()


def test_load_rebuilds_the_model_that_reaches_the_recorded_accuracy(finished):
    info, run_dir = finished
    run = stagetrain.load(run_dir)
    assert run.status == "completed" and run.final == info["final"] and run.config.model.widths == [32]
    assert [e["epoch"] for e in run.metrics if e.get("split") == "val"] == [1, 2]
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    data = run.data()
    with torch.no_grad():
        predicted = run.model(data.normalize(data.test.x)).argmax(1)
    accuracy = (predicted == data.test.y).float().mean().item()
    assert accuracy == pytest.approx(info["final"]["test/acc"], abs=1e-6)


def test_a_second_run_into_the_same_directory_needs_resume_and_raises_the_message(finished):
    _, run_dir = finished
    with pytest.raises(RunFailed, match="already holds a run.*resume=auto"):
        stagetrain.run(TINY, run_dir=run_dir)
    again = stagetrain.run([*TINY, "resume=auto"], run_dir=run_dir)
    assert again["status"] == "completed"


def test_a_refused_or_failing_run_raises_with_the_console_message(tmp_path):
    with pytest.raises(RunFailed, match="Did you mean 'train.epochs'"):
        stagetrain.run(["trian.epochs=3"], run_dir=tmp_path / "a")
    with pytest.raises(RunFailed, match="dataset=mnist: the files were not found"):
        stagetrain.run([*TINY, "dataset=mnist", f"dataset.root={tmp_path}"], run_dir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(stagetrain.app.api.StagetrainError, match="no run.json"):
        stagetrain.load(tmp_path)


def test_dry_run_returns_the_plan_and_import_stays_cheap(tmp_path):
    info = stagetrain.run(["strategy=layerwise", "dry_run=true"], run_dir=tmp_path / "dry")
    assert info["dry_run"] and not (tmp_path / "dry").exists()
    code = "import sys, stagetrain; assert 'torch' not in sys.modules and 'hydra' not in sys.modules; stagetrain.run"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_hydras_refused_write_reaches_the_caller_as_the_consoles_paragraph(tmp_path, capsys):
    """Hydra writes ``.hydra/`` before the job starts; a write it cannot make (here ``.hydra``
    is a file) is the console's one paragraph, and the API's RunFailed carries that paragraph
    (it travels in the command's own outcome, not in module state)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".hydra").write_text("not a directory")
    with pytest.raises(RunFailed) as caught:
        stagetrain.run([*TINY, "dry_run=true"], run_dir=run_dir)
    message = str(caught.value)
    assert ".hydra" in message and "exited with status" not in message, message
    assert f"Error: {message} Nothing was run." in capsys.readouterr().err
    assert not hasattr(stagetrain.app.cli, "last")


def test_execute_returns_what_the_command_ended_with(tmp_path):
    """The console script and the API share ``cli.execute``: a refusal comes back as an
    outcome (exit code 1 and the message), a dry run as its record; nothing is raised."""
    from stagetrain.app.cli import execute

    refused = execute(["trian.epochs=3"])
    assert (refused.code, refused.info) == (1, None) and "Did you mean 'train.epochs'" in refused.error
    dry = execute(["strategy=layerwise", "dry_run=true", f"hydra.run.dir={tmp_path / 'dry'}"])
    assert dry.code in (0, None) and dry.error is None and dry.info["dry_run"], dry
