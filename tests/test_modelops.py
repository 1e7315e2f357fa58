"""Growth and LoRA ops as typed records (stagetrain/nn/modelops.py): they round-trip through the
plain dicts run.json has always held, plans write exactly those dicts, an older run's plan
reads back, a bad dict is one paragraph, and ``apply_op`` applies a typed op as it applied
its dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Plan, Stage
from stagetrain.families import build_spec
from stagetrain.growth import apply_op
from stagetrain.models import StagedModel
from stagetrain.nn.modelops import OPS, AddLora, Deepen, MergeLora, Stack, Widen, as_op, from_dict
from stagetrain.runs.runner import train

LEGACY_RUN = Path(__file__).parent / "data" / "legacy_layerwise_run" / "run.json"

# The dicts the plans wrote before the ops were typed (a grow dry run, finetune add_layers and lora).
OLD_DICTS = [
    {"op": "widen", "block": "block1", "width": 64, "method": "net2net", "noise": 0.0},
    {"op": "deepen", "after": "block1", "kind": "identity"},
    {"op": "deepen", "after": "block3", "kind": "random"},
    {"op": "stack"},
    {"op": "add_lora", "rank": 4, "alpha": 8.0, "targets": []},
    {"op": "add_lora", "rank": 2, "alpha": 4.0, "targets": ["*attn*", "*mlp*"]},
    {"op": "merge_lora"},
]


@pytest.mark.parametrize("data", OLD_DICTS, ids=lambda d: d["op"])
def test_an_old_op_dict_reads_back_and_writes_the_same_dict(data):
    op = from_dict(data)
    assert type(op) is OPS[data["op"]]
    assert op.to_dict() == data and json.loads(json.dumps(op.to_dict())) == data
    assert from_dict(op.to_dict()) == op and as_op(op) is op


def test_every_op_type_round_trips():
    ops = [Widen("block2", 30, "random", 0.1), Deepen("block1", "residual_zero"), Stack(),
           AddLora(8, 16.0, ("block1*",)), AddLora(8, 16.0), MergeLora()]
    assert {type(op) for op in ops} == set(OPS.values())
    for op in ops:
        assert from_dict(op.to_dict()) == op


@pytest.mark.parametrize("data,words", [
    ({"op": "shrink", "block": "block1"}, "names no known op (known: widen, deepen, stack, add_lora, merge_lora)"),
    ({"op": "widen", "block": "block1", "width": 8, "colour": "red"}, "unknown keys ['colour']"),
    ({"op": "widen", "block": "block1"}, "missing keys ['width']"),
    (["widen"], "names no known op"),
])
def test_a_bad_op_dict_is_one_paragraph_naming_what_is_wrong(data, words):
    with pytest.raises(StagetrainError) as info:
        from_dict(data)
    assert words in str(info.value)


def test_plans_write_the_old_dicts():
    """run.json's plan keeps its format: a grow schedule's widen and deepen, finetune's
    add_layers deepen and lora's add/merge, exactly as before the ops were typed."""
    grow = train(make_cfg("strategy=grow", "strategy.widths=[[16],[64],[64,64]]", "dry_run=true"), None)["plan"]
    assert [s["ops"] for s in grow["stages"]] == [[], [OLD_DICTS[0]], [OLD_DICTS[1]]]
    added = train(make_cfg("strategy=finetune", "strategy.source=random", "strategy.mode=add_layers",
                           "dry_run=true"), None)["plan"]
    assert [s["ops"] for s in added["stages"]] == [[OLD_DICTS[2]]]
    lora = train(make_cfg("strategy=finetune", "strategy.source=random", "strategy.mode=lora",
                          "dry_run=true"), None)["plan"]
    assert [s["ops"] for s in lora["stages"]] == [[OLD_DICTS[4]]] and lora["final_ops"] == [OLD_DICTS[6]]
    assert Plan.from_dict(grow).to_dict() == grow and Plan.from_dict(lora).to_dict() == lora


def test_an_older_runs_plan_reads_back():
    """The plan of an old-format run directory's run.json (fields added since take their
    defaults), and a plan dict whose stages hold plain op dicts."""
    old = json.loads(LEGACY_RUN.read_text())["plan"]
    plan = Plan.from_dict(old)
    assert [s.name for s in plan.stages] == [s["name"] for s in old["stages"]]
    again = plan.to_dict()
    moved = {"noise", "cd_k", "data_fraction", "partial", "bn"}  # now objective_args and extra (test_plan_format.py)
    assert all(again["stages"][k][key] == value for k, s in enumerate(old["stages"]) for key, value in s.items()
               if key not in moved)
    assert all(s["objective_args"] is None and s["extra"] is None for s in again["stages"])  # supervised, layerwise
    stage = Stage("grow-2", 1, ["block1", "head"], ops=[OLD_DICTS[0], OLD_DICTS[3]])
    assert stage.ops == [Widen("block1", 64, "net2net", 0.0), Stack()]
    assert Plan("grow", [stage], final_ops=[{"op": "merge_lora"}]).final_ops == [MergeLora()]


def _mlp() -> StagedModel:
    torch.manual_seed(0)
    return StagedModel(build_spec(make_cfg("model=mlp", "model.widths=[6,6]").model, (1, 4, 4), 3)).double()


@pytest.mark.parametrize("data", [OLD_DICTS[0], OLD_DICTS[1], OLD_DICTS[4]], ids=lambda d: d["op"])
def test_apply_op_applies_a_typed_op_as_its_dict(data):
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    by_dict, info = apply_op(_mlp(), data, torch.Generator().manual_seed(3))
    by_type, info2 = apply_op(_mlp(), from_dict(data), torch.Generator().manual_seed(3))
    assert by_type.spec == by_dict.spec and info2["op"] == info["op"]
    state = by_dict.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in by_type.state_dict().items())
    assert torch.equal(by_type.eval()(x), by_dict.eval()(x))
