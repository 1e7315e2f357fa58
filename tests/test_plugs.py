"""One plug per axis: a dataset, a model family and a strategy added as an installed package
in a temporary folder (entry points, their YAML on Hydra's search path) run from the command
line with nothing else edited -- the proof that adding one touches only its folder and YAML."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import run_cli, run_dirs

from stagetrain.core.errors import StagetrainError
from stagetrain.datasets import DATASETS
from stagetrain.families import FAMILIES
from stagetrain.strategies import STRATEGIES

INIT = "from stagetrain.core.plugs import exports\n\n__getattr__ = exports(__name__{impl})\n"

TOY = {
    "datasets/toy/__init__.py": INIT.format(impl=', "reader"'),
    "datasets/toy/config.py": '''
        from dataclasses import dataclass

        from stagetrain.core.errors import StagetrainError
        from stagetrain.core.schema import DatasetConfig

        ITEMSIZE = 4


        @dataclass
        class Config(DatasetConfig):
            name: str = "toy"
            n: int = 400  # training samples; the test split has a quarter of that


        def validate(ds):
            if ds.n < 20:
                raise StagetrainError(f"dataset.n={ds.n} is too small for dataset=toy: use at least 20.")


        def meta(ds):
            return (6,), 2, ds.n
    ''',
    "datasets/toy/reader.py": '''
        import torch

        from stagetrain.data import Split


        def load(ds, seed):
            g = torch.Generator().manual_seed(seed)

            def draw(n):
                x = torch.randn(n, 6, generator=g)
                return Split(x, (x[:, 0] + x[:, 1] > 0).long())

            return draw(ds.n), draw(ds.n // 4), 1.0
    ''',
    "families/toyfam/__init__.py": INIT.format(impl=""),
    "families/toyfam/config.py": '''
        from dataclasses import dataclass
        from typing import ClassVar

        from stagetrain.core.errors import StagetrainError
        from stagetrain.core.partbase import Block
        from stagetrain.datasets import inputs


        @dataclass
        class Config:
            name: str = "toyfam"
            width: int = 16


        @dataclass(kw_only=True)
        class ToyBlock(Block):
            """``toy_block``: this family's own part type, tanh(W x + b)."""

            TAG: ClassVar[str] = "toy_block"
            BUILDER: ClassVar[str] = "toyplug.families.toyfam.parts"
            inp: int
            out: int


        def validate(model, dataset):
            if inputs(dataset) != "features":
                raise StagetrainError(f"model=toyfam reads feature vectors; dataset={dataset.name} gives {inputs(dataset)}.")


        def spec(m, in_shape, num_classes):
            block = {"name": "block1", "type": "toy_block", "in": in_shape[0], "out": m.width, "out_shape": [m.width]}
            return {"in_shape": list(in_shape), "num_classes": num_classes, "blocks": [block],
                    "head": {"in": m.width, "out": num_classes}}
    ''',
    "families/toyfam/parts.py": '''
        from torch import nn

        from stagetrain.models.registry import PartType, register


        def build(part):
            return nn.Sequential(nn.Linear(part.inp, part.out), nn.Tanh())


        register(PartType("toy_block", "block", build, lambda part: 2.0 * part.inp * part.out))
    ''',
    "strategies/toystrat/__init__.py": 'name = "toystrat"\n' + INIT.format(impl=', "plan"'),
    "strategies/toystrat/config.py": '''
        from dataclasses import dataclass

        from stagetrain.core.errors import StagetrainError
        from stagetrain.core.schema import StrategyConfig


        @dataclass
        class Config(StrategyConfig):
            name: str = "toystrat"
            epochs: int = 2


        def validate(cfg):
            if cfg.strategy.epochs < 1:
                raise StagetrainError("strategy.epochs must be >= 1.")
    ''',
    "strategies/toystrat/plan.py": '''
        from stagetrain.core.plan import Plan
        from stagetrain.strategies.common import all_groups, stage_from_cfg


        def build(cfg, spec):
            stage = stage_from_cfg(cfg, name="head", epochs=1, trainable=["head"], description="the head alone")
            rest = stage_from_cfg(cfg, name="all", epochs=cfg.strategy.epochs, trainable=all_groups(spec))
            return Plan(strategy="toystrat", stages=[stage, rest])
    ''',
}
YAML = {
    "dataset/toy.yaml": "defaults:\n  - /schema/dataset/toy@_here_\n  - _self_\nname: toy\nn: 400\n",
    "model/toyfam.yaml": "defaults:\n  - /schema/model/toyfam@_here_\n  - _self_\nname: toyfam\nwidth: 16\n",
    "strategy/toystrat.yaml": "defaults:\n  - /schema/strategy/toystrat@_here_\n  - _self_\nname: toystrat\nepochs: 2\n",
}
ENTRY_POINTS = """
[stagetrain.datasets]
toy = toyplug.datasets.toy

[stagetrain.families]
toyfam = toyplug.families.toyfam

[stagetrain.strategies]
toystrat = toyplug.strategies.toystrat
"""


@pytest.fixture(scope="module")
def toyplug(tmp_path_factory) -> Path:
    """A package ``toyplug`` with one plug of each axis, its YAML, and its install record."""
    root = tmp_path_factory.mktemp("site")
    for rel, text in TOY.items():
        path = root / "toyplug" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    for folder in ("toyplug", "toyplug/datasets", "toyplug/families", "toyplug/strategies"):
        (root / folder / "__init__.py").touch()
    for rel, text in YAML.items():
        (root / "toyplug" / "conf" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "toyplug" / "conf" / rel).write_text(text)
    info = root / "toyplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return root


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_toy_dataset_family_and_strategy_run_from_the_command_line(toyplug, tmp_path):
    """Nothing of stagetrain is edited: the plugs are found through their package's entry
    points, their YAML through Hydra's search path, and the run trains and records them."""
    args = ["dataset=toy", "model=toyfam", "strategy=toystrat", "hydra.searchpath=[pkg://toyplug/conf]",
            "dataset.n=2000", "optim.lr=0.01", "device.threads=1", "progress=plain", "plots=false", "train.batch_size=32"]
    proc = run_cli(*args, cwd=tmp_path, env=_env(toyplug))
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = run_dirs(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed"
    assert [s["name"] for s in record["stages"]] == ["head", "all"]
    assert record["config"]["dataset"]["n"] == 2000 and record["config"]["model"]["width"] == 16
    assert record["final"]["test/acc"] > 0.75  # x0 + x1 > 0 is linearly separable: it learnt
    assert record["params"] == 6 * 16 + 16 + 16 * 2 + 2  # the family's own toy_block, then a linear head
    # a fresh process rebuilds the model from the run alone: the part type's record and builder
    # are found through the family plug (its config declares toy_block), nothing else imported
    code = ("import sys, torch; import stagetrain; m = stagetrain.load(sys.argv[1]).model; "
            "print(type(m.blocks['block1'][1]).__name__, sum(p.numel() for p in m.parameters()))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(run)], env=_env(toyplug), capture_output=True, text=True)
    assert out.stdout.split() == ["Tanh", str(record["params"])], out.stderr[-2000:]


def test_a_toy_plugs_own_validation_speaks_for_it(toyplug, tmp_path):
    proc = run_cli("dataset=toy", "dataset.n=5", "model=toyfam", "strategy=toystrat",
                   "hydra.searchpath=[pkg://toyplug/conf]", cwd=tmp_path, env=_env(toyplug))
    assert proc.returncode != 0
    assert "dataset.n=5 is too small for dataset=toy" in proc.stderr
    proc = run_cli("dataset=digits", "model=toyfam", "strategy=toystrat", "hydra.searchpath=[pkg://toyplug/conf]",
                   cwd=tmp_path, env=_env(toyplug))
    assert proc.returncode != 0 and "model=toyfam reads feature vectors; dataset=digits gives image" in proc.stderr


def test_installed_plugs_are_listed_without_importing_them(toyplug, tmp_path):
    """Discovery reads names only: a plug's code runs when a config names it, not before."""
    code = ("import sys; from stagetrain.datasets import DATASETS; from stagetrain.families import FAMILIES; "
            "from stagetrain.strategies import STRATEGIES; "
            "print('toy' in DATASETS, 'toyfam' in FAMILIES, 'toystrat' in STRATEGIES, "
            "any(m.startswith('toyplug') for m in sys.modules))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], env=_env(toyplug), capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "False"]


@pytest.mark.parametrize("plugs,key", [(DATASETS, "dataset"), (FAMILIES, "model"), (STRATEGIES, "strategy")])
def test_an_unknown_plug_name_is_one_paragraph_listing_the_valid_ones(plugs, key):
    with pytest.raises(StagetrainError, match=rf"^{key}=nosuch is not a .*; valid: .*{sorted(plugs)[0]}"):
        plugs.plug("nosuch")
