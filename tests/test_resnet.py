"""model=resnet: the spec rebuilds the model, Net2Net widening and zero-scale deepening keep
the function, FLOPs match torch's counter, and every strategy runs on it end to end."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import final_weights, make_cfg
from safetensors import safe_open
from torch.utils.flop_counter import FlopCounterMode

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Stage
from stagetrain.engine import freeze
from stagetrain.families import build_spec
from stagetrain.growth import apply_op, map_optimizer_state, optimizer_state_by_name
from stagetrain.models import StagedModel, count_parameters
from stagetrain.models.resnet_growth import deepen_stage, widen_stage
from stagetrain.nn.flops import analytic_flops, measure_step_flops
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

TINY = ["model=resnet", "model.stem_channels=4", "model.stage_channels=[4,8]", "optim.lr=0.01", "plots=false",
        "device=cpu"]


def _model(shape=(1, 8, 8), dtype=torch.float64, **over) -> StagedModel:
    keys = {"stem_channels": 4, "stage_channels": "[4,6]", "blocks_per_stage": 2, **over}
    cfg = make_cfg("model=resnet", *[f"model.{k}={v}" for k, v in keys.items()])
    torch.manual_seed(0)
    model = StagedModel(build_spec(cfg.model, shape, 10)).to(dtype)
    with torch.no_grad():  # BN statistics and affine parameters far from their initial values
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return model.eval()


def _x(shape=(1, 8, 8), dtype=torch.float64) -> torch.Tensor:
    return torch.randn(6, *shape, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("block,stem", [("basic", "cifar"), ("bottleneck", "imagenet")])
def test_spec_round_trip_rebuilds_the_same_model(block, stem):
    model = _model(block=block, stem=stem, blocks_per_stage="[2,1]")
    spec = json.loads(json.dumps(model.spec))  # plain data, as a checkpoint stores it
    again = StagedModel(spec).to(torch.float64)
    again.load_state_dict(model.state_dict())
    assert torch.equal(again.eval()(_x()), model(_x()))
    assert [b["units"] for b in spec["blocks"]] == [2, 1] and spec["head"]["type"] == "pool_linear"


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("index", [0, 1])  # stage -> next stage, and last stage -> pooled head
def test_net2net_widen_preserves_function_incl_bn_statistics_and_shortcut(block, index):
    model = _model(block=block)
    assert model.spec["blocks"][0]["shortcut"] == "identity"  # stem 4 -> stage 4: widening adds a projection
    new, info = widen_stage(model, index, 11, generator=torch.Generator().manual_seed(0))
    new = new.to(torch.float64).eval()
    assert new.spec["blocks"][index]["out"] == 11 and new.spec["blocks"][index]["shortcut"] == "projection"
    assert (new(_x()) - model(_x())).abs().max() <= 1e-10
    assert info["mapping"].shape == (11,)


def test_widened_basic_model_has_the_parameters_of_one_built_at_the_new_width():
    model = _model(stem_channels=3, stage_channels="[4,6]")
    new, _ = widen_stage(model, 0, 9, generator=torch.Generator().manual_seed(0))
    scratch = _model(stem_channels=3, stage_channels="[9,6]")
    assert count_parameters(new) == count_parameters(scratch) > count_parameters(model)
    assert {k: v.shape for k, v in new.state_dict().items()} == {k: v.shape for k, v in scratch.state_dict().items()}


def test_adam_moments_are_mapped_through_a_stage_widening():
    model = _model(dtype=torch.float32).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    F.cross_entropy(model(_x(dtype=torch.float32)), torch.arange(6)).backward()
    opt.step()
    prev = optimizer_state_by_name(opt, model)
    new, info = widen_stage(model, 0, 7, generator=torch.Generator().manual_seed(2))
    new_opt = torch.optim.Adam(new.parameters(), lr=0.0)
    map_optimizer_state(new_opt, new, prev, [info])
    g = info["mapping"]
    c = torch.bincount(g).float()[g]
    for name, p in new.named_parameters():
        if name in prev:
            assert new_opt.state[p]["exp_avg"].shape == p.shape, name
    unit1 = "blocks.block1.units.1.conv1.weight"  # rows (mid = out) own, columns read the stage's channels
    got = new_opt.state[new.get_parameter(unit1)]
    torch.testing.assert_close(got["exp_avg"], prev[unit1]["exp_avg"][g][:, g] / c[:, None, None, None])
    torch.testing.assert_close(got["exp_avg_sq"], prev[unit1]["exp_avg_sq"][g][:, g] / c[:, None, None, None] ** 2)
    bn = "blocks.block1.units.0.bn2.weight"
    torch.testing.assert_close(new_opt.state[new.get_parameter(bn)]["exp_avg"], prev[bn]["exp_avg"][g] / c)
    consumer = "blocks.block2.units.0.shortcut.conv.weight"
    assert torch.equal(new_opt.state[new.get_parameter(consumer)]["exp_avg"], prev[consumer]["exp_avg"][:, g])


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("kind", ["residual_zero", "identity"])
def test_deepen_inserts_a_zero_scale_stage_exactly_in_train_and_eval_mode(block, kind):
    model = _model(block=block)
    new = deepen_stage(model, 0, kind).to(torch.float64)
    assert new.block_names == ["block1", "block3", "block2"]
    added = new.spec["blocks"][1]
    assert added["stride"] == 1 and added["units"] == 1 and added["in"] == added["out"] == 4
    assert (new.eval()(_x()) - model(_x())).abs().max() == 0
    assert (new.train()(_x()) - model.train()(_x())).abs().max() <= 1e-12
    random = deepen_stage(model.eval(), 0, "random").to(torch.float64).eval()
    assert (random(_x()) - model(_x())).abs().max() > 1e-3


def test_growth_dispatcher_refuses_what_the_stage_does_not_offer():
    with pytest.raises(StagetrainError, match="do not support deepen:bogus"):
        apply_op(_model(), {"op": "deepen", "after": "block1", "kind": "bogus"}, torch.Generator())


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_forward_flops_of_every_part_match_torchs_flop_counter(block, stem):
    from stagetrain.core.spec import part_from_dict
    from stagetrain.models.registry import part_flops
    shape = (3, 13, 11)  # odd sizes: strided convs round up
    model = _model(shape, torch.float32, block=block, stem=stem, stage_channels="[4,6,8]")
    spec, h = model.spec, _x(shape, torch.float32)[:2]
    parts = [("stem", spec["stem"])] + [(b["name"], b) for b in spec["blocks"]] + [("head", spec["head"])]
    for name, part in parts:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            out = model.group(name)(h)
        assert counter.get_total_flops() / 2 == part_flops(part_from_dict(part, name)), name
        assert name == "head" or list(out.shape[1:]) == part["out_shape"], name
        h = out


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_measured_training_flops_equal_the_analytic_sum_when_everything_trains(block):
    """(With a frozen prefix the per-part closed form undercounts a stage: its inner convs
    compute input gradients even when nothing below trains.)"""
    net = _model(dtype=torch.float32, block=block).train()
    stage = Stage(name="s", epochs=1, trainable=["stem", *net.block_names, "head"])
    freeze(net, stage)
    step, prefix = measure_step_flops(stage, net, None, _x(dtype=torch.float32)[:2], torch.tensor([0, 1]), 0)
    assert prefix == 0 and step == pytest.approx(analytic_flops(net, 0), rel=1e-9)


def test_random_widen_keeps_old_channels_and_noise_perturbs_only_new_replicas():
    model = _model()
    w = model.blocks["block1"].units[0].conv2.weight
    rand, _ = widen_stage(model, 0, 9, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(rand.blocks["block1"].units[0].conv2.weight[:4, :4], w)
    grown = [widen_stage(model, 0, 9, noise=n, generator=torch.Generator().manual_seed(s))[0]
             for n, s in ((0.1, 1), (0.1, 1), (0.1, 2), (0.0, 1))]
    a, b, c, plain = (m.blocks["block1"].units[0].conv2.weight for m in grown)
    assert torch.equal(a, b) and not torch.equal(a, c), "seeded"
    assert torch.equal(a[:4], plain[:4]) and not torch.equal(a[4:], plain[4:]), "only the new replicas move"


# ------------------------------------------------------------------ strategies end to end
def test_scratch_trains_on_digits(tmp_path):
    info = train(make_cfg(*TINY, "strategy=scratch", "train.epochs=2"), tmp_path / "run")
    assert info["status"] == "completed" and info["final"]["test/acc"] > 0.5


GROW = [*TINY, "strategy=grow", "strategy.widths=[[4,8],[8,16],[8,16,16]]", "strategy.epochs_per_stage=1",
        "train.epochs=1"]


def test_grow_widens_and_deepens_with_continuous_probe_loss(tmp_path):
    info = train(make_cfg(*GROW), tmp_path / "run")
    growths = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("event") == "growth"]
    assert len(growths) == 2
    for e in growths:
        assert e["params_after"] > e["params_before"]
        assert e["probe_loss_after"] == pytest.approx(e["probe_loss_before"], abs=1e-5, rel=1e-5)
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert [(b["out"], b["stride"]) for b in arch["blocks"]] == [(8, 1), (16, 2), (16, 1)]
    assert info["status"] == "completed"


def test_resume_at_a_growth_gives_bit_identical_weights(tmp_path):
    """The run restarted from its stage-1 checkpoint grows and trains to the same weights."""
    args = [*GROW[:-3], "strategy.widths=[[4,8],[8,16]]", "strategy.epochs_per_stage=1", "train.epochs=1",
            "strategy.optimizer_state=map"]
    train(make_cfg(*args), tmp_path / "ref")
    run = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ref", run)
    for name in ("last.pt", "last-prev.pt", "stage-2-grow-2.pt"):
        (run / "checkpoints" / name).unlink(missing_ok=True)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "stopped"}))
    stage1 = run / "checkpoints" / "stage-1-grow-1.pt"
    written = stage1.stat().st_mtime_ns
    assert train(make_cfg(*args, "resume=auto"), run)["status"] == "completed"
    assert stage1.stat().st_mtime_ns == written, "stage 1 ran again: the run restarted instead of resuming"
    ref, got = final_weights(tmp_path / "ref"), final_weights(run)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_layerwise_supervised_with_conv_aux_heads(tmp_path):
    info = train(make_cfg(*TINY, "strategy=layerwise", "strategy.objective=supervised", "strategy.aux_head=1",
                          "strategy.epochs_per_layer=1", "strategy.finetune.epochs=1"), tmp_path / "run")
    assert [s["name"] for s in info["stages"]] == ["greedy-block1", "greedy-block2", "finetune"]
    assert info["status"] == "completed"


def test_layerwise_last_aux_head_becomes_the_pooling_head(tmp_path):
    info = train(make_cfg(*TINY, "strategy=layerwise", "strategy.finetune.enabled=false",
                          "strategy.epochs_per_layer=2"), tmp_path / "run")
    last = info["stages"][-1]
    assert info["final"]["val/acc"] == pytest.approx(last["final"]["val/acc"])


def test_layerwise_autoencoder_is_refused_with_a_clear_error():
    with pytest.raises(StagetrainError, match="autoencoder cannot train block1.*resnet_stage.*supports: supervised"):
        train(make_cfg(*TINY, "strategy=layerwise", "strategy.objective=autoencoder", "dry_run=true"), None)


@pytest.fixture(scope="module")
def resnet_source(tmp_path_factory):
    run = tmp_path_factory.mktemp("src") / "resnet"
    train(make_cfg(*TINY, "strategy=scratch", "dataset.classes=[0,1,2,3,4]", "train.epochs=2"), run)
    return run


@pytest.mark.parametrize("mode,extra", [("lora", "strategy.lora.targets=[*conv*]"), ("add_layers", "seed=0")])
def test_finetune_from_a_resnet_source(resnet_source, tmp_path, mode, extra):
    info = train(make_cfg("strategy=finetune", f"strategy.source={resnet_source}", f"strategy.mode={mode}", extra,
                          "dataset.classes=[5,6,7,8,9]", "train.epochs=1", "plots=false"), tmp_path / "run")
    assert info["status"] == "completed"
    resumable = final_weights(tmp_path / "run")  # last.pt: before the final merge
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        arch, shared = json.loads(f.metadata()["arch"]), set(f.keys())
    if mode == "lora":
        adapted = {k.rsplit(".", 1)[0] for k in resumable if "lora_b" in k}
        assert any(".conv1" in k for k in adapted) and any("shortcut.conv" in k for k in adapted)
        assert "lora" not in arch and not any("lora" in k for k in shared), "merged at the end"
    else:
        assert [b["name"] for b in arch["blocks"]] == ["block1", "block2", "block3"]
        assert arch["blocks"][2]["stride"] == 1 and arch["blocks"][2]["in"] == arch["blocks"][2]["out"] == 8


def test_bad_model_values_are_refused():
    with pytest.raises(StagetrainError, match="model.blocks_per_stage"):
        train(make_cfg(*TINY, "model.blocks_per_stage=[1,2,3]", "dry_run=true"), None)
    with pytest.raises(StagetrainError, match="needs image inputs"):
        train(make_cfg(*TINY, "dataset=synthetic", "dataset.shape=[20]", "dry_run=true"), None)
