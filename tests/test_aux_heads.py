"""Auxiliary heads of supervised layer-wise training (stagetrain/nn/auxheads.py): each kind
builds, trains, is gone after its stage, and its FLOPs are counted -- inside the stage's
FLOPs and apart (run.json ``aux_flops``, the dry run); the conv kinds are refused on MLP
blocks; an old integer ``strategy.aux_head`` builds the head it always built."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import final_weights, make_cfg
from torch import nn

from stagetrain.core.errors import StagetrainError
from stagetrain.engine import freeze
from stagetrain.families import build_spec
from stagetrain.models import StagedModel
from stagetrain.nn import auxheads
from stagetrain.nn.flops import measure_stage_flops
from stagetrain.nn.objectives import build_helper
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train
from stagetrain.strategies.layerwise import config as lw_config
from stagetrain.strategies.layerwise.plan import build

# A small ResNet on the digits (8x8 images, 10 classes): block1 [4, 8, 8], block2 [8, 4, 4].
TINY = ["model=resnet", "model.stem_channels=4", "model.stage_channels=[4,8]", "optim.lr=0.01", "plots=false",
        "device=cpu", "strategy=layerwise", "strategy.objective=supervised"]
KINDS = ["linear", "conv", "mlp_sr", "1"]  # "1": the older head (one plain 3x3 conv before pooling)


def _plan(*over: str):
    cfg = make_cfg(*TINY, *over)
    spec = build_spec(cfg.model, (1, 8, 8), 10)
    return cfg, spec, build(cfg, spec)


@pytest.mark.parametrize("kind", KINDS)
def test_each_head_trains_is_dropped_and_its_flops_are_reported(kind, tmp_path):
    run = tmp_path / "run"
    info = train(make_cfg(*TINY, f"strategy.aux_head={kind}", "strategy.epochs_per_layer=3",
                          "strategy.finetune.epochs=1"), run)
    assert info["status"] == "completed"
    greedy = [s for s in info["stages"] if s["name"].startswith("greedy-")]
    assert [s["name"] for s in greedy] == ["greedy-block1", "greedy-block2"]
    events = [e for e in read_metrics(run / "metrics.jsonl") if e.get("split") == "train"]
    for s in greedy:  # the auxiliary loss falls over the stage
        losses = [e["loss"] for e in events if e["stage_name"] == s["name"]]
        assert len(losses) == 3 and losses[-1] < losses[0], (s["name"], losses)
        assert 0 < s["aux_flops"] < s["flops"], s  # charged inside the stage, reported apart
    assert info["stages"][-1]["aux_flops"] == 0  # fine-tuning: the model's own head
    plain = StagedModel(build_spec(make_cfg(*TINY).model, (1, 8, 8), 10)).state_dict()
    got = final_weights(run)  # the final model: the plain architecture, no helper inside
    assert got.keys() == plain.keys() and all(got[k].shape == plain[k].shape for k in got)
    helper = info["plan"]["stages"][0]["helper"]
    assert helper.get("head", "linear") == ("linear" if kind == "1" else kind)
    assert helper.get("extra_layers", 0) == (1 if kind == "1" else 0)


def _hand_count(spec: dict) -> float:
    """Forward+backward FLOPs of the head's convs and linears for one sample: each costs f
    forward, f for its weight gradient and f for its input's (the block below trains)."""
    c, h, w = spec["in_shape"]
    out, head = spec["out"], spec.get("head", "linear")
    if head == "linear":
        f = spec.get("extra_layers", 0) * 2 * c * c * 9 * h * w + 2 * c * out
    else:
        width, k, g = spec["width"], spec["layers"], spec["grid"]
        if head == "mlp_sr":
            h, w, kernel = math.ceil(h / 4), math.ceil(w / 4), 1
        else:
            kernel = 3
        f = sum(2 * (c if i == 0 else width) * width * kernel * kernel * h * w for i in range(k))
        d = (width if k else c) * g * g
        f += spec.get("mlp_layers", 0) * 2 * d * d + 2 * d * out
    return 3.0 * f


def test_aux_flops_equal_a_hand_count_and_sit_inside_the_stage_flops():
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 1])
    bodies: dict[int, set[float]] = {0: set(), 1: set()}
    for kind in KINDS:
        _, spec, plan = _plan(f"strategy.aux_head={kind}")
        model = StagedModel(spec)
        for index, stage in enumerate(plan.stages[:2]):  # greedy-block1 (with the stem), greedy-block2 (prefix 1)
            helper = build_helper(stage.helper)
            freeze(model, stage)
            step, _, aux = measure_stage_flops(stage, model, helper, x, y, index)
            assert aux == pytest.approx(_hand_count(stage.helper), rel=1e-9), stage.helper
            bodies[index].add(step - aux)
    # the stage's FLOPs less the head's are the blocks' alone, whatever the head: the head's
    # count is exactly its share of the stage's
    assert len(bodies[0]) == 1 and len(bodies[1]) == 1, bodies


def test_the_dry_run_shows_the_heads_flops(capsys):
    train(make_cfg(*TINY, "strategy.aux_head=mlp_sr", "dry_run=true"), None)
    out = capsys.readouterr().out
    assert "of which aux" in out and "auxiliary heads:" in out


def test_published_defaults_are_resolved_into_the_plan():
    _, spec, plan = _plan("strategy.aux_head=mlp_sr")
    helper = plan.stages[1].helper
    assert helper == {"kind": "aux_head", "in_shape": spec["blocks"][1]["out_shape"], "out": 10, "head": "mlp_sr",
                      "layers": 3, "width": 8, "grid": 2, "reduce": 4, "mlp_layers": 3}
    _, _, plan = _plan("strategy.aux_head=conv", "strategy.aux_width=6", "strategy.aux_layers=1",
                       "strategy.aux_grid=1")
    head = build_helper(plan.stages[0].helper)
    convs = [m for m in head.modules() if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in convs] == [(4, 6, (3, 3))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == 2 and head.layer.in_features == 6
    assert lw_config.AUX_HEADS == auxheads.HEADS


def test_without_finetuning_the_last_head_is_the_models_head_shape():
    _, spec, plan = _plan("strategy.aux_head=conv", "strategy.finetune.enabled=false")
    first, last = plan.stages[0].helper, plan.stages[-1].helper
    assert first["head"] == "conv" and "head" not in last and plan.stages[-1].helper_to_head


def test_an_old_integer_builds_the_old_head():
    _, spec, plan = _plan("strategy.aux_head=1")
    helper = plan.stages[0].helper
    assert helper == {"kind": "aux_head", "in_shape": spec["blocks"][0]["out_shape"], "out": 10, "extra_layers": 1}
    head = build_helper(helper)
    assert {k: tuple(v.shape) for k, v in head.state_dict().items()} == {  # the names an old checkpoint holds
        "body.0.weight": (4, 4, 3, 3), "body.0.bias": (4,), "layer.weight": (10, 4), "layer.bias": (10,)}
    old = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    old.load_state_dict({"0.weight": head.body[0].weight, "0.bias": head.body[0].bias})
    z = torch.randn(3, 4, 8, 8)
    assert torch.equal(head(z), head.layer(old(z)))


@pytest.mark.parametrize("over,match", [
    (["model=mlp", "strategy.aux_head=conv"], r"reads feature maps.*block1.*strategy.aux_head=linear"),
    (["model=mlp", "strategy.aux_head=mlp_sr"], r"reads feature maps.*For MLP and Transformer"),
    (["strategy.aux_head=cnn"], r"strategy.aux_head='cnn' is not valid: choose one of linear, conv, mlp_sr"),
    (["strategy.aux_width=8"], r"strategy.aux_width=8 is an option of the conv and mlp_sr"),
    (["strategy.aux_head=conv", "strategy.aux_grid=0"], r"strategy.aux_grid=0 is out of range"),
])
def test_bad_aux_head_settings_get_one_clear_paragraph(over, match):
    with pytest.raises(StagetrainError, match=match):
        train(make_cfg("strategy=layerwise", "strategy.objective=supervised", *over, "dry_run=true"), None)
