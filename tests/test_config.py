"""Configs compose for every option; bad values are refused before anything runs."""

from __future__ import annotations

import pytest
from conftest import make_cfg, run_cli, run_dirs

from stagetrain.core.errors import StagetrainError
from stagetrain.runs.config import validate

GROUP_OPTIONS = {
    "dataset": ["digits", "mnist", "fashion_mnist", "cifar10", "synthetic"],
    "model": ["mlp", "cnn"],
    "strategy": ["scratch", "layerwise"],
    "device": ["auto", "cpu", "cuda"],
}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUP_OPTIONS.items() for o in opts])
def test_every_group_option_composes_and_validates(group, option):
    cfg = make_cfg(f"{group}={option}")
    assert cfg[group].name == option
    validate(cfg)


def test_default_run_is_layerwise_mlp_on_digits():
    cfg = make_cfg()
    assert (cfg.dataset.name, cfg.model.name, cfg.strategy.name) == ("digits", "mlp", "layerwise")


# (overrides, text the message must contain): checked in-process, fast
BAD_VALUES = [
    (["optim.lr=-1"], "optim.lr"),
    (["optim.lr=0"], "optim.lr"),
    (["optim.name=adamm"], "Did you mean 'adam'"),
    (["sched.name=cosin"], "Did you mean 'cosine'"),
    (["model.widths=[]"], "model.widths"),
    (["model.widths=[64,0]"], "model.widths"),
    (["model=cnn", "model.channels=[]"], "model.channels"),
    (["model=cnn", "dataset=synthetic", "dataset.shape=[20]"], "model=cnn needs image inputs"),
    (["model.activation=relux"], "model.activation"),
    (["model.dropout=1.5"], "model.dropout"),
    (["dataset.labeled_fraction=0"], "dataset.labeled_fraction"),
    (["dataset.labeled_fraction=1.5"], "dataset.labeled_fraction"),
    (["dataset.val_fraction=1"], "dataset.val_fraction"),
    (["dataset.classes=[3]"], "dataset.classes"),
    (["dataset.classes=[1,1]"], "dataset.classes"),
    (["train.epochs=0"], "train.epochs"),
    (["train.batch_size=-4"], "train.batch_size"),
    (["device.precision=fp16"], "device.precision"),
    (["progress=fancy"], "progress"),
    (["strategy.objective=sparse"], "strategy.objective"),
    (["strategy.cache=maybe"], "strategy.cache"),
    (["strategy.noise=[0.1,1.5]"], "strategy.noise"),
    (["strategy.objective=rbm"], "model.activation=sigmoid"),
    (["strategy=scratch", "strategy.epochs=0"], "strategy.epochs"),
    (["strategy=grow", "strategy.target='val/accuracy>=0.5'"], "strategy.target"),
    (["strategy=grow", "strategy.target='val/acc=>0.5'"], "strategy.target"),
]


@pytest.mark.parametrize("overrides,expected", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_refused_with_message_naming_the_key(overrides, expected):
    cfg = make_cfg(*overrides)
    with pytest.raises(StagetrainError, match=None) as err:
        validate(cfg)
    assert expected in str(err.value)


# through the real CLI: non-zero exit, the key named, no traceback, no run directory left
BAD_CLI = [
    (["model.widthz=3"], "model.widthz"),
    (["strategy.foo=1"], "strategy.foo"),
    (["train.epochs=abc"], "train.epochs"),
    (["strategy=grown"], "strategy/grown"),
    (["optim.lr=-1"], "optim.lr"),
    (["optim.name=adamm"], "Did you mean 'adam'"),
    (["dataset=mnist", "dataset.root=/nonexistent"], "dataset.root"),
    (["model=cnn", "dataset=synthetic", "dataset.shape=[20]"], "model=cnn"),
]


@pytest.mark.parametrize("args,expected", BAD_CLI, ids=[" ".join(a) for a, _ in BAD_CLI])
def test_bad_override_exits_nonzero_names_key_and_leaves_no_run_dir(tmp_path, args, expected):
    proc = run_cli(*args, "progress=off", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert expected in out
    assert "Traceback" not in out
    assert run_dirs(tmp_path) == []
    assert not any(p.is_file() for p in tmp_path.rglob("*")), "files left behind"
