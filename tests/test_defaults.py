"""Defaults and messages a new user meets without reading the manual (issue 28): the
custom-model import hint, the launchers --help offers, the language-model banner, a missing
IDX file named, and the CPU threads chosen from the model's size."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

from conftest import run_cli

from stagetrain.app import helppage
from stagetrain.data.images import IDX_FILES, missing_data_message
from stagetrain.datasets.mnist.reader import SOURCE
from stagetrain.runs.banner import _data_line

CUSTOM = ["model=custom", "model.target=mypkg.nets.SmallNet", "model.stem=[conv,bn,act]",
          "model.blocks=[stage1,stage2]", "model.head=fc", "model.head_input=pool_flatten", "strategy=scratch",
          "dry_run=true"]


def test_a_package_in_the_current_folder_gets_the_pythonpath_hint(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    shutil.copy(Path(__file__).with_name("custom_net.py"), tmp_path / "mypkg" / "nets.py")
    refused = run_cli(*CUSTOM, cwd=tmp_path, env={"PYTHONPATH": ""})
    out = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "No module named 'mypkg'" in out and "PYTHONPATH=. stagetrain" in out, out
    assert "'mypkg' is in the current folder" in out
    done = run_cli(*CUSTOM, cwd=tmp_path, env={"PYTHONPATH": "."})
    assert done.returncode == 0, done.stdout + done.stderr


def test_help_lists_the_launchers_this_environment_can_use(monkeypatch):
    text = helppage.help_text()
    assert "basic" in text and "parallel local jobs" in text and "SLURM job arrays" in text
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    text = helppage.help_text()
    assert "not installed here: pip install 'stagetrain[joblib]'" in text
    assert "not installed here: pip install 'stagetrain[slurm]'" in text


def _bundle(task: str) -> SimpleNamespace:
    return SimpleNamespace(name="fortunes", train=range(1000), labeled=range(1000), val=range(100),
                           test=range(100), num_classes=257, info={"task": task})


def test_the_language_model_banner_names_a_vocabulary_not_classes_or_labels():
    line = _data_line(_bundle("lm"))
    assert "vocabulary of 257 tokens" in line and "classes" not in line and "labelled" not in line
    assert "257 classes" in _data_line(_bundle("classification"))


def test_a_missing_idx_file_is_named_alone(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in IDX_FILES[:3]:
        (raw / name).write_bytes(b"")
    (raw / f"{IDX_FILES[3]}.gz").write_bytes(b"")
    message = missing_data_message(SOURCE, tmp_path)
    assert f"lacks {IDX_FILES[3]} (the other 3 files are there; gunzip {IDX_FILES[3]}.gz)" in message
    assert "train-images" not in message.split("stagetrain reads")[0]
    assert "were not found (or failed" in missing_data_message(SOURCE, tmp_path / "elsewhere")
