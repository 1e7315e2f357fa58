"""Stage helpers as typed records (stagetrain/nn/stagehelpers.py): the plans write the plain
dicts run.json has always held, those dicts (an older run's) read back, the record reads
as that dict for code that indexes it, a bad dict is one paragraph, and the module built
from a record is the module built from its dict."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Plan, Stage
from stagetrain.nn.objectives import build_helper
from stagetrain.nn.stagehelpers import (
    HELPERS,
    AuxHead,
    Decoder,
    LMHead,
    RBMVisible,
    as_helper,
    from_dict,
)
from stagetrain.runs.runner import train

MLP = ["model.widths=[32,16]"]
CNN = ["model=cnn", "model.channels=[4,6]"]
# What each plan wrote before the helpers were typed (dry runs of the stagetrain before them).
PLANS = {
    "autoencoder": (["strategy.objective=autoencoder", *MLP], [
        {"kind": "decoder", "type": "linear", "in": 64, "out": 32, "tied": True, "kernel": None, "pool": 0},
        {"kind": "decoder", "type": "linear", "in": 32, "out": 16, "tied": True, "kernel": None, "pool": 0}, None]),
    "rbm": (["strategy.objective=rbm", "model.activation=sigmoid", *MLP],
            [{"kind": "rbm", "in": 64}, {"kind": "rbm", "in": 32}, None]),
    "aux_head": (["strategy.finetune.enabled=false", *MLP], [
        {"kind": "aux_head", "in_shape": [32], "out": 10}, {"kind": "aux_head", "in_shape": [16], "out": 10}]),
    "mlp_sr": (["strategy.aux_head=mlp_sr", *CNN], [
        {"kind": "aux_head", "in_shape": [4, 4, 4], "out": 10, "head": "mlp_sr", "layers": 3, "width": 4, "grid": 2,
         "reduce": 4, "mlp_layers": 3},
        {"kind": "aux_head", "in_shape": [6, 2, 2], "out": 10, "head": "mlp_sr", "layers": 3, "width": 6, "grid": 2,
         "reduce": 4, "mlp_layers": 3}, None]),
    "conv_decoder": (["strategy.objective=denoising", "model.pool_every=2", *CNN], [
        {"kind": "decoder", "type": "conv", "in": 1, "out": 4, "tied": True, "kernel": 3, "pool": 0},
        {"kind": "decoder", "type": "conv", "in": 4, "out": 6, "tied": True, "kernel": 3, "pool": 2}, None]),
}


@pytest.mark.parametrize("case", PLANS)
def test_a_layerwise_plan_writes_the_old_helper_dicts(case):
    overrides, expected = PLANS[case]
    plan = train(make_cfg("strategy=layerwise", *overrides, "dry_run=true"), None)["plan"]
    assert [s["helper"] for s in plan["stages"]] == expected
    assert Plan.from_dict(plan).to_dict() == plan  # and the plan reads back


def test_old_helper_dicts_read_back_and_read_as_themselves():
    olds = [h for _, hs in PLANS.values() for h in hs if h is not None]
    olds += [{"kind": "lm_head", "in": 16, "out": 30}, {"kind": "lm_head", "in": 16, "out": 31, "targets": "tokens"},
             {"kind": "aux_head", "in_shape": [4, 8, 8], "out": 10, "extra_layers": 2}]
    assert {from_dict(h).kind for h in olds} == set(HELPERS)
    for old in olds:
        helper = from_dict(old)
        assert helper.to_dict() == old and json.loads(json.dumps(helper.to_dict())) == old
        assert dict(helper) == old and helper == old and helper["kind"] == old["kind"]
        assert helper.get("targets") == old.get("targets") and hash(helper) == hash(from_dict(old))
        assert as_helper(helper) is helper and Stage("s", 1, ["helper"], helper=old).helper == helper
    assert from_dict(olds[-2]).reads_tokens and not from_dict(olds[-3]).reads_tokens


def test_typed_helpers_are_what_the_plans_name():
    assert Decoder("linear", 64, 32, True).to_dict() == PLANS["autoencoder"][1][0]
    assert RBMVisible(64).to_dict() == {"kind": "rbm", "in": 64}
    assert AuxHead((32,), 10) == from_dict({"kind": "aux_head", "in_shape": [32], "out": 10})
    assert LMHead(16, 31, "tokens").to_dict() == {"kind": "lm_head", "in": 16, "out": 31, "targets": "tokens"}


@pytest.mark.parametrize("data,words", [
    ({"kind": "teacher", "in": 3}, "names no known kind (known: aux_head, lm_head, decoder, rbm)"),
    ({"kind": "rbm", "in": 3, "out": 4}, "unknown keys ['out']"),
    ({"kind": "decoder", "type": "linear", "in": 3}, "missing keys ['out', 'tied']"),
])
def test_a_bad_helper_dict_is_one_paragraph(data, words):
    with pytest.raises(StagetrainError) as info:
        from_dict(data)
    assert words in str(info.value)


@pytest.mark.parametrize("old", [PLANS["autoencoder"][1][0], PLANS["mlp_sr"][1][0], {"kind": "rbm", "in": 64},
                                 {"kind": "lm_head", "in": 16, "out": 30}], ids=lambda h: h["kind"])
def test_the_module_built_from_a_record_is_the_module_built_from_its_dict(old):
    torch.manual_seed(0)
    a = build_helper(old)
    torch.manual_seed(0)
    b = build_helper(from_dict(old))
    assert type(a) is type(b) and a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
