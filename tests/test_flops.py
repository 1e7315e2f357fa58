"""FLOP accounting: the measured count (FlopCounterMode) agrees with the closed form."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg

from stagetrain.core.plan import Stage
from stagetrain.engine import freeze, prefix_len
from stagetrain.families import build_spec
from stagetrain.models import StagedModel
from stagetrain.nn.flops import analytic_flops, measure_step_flops


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_measured_step_flops_equal_analytic(model, frozen):
    cfg = make_cfg(f"model={model}")
    spec = build_spec(cfg.model, (1, 8, 8), 10)
    net = StagedModel(spec)
    names = net.block_names
    stage = Stage(name="s", epochs=1, trainable=[*names[frozen:], "head"])
    freeze(net, stage)
    p = prefix_len(net, stage)
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    step, prefix = measure_step_flops(stage, net, None, x, y, p)
    expected = analytic_flops(net, first_trainable=frozen)
    assert step + prefix == pytest.approx(expected, rel=1e-9)


def test_measuring_flops_changes_no_state():
    cfg = make_cfg("model=cnn")
    net = StagedModel(build_spec(cfg.model, (1, 8, 8), 10))
    stage = Stage(name="s", epochs=1, trainable=[*net.block_names, "head"])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    rng = torch.get_rng_state()
    measure_step_flops(stage, net, None, x, y, 0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in net.parameters())
