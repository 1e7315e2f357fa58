"""run.json's plan with objective- and strategy-owned stage fields behind their owner: a
stage's ``objective_args`` (denoising's noise, rbm's cd_k; nn/objective_registry.py) and
``extra`` (a strategy's ``StageExtra``: grow's data_fraction, finetune's partial and bn).
An older plan's flat keys read into the typed form with the same values, a new run's plan
round-trips, a kind no plug declares is refused in one paragraph, and a new strategy adds
its own per-stage settings without editing ``Stage``."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from conftest import make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Plan, Stage, StageExtra
from stagetrain.nn.objective_registry import DenoisingArgs, RBMArgs
from stagetrain.runs.runner import train
from stagetrain.strategies.finetune.config import FinetuneStage
from stagetrain.strategies.grow.config import GrowStage


def _old_stage(name: str, objective: str = "supervised", **flat: object) -> dict[str, object]:
    """A stage dict as plans wrote it before objective_args and extra: every field flat."""
    return {"name": name, "epochs": 2, "trainable": ["block1", "helper"], "objective": objective,
            "stop_block": None, "helper": None, "helper_to_head": False, "data": "labeled", "dataset": "target",
            "optimizer": "adam", "lr": 0.001, "weight_decay": 0.0, "momentum": 0.9, "sched": "cosine",
            "lr_scale": {}, "cache": "off", "noise": 0.0, "cd_k": 1, "ops": [], "data_fraction": 1.0,
            "patience": None, "max_flops": None, "auto": None, "partial": {}, "bn": "eval", "description": "",
            **flat}


def _old_plan(strategy: str, *stages: dict[str, object]) -> dict[str, object]:
    return {"strategy": strategy, "stages": list(stages), "input_norm": "standardize", "target": None,
            "flop_budget": None, "complexity_penalty": None, "optimizer_state": "reset", "final_ops": []}


def test_an_old_plans_flat_keys_read_into_the_typed_form_with_their_values():
    layerwise = Plan.from_dict(_old_plan("layerwise", _old_stage("greedy-block1", "denoising", noise=0.3, cd_k=7),
                                    _old_stage("greedy-block2", "rbm", noise=0.25, cd_k=5),
                                    _old_stage("finetune", noise=0.5, cd_k=3)))
    assert [s.objective_args for s in layerwise.stages] == [DenoisingArgs(noise=0.3), RBMArgs(cd_k=5), None]
    assert all(s.extra == StageExtra() and s.extra.bn == "eval" for s in layerwise.stages)  # no settings
    grow = Plan.from_dict(_old_plan("grow", _old_stage("grow-1", data_fraction=0.25),
                               _old_stage("grow-2", epochs=None, max_flops=3e8)))
    assert [s.extra for s in grow.stages] == [GrowStage(data_fraction=0.25), GrowStage(data_fraction=1.0)]
    assert grow.stages[0].extra.data_fraction == 0.25 and grow.stages[1].max_flops == 3e8
    finetune = Plan.from_dict(_old_plan("finetune", _old_stage("bitfit", partial={"block1": ["*bias"]}, bn="train_affine")))
    (stage,) = finetune.stages
    assert stage.extra == FinetuneStage(partial={"block1": ["*bias"]}, bn="train_affine")
    assert stage.extra.partial == {"block1": ["*bias"]} and stage.extra.bn == "train_affine"
    assert stage.extra.data_fraction == 1.0  # what finetune does not set: the neutral answer
    out = finetune.to_dict()["stages"][0]
    assert out["extra"] == {"kind": "finetune", "partial": {"block1": ["*bias"]}, "bn": "train_affine"}
    assert not {"noise", "cd_k", "data_fraction", "partial", "bn"} & set(out)


def test_an_old_flat_value_no_strategy_takes_is_refused():
    """A scratch plan never set data_fraction: a non-neutral one has no owner and is not dropped."""
    with pytest.raises(StagetrainError, match="data_fraction"):
        Plan.from_dict(_old_plan("scratch", _old_stage("train", data_fraction=0.5)))


@pytest.mark.parametrize("overrides", [
    ["strategy=grow", "strategy.widths=[[16],[32]]", "strategy.data_fractions=[0.5,1.0]"],
    ["strategy=finetune", "strategy.source=random", "strategy.mode=bitfit", "strategy.bn=train_stats"],
    ["strategy=finetune", "strategy.source=random", "strategy.mode=lp_ft"],
    ["strategy=layerwise", "strategy.objective=denoising", "strategy.noise=[0.1,0.3]"],
    ["strategy=layerwise", "strategy.objective=rbm", "strategy.cd_k=3", "model.activation=sigmoid", "model.bn=false"],
])
def test_a_new_runs_plan_round_trips(overrides):
    plan = train(make_cfg(*overrides, "dry_run=true"), None)["plan"]
    assert Plan.from_dict(plan).to_dict() == plan
    first = plan["stages"][0]
    if "strategy=grow" in overrides:
        assert [s["extra"] for s in plan["stages"]] == [{"kind": "grow", "data_fraction": f} for f in (0.5, 1.0)]
    elif "strategy.mode=bitfit" in overrides:
        assert first["extra"]["kind"] == "finetune" and first["extra"]["bn"] == "train_stats"
        assert all(p == ["*bias"] for p in first["extra"]["partial"].values()) and first["objective_args"] is None
    elif "strategy.mode=lp_ft" in overrides:
        assert [s["extra"] for s in plan["stages"]] == [{"kind": "finetune", "partial": {}, "bn": "eval"}] * 2
    elif "strategy.objective=denoising" in overrides:
        assert [s["objective_args"] for s in plan["stages"][:2]] == [{"noise": 0.1}, {"noise": 0.3}]
        assert plan["stages"][-1]["objective_args"] is None and first["extra"] is None
    else:
        assert [s["objective_args"] for s in plan["stages"][:2]] == [{"cd_k": 3}] * 2


def test_a_kind_no_plug_declares_or_args_an_objective_does_not_take_are_refused():
    with pytest.raises(StagetrainError, match="declared"):
        Stage("s", 1, ["head"], extra={"kind": "os.system", "data_fraction": 0.5})
    with pytest.raises(StagetrainError, match="declared"):
        Stage("s", 1, ["head"], extra={"kind": "grow", "bn": "train_stats"})  # grow declares no bn
    with pytest.raises(StagetrainError, match="takes no parameters"):
        Stage("s", 1, ["head"], objective="autoencoder", objective_args={"noise": 0.2})
    with pytest.raises(StagetrainError, match="cd_k"):
        Stage("s", 1, ["head"], objective="rbm", objective_args={"k": 2})


@dataclass
class ToyStage(StageExtra, kind="toy_settings"):
    """A new strategy's own per-stage settings: one of its own, and one the engine asks."""

    warmup: int = 0
    data_fraction: float = 1.0


def test_a_new_strategy_declares_its_own_stage_settings_without_editing_stage():
    stage = Stage("s", 1, ["head"], extra=ToyStage(warmup=3, data_fraction=0.5))
    assert stage.extra.data_fraction == 0.5 and stage.extra.bn == "eval" and dict(stage.extra.partial) == {}
    plan = Plan("toy_settings", [stage])
    data = plan.to_dict()
    assert data["stages"][0]["extra"] == {"kind": "toy_settings", "warmup": 3, "data_fraction": 0.5}
    assert Plan.from_dict(data) == plan


def test_a_fresh_process_reads_a_plan_whose_strategy_it_has_not_imported():
    """The kind is the strategy's name: Plan.from_dict loads that plug's settings itself."""
    import json
    import subprocess
    import sys

    plan = _old_plan("grow", {**_old_stage("grow-1"), "data_fraction": 0.25})
    new = {**_old_stage("grow-1"), "extra": {"kind": "grow", "data_fraction": 0.5}}
    for k in ("noise", "cd_k", "data_fraction", "partial", "bn"):
        new.pop(k)
    code = ("import json, sys; from stagetrain.core.plan import Plan\n"
            "for d in json.loads(sys.argv[1]): print(type(Plan.from_dict(d).stages[0].extra).__name__,"
            " Plan.from_dict(d).stages[0].extra.data_fraction)")
    out = subprocess.run([sys.executable, "-c", code, json.dumps([plan, _old_plan("grow", new)])],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["GrowStage", "0.25", "GrowStage", "0.5"]


def test_a_plan_with_a_foreign_key_or_no_stages_is_one_paragraph():
    with pytest.raises(StagetrainError, match="it has colour, which are not fields"):
        Plan.from_dict(_old_plan("grow", {**_old_stage("s"), "colour": "red"}))
    with pytest.raises(StagetrainError, match="it lacks stages"):
        Plan.from_dict({"strategy": "grow"})


def test_a_second_plug_cannot_take_over_a_declared_kind():
    GrowStage  # noqa: B018 - grow's kind is declared
    with pytest.raises(StagetrainError, match="declares stage settings of kind 'grow'"):
        @dataclass
        class Impostor(StageExtra, kind="grow"):
            data_fraction: float = 0.1


def test_a_stage_setting_of_the_wrong_type_in_a_file_is_one_paragraph():
    stage = {k: v for k, v in _old_stage("grow-1").items() if k not in ("noise", "cd_k", "data_fraction", "partial", "bn")}
    with pytest.raises(StagetrainError, match=r"data_fraction='abc' is not a"):
        Plan.from_dict(_old_plan("grow", {**stage, "extra": {"kind": "grow", "data_fraction": "abc"}}))
    with pytest.raises(StagetrainError, match=r"cd_k='x' is not a"):
        Plan.from_dict(_old_plan("layerwise", {**stage, "objective": "rbm", "objective_args": {"cd_k": "x"}}))
    ok = Plan.from_dict(_old_plan("grow", {**stage, "extra": {"kind": "grow", "data_fraction": 1}}))
    assert ok.stages[0].extra.data_fraction == 1  # an int where a float is declared is a number
