"""The part-type registry and the CNN with dense layers: specs, growth inside a CNN, LoRA by
name pattern, depth stacking, FLOPs, and the refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Stage
from stagetrain.families import FAMILIES, build_spec
from stagetrain.growth import apply_op, map_optimizer_state, optimizer_state_by_name
from stagetrain.growth.ops import add_lora, merge_lora
from stagetrain.models import StagedModel, count_parameters
from stagetrain.models.registry import table
from stagetrain.nn.flops import analytic_flops, measure_step_flops
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

KERAS_CNN = ["model=cnn", "model.channels=[4,6]", "model.pool_every=2", "model.fc_widths=[12]"]


def _cnn(*over: str, dtype=torch.float64) -> StagedModel:
    cfg = make_cfg(*KERAS_CNN, *over)
    torch.manual_seed(0)
    return StagedModel(build_spec(cfg.model, (1, 8, 8), 10)).to(dtype)


def _x(n=16, dtype=torch.float64):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=dtype)


def test_cnn_with_dense_layers_is_conv_conv_pool_dense_head():
    spec = _cnn().spec
    assert [(b["type"], b.get("pool", 0)) for b in spec["blocks"]] == [("conv", 0), ("conv", 2), ("linear", 0)]
    assert spec["blocks"][2]["in"] == 6 * 4 * 4 and spec["head"]["in"] == 12
    assert _cnn()(_x()).shape == (16, 10)


def test_spec_round_trip_rebuilds_the_same_function():
    model = _cnn().eval()
    again = StagedModel(model.spec).to(torch.float64).eval()
    again.load_state_dict(model.state_dict())
    assert torch.equal(again(_x()), model(_x()))


@pytest.mark.parametrize("block,width", [("block2", 9), ("block3", 20)])
def test_net2net_widens_a_conv_feeding_a_dense_block_and_a_dense_block_exactly(block, width):
    model = _cnn().eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    op = {"op": "widen", "block": block, "width": width, "method": "net2net"}
    new, info = apply_op(model, op, torch.Generator().manual_seed(0))
    new.eval()
    torch.testing.assert_close(new(_x()), model(_x()), atol=1e-10, rtol=0)
    assert new.spec["blocks"][int(block[-1]) - 1]["out"] == width
    assert count_parameters(new) > count_parameters(model)
    assert info["maps"][1]["spatial"] == (16 if block == "block2" else 1)  # conv -> flatten -> dense columns


def test_optimizer_moments_follow_a_conv_widening_into_the_dense_block():
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    torch.nn.functional.cross_entropy(model(_x()), torch.arange(16) % 10).backward()
    opt.step()
    prev = optimizer_state_by_name(opt, model)
    new, info = apply_op(model, {"op": "widen", "block": "block2", "width": 8}, torch.Generator().manual_seed(2))
    new_opt = torch.optim.Adam(new.parameters(), lr=0.0)
    map_optimizer_state(new_opt, new, prev, [info])
    g = info["mapping"]
    cols = new_opt.state[new.blocks["block3"].layer.weight]["exp_avg"].view(12, 8, 16)
    old = prev["blocks.block3.layer.weight"]["exp_avg"].view(12, 6, 16)
    assert torch.equal(cols, old[:, g]), "the dense block's columns copy the moments of the channel they read"


def test_deepen_after_the_dense_block_is_exact():
    model = _cnn().eval()
    new, _ = apply_op(model, {"op": "deepen", "after": "block3", "kind": "identity"}, torch.Generator())
    assert [b["type"] for b in new.spec["blocks"]] == ["conv", "conv", "linear", "linear"]
    torch.testing.assert_close(new.eval()(_x()), model(_x()), atol=1e-10, rtol=0)


def test_stack_copies_the_block_stack_on_top_of_itself():
    cfg = make_cfg("model.widths=[8,8]")
    model = StagedModel(build_spec(cfg.model, (8,), 10))  # 8 features in: every block keeps its shape
    new, _ = apply_op(model, {"op": "stack"}, torch.Generator())
    assert new.block_names == ["block1", "block2", "block3", "block4"]
    assert torch.equal(new.blocks["block4"].layer.weight, model.blocks["block2"].layer.weight)
    assert new(torch.randn(3, 8)).shape == (3, 10)
    for refused in (_cnn(), StagedModel(build_spec(cfg.model, (1, 8, 8), 10))):  # block1 maps 64 -> 8
        with pytest.raises(StagetrainError, match="keep its input shape"):
            apply_op(refused, {"op": "stack"}, torch.Generator())


def test_growth_ops_a_type_does_not_offer_are_refused():
    with pytest.raises(StagetrainError, match="do not support deepen:copy"):
        apply_op(_cnn(), {"op": "deepen", "after": "block1", "kind": "copy"}, torch.Generator())


def test_lora_targets_conv_layers_by_pattern_and_merges_exactly():
    model = _cnn().eval()
    adapted = add_lora(model, rank=2, alpha=4.0, patterns=["layer"])  # every block's main layer: conv and linear
    assert sorted(adapted.spec["lora"]["targets"]) == [f"blocks.block{i}.layer" for i in (1, 2, 3)]
    torch.testing.assert_close(adapted.eval()(_x()), model(_x()), atol=0, rtol=0)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_b" in name:
                p.normal_()
    merged = merge_lora(adapted).eval()
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(_x()), adapted(_x()), atol=1e-9, rtol=1e-9)
    default = add_lora(model, rank=2, alpha=4.0)  # no patterns: every Linear inside the blocks
    assert default.spec["lora"]["targets"] == ["blocks.block3.layer"]
    with pytest.raises(StagetrainError, match=r"matches none of the blocks. Linear/Conv2d layers.*e.g. strategy.lora.targets=\[layer\]"):
        add_lora(model, rank=2, alpha=4.0, patterns=["attn.qkv"])


@pytest.mark.parametrize("frozen", [0, 2])
def test_registered_flops_match_the_flop_counter(frozen):
    model = _cnn(dtype=torch.float32)
    stage = Stage(name="s", epochs=1, trainable=[*model.block_names[frozen:], "head"])
    from stagetrain.engine.runtime import freeze, prefix_len

    freeze(model, stage)
    step, prefix = measure_step_flops(stage, model, None, _x(2, torch.float32), torch.tensor([0, 1]),
                                      prefix_len(model, stage))
    assert step + prefix == pytest.approx(analytic_flops(model, frozen), rel=1e-9)


def test_registry_lists_every_type_with_its_growth_guarantees():
    rows = {r["type"]: r for r in table()}
    assert rows["conv"]["grow"]["widen:net2net"] == "exact"
    assert rows["linear"]["grow"]["deepen:random"] == "none"
    assert "rbm" in rows["linear"]["objectives"] and "rbm" not in rows["conv"]["objectives"]
    assert {"mlp", "cnn"} <= set(FAMILIES)


def test_grow_widens_the_dense_layer_inside_a_cnn_function_preserving(tmp_path):
    info = train(make_cfg(*KERAS_CNN, "strategy=grow", "strategy.widths=[[4,6,8],[4,6,24]]",
                          "strategy.epochs_per_stage=1", "train.epochs=1", "plots=false"), tmp_path / "run")
    growth = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("event") == "growth"]
    assert len(growth) == 1 and growth[0]["params_after"] > growth[0]["params_before"]
    assert growth[0]["probe_loss_after"] == pytest.approx(growth[0]["probe_loss_before"], abs=1e-5)
    assert info["status"] == "completed"


def test_partial_finetune_freezes_the_convs_and_retrains_the_dense_layer(tmp_path):
    src = tmp_path / "src"
    train(make_cfg(*KERAS_CNN, "dataset.classes=[0,1,2,3,4]", "train.epochs=1", "plots=false"), src)
    before = {k: v.clone() for k, v in torch.load(src / "checkpoints" / "best.pt", weights_only=True)["model"].items()}
    run = tmp_path / "ft"
    train(make_cfg(*KERAS_CNN, "dataset.classes=[5,6,7,8,9]", "strategy=finetune", f"strategy.source={src}",
                   "strategy.mode=partial", "strategy.freeze_blocks=2", "train.epochs=1", "plots=false"), run)
    after = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    for k, v in after.items():
        if k.startswith(("blocks.block1.", "blocks.block2.")):
            assert torch.equal(v, before[k]), f"{k}: a frozen conv changed"
    assert not torch.equal(after["blocks.block3.layer.weight"], before["blocks.block3.layer.weight"])


def test_bad_cnn_options_are_refused_naming_the_key():
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match="model.fc_widths"):
        validate(make_cfg("model=cnn", "model.fc_widths=[0]"))
    with pytest.raises(StagetrainError, match="model.pool_every"):
        validate(make_cfg("model=cnn", "model.pool_every=-1"))


def test_readme_lists_every_registered_part_type():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Part types and their growth guarantees"):readme.index("## Data")]
    missing = [r["type"] for r in table() if f"`{r['type']}`" not in section]
    assert not missing, f"README's part-type table lacks {missing}"
