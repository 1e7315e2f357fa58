"""model=transformer: its part types (spec round trip, FLOPs against torch's counter, the
token stem and causal LM head), its growth operators' guarantees, and small real runs of
every strategy on it (digits, one epoch)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_epochs_exactly_once, copy_rewound_to_stage_1, make_cfg
from safetensors import safe_open
from torch.utils.flop_counter import FlopCounterMode

from stagetrain.core.errors import StagetrainError
from stagetrain.core.spec import part_from_dict
from stagetrain.families import transformer as family
from stagetrain.growth import apply_op, map_optimizer_state, optimizer_state_by_name, stack
from stagetrain.models import StagedModel, count_parameters
from stagetrain.models.registry import part_flops
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

TINY = ["model=transformer", "model.d_model=16", "model.n_heads=2", "dataset.max_train=128", "train.epochs=1",
        "plots=false"]


def _model(dtype=torch.float64, **over) -> StagedModel:
    m = replace(family.Config(d_model=16, n_heads=2, n_layers=2, patch=2), **over)
    torch.manual_seed(0)
    return StagedModel(family.spec(m, (1, 8, 8), 10)).to(dtype)


def _x(dtype=torch.float64, n=8):
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)


def _token_model(**over) -> StagedModel:
    m = replace(family.Config(d_model=16, n_heads=2, n_layers=2, stem="tokens", vocab_size=11, max_len=12,
                              head="lm"), **over)
    torch.manual_seed(0)
    return StagedModel(family.spec(m, (12,), 11)).to(torch.float64).eval()


def _forward_flops(model: StagedModel, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / x.shape[0]


def _registered_flops(spec: dict) -> float:
    return sum(part_flops(part_from_dict(p, "part")) for p in [spec["stem"], *spec["blocks"], spec["head"]])


def test_spec_round_trips_through_json_and_rebuilds_the_same_function():
    model = _model(pool="cls").eval()
    spec = json.loads(json.dumps(model.spec))
    again = StagedModel(spec).to(torch.float64).eval()
    again.load_state_dict(model.state_dict())
    assert spec["stem"]["tokens"] == 17 and spec["blocks"][0]["out_shape"] == [17, 16]  # 16 patches + CLS
    assert torch.equal(again(_x()), model(_x()))


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_patch_stem_layers_and_head_flops_match_torch_flop_counter(pool):
    model = _model(pool=pool, dropout=0.0)
    assert _forward_flops(model, _x()) == pytest.approx(_registered_flops(model.spec), rel=1e-12)


def test_token_stem_flops_match_torch_flop_counter_with_causal_attention():
    for head in ("lm", "cls"):
        model = _token_model(head=head, causal=True)
        x = torch.randint(0, 11, (3, 12))
        assert _forward_flops(model, x) == pytest.approx(_registered_flops(model.spec), rel=1e-12)


def test_lm_head_is_causal_and_per_position():
    model = _token_model()
    x = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0))
    logits = model(x)
    assert logits.shape == (2, 12, 11)
    t = 5
    changed = x.clone()
    changed[:, t] = (changed[:, t] + 1) % 11
    other = model(changed)
    assert torch.equal(other[:, :t], logits[:, :t]), "a later token changed earlier logits"
    assert not torch.allclose(other[:, t:], logits[:, t:])


def test_lm_head_ties_its_weight_to_the_token_embedding():
    model = _token_model()
    assert model.head.weight is model.stem.embed.weight
    assert not any(k.startswith("head.") and "weight" in k and "norm" not in k for k in model.state_dict())
    model(torch.randint(0, 11, (2, 12))).sum().backward()
    assert model.stem.embed.weight.grad is not None
    untied = _token_model(tie_embeddings=False)
    assert untied.head.weight is not untied.stem.embed.weight and "head.layer.weight" in untied.state_dict()


def test_stack_copies_every_layer_on_top():
    model = _model()
    grown = stack(model)
    assert grown.block_names == ["block1", "block2", "block3", "block4"]
    for src, dst in (("block1", "block3"), ("block2", "block4")):
        a, b = model.blocks[src].state_dict(), grown.blocks[dst].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert grown(_x()).shape == (8, 10)


@pytest.mark.parametrize("kind", ["residual_zero", "identity"])
def test_zero_output_layer_insert_is_exact_float64(kind):
    model = _model(dropout=0.1).eval()
    grown, _ = apply_op(model, {"op": "deepen", "after": "block1", "kind": kind}, torch.Generator())
    grown = grown.eval()
    assert grown.block_names == ["block1", "block3", "block2"]
    assert (grown(_x()) - model(_x())).abs().max() <= 1e-5
    assert grown.blocks["block3"].mlp.fc1.weight.abs().sum() > 0, "the inserted layer's inner weights are fresh"


def test_mlp_widen_is_exact_grows_parameters_and_maps_optimizer_state():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    F.cross_entropy(model(_x()), torch.arange(8)).backward()
    opt.step()
    prev = optimizer_state_by_name(opt, model)
    op = {"op": "widen", "block": "block2", "width": 100, "method": "net2net", "noise": 0.0}
    grown, info = apply_op(model, op, torch.Generator().manual_seed(2))
    assert (grown.eval()(_x()) - model.eval()(_x())).abs().max() <= 1e-10
    d, old = 16, 64
    assert count_parameters(grown) - count_parameters(model) == (100 - old) * (2 * d + 1)
    new_opt = torch.optim.Adam(grown.parameters(), lr=0.0)
    map_optimizer_state(new_opt, grown, prev, [info])
    g = info["mapping"]
    counts = torch.bincount(g).to(torch.float64)[g]
    mlp, key = grown.blocks["block2"].mlp, "blocks.block2.mlp."
    rows = new_opt.state[mlp.fc1.weight]["exp_avg"]
    assert torch.equal(rows, prev[key + "fc1.weight"]["exp_avg"][g] / counts[:, None])
    bias = new_opt.state[mlp.fc1.bias]["exp_avg_sq"]
    assert torch.equal(bias, prev[key + "fc1.bias"]["exp_avg_sq"][g] / counts ** 2)
    assert torch.equal(new_opt.state[mlp.fc2.weight]["exp_avg"], prev[key + "fc2.weight"]["exp_avg"][:, g])
    qkv = new_opt.state[grown.blocks["block2"].attn.qkv.weight]["exp_avg"]
    assert torch.equal(qkv, prev["blocks.block2.attn.qkv.weight"]["exp_avg"])


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.head=lm"], "model.head=lm"),
    (["model.stem=tokens"], "model.stem=tokens"),
    (["model.d_model=30"], "divisible by model.n_heads"),
    (["model.patch=3"], "model.patch=3"),
    (["dataset=synthetic", "dataset.shape=[20]"], "needs image inputs"),
])
def test_invalid_settings_are_refused_naming_the_key(overrides, message):
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match=message):
        validate(make_cfg("model=transformer", *overrides))


def test_layerwise_refuses_unsupervised_objectives():
    with pytest.raises(StagetrainError, match="transformer_layer"):
        train(make_cfg(*TINY, "strategy=layerwise", "strategy.objective=autoencoder", "dry_run=true"), None)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained transformer: the scratch run, and the source of the finetune tests."""
    run = tmp_path_factory.mktemp("tf") / "scratch"
    args = [a for a in TINY if not a.startswith(("dataset.max_train", "train.epochs"))]
    info = train(make_cfg(*args, "strategy=scratch", "dataset.max_train=512", "train.epochs=2", "optim.lr=0.005"), run)
    return run, info


def test_scratch_trains_and_saves_a_reloadable_model(source):
    run, info = source
    assert info["status"] == "completed" and info["final"]["test/acc"] > 0.3
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        model = StagedModel(json.loads(f.metadata()["arch"]))
        model.load_state_dict({k: f.get_tensor(k) for k in f.keys()})
    assert model.spec["blocks"][0]["type"] == "transformer_layer"


def _final(run) -> tuple[dict[str, torch.Tensor], dict]:
    """The final weights and architecture (model.safetensors: after LoRA merging)."""
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["arch"])


def _weights(run) -> dict[str, torch.Tensor]:
    return _final(run)[0]


@pytest.mark.parametrize("targets", [["attn.qkv", "mlp.fc1"], []])
def test_finetune_lora_trains_only_adapters_and_head_then_merges(source, tmp_path, targets):
    run, _ = source
    arg = f"strategy.lora.targets=[{','.join(targets)}]"
    info = train(make_cfg(*TINY, "strategy=finetune", f"strategy.source={run}", "strategy.mode=lora", arg), tmp_path / "r")
    src, (got, arch) = _weights(run), _final(tmp_path / "r")
    assert not any("lora_" in k for k in got) and "lora" not in arch
    adapted = {f"blocks.{b}.{n}.weight" for b in ("block1", "block2")
               for n in (targets or ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"])}
    for k, v in got.items():
        if k.startswith("head."):
            continue
        assert torch.equal(v, src[k]) != (k in adapted), k  # merged adapters changed exactly the targets
    rank, d, hidden = 4, 16, 64
    shapes = {"attn.qkv": (d, 3 * d), "attn.proj": (d, d), "mlp.fc1": (d, hidden), "mlp.fc2": (hidden, d)}
    lora = 2 * sum(rank * (i + o) for n, (i, o) in shapes.items() if n in (targets or shapes))
    head = 2 * d + d * 10 + 10
    assert info["stages"][-1]["trainable_params"] == lora + head


def test_finetune_bitfit_trains_only_biases_and_head(source, tmp_path):
    run, _ = source
    train(make_cfg(*TINY, "strategy=finetune", f"strategy.source={run}", "strategy.mode=bitfit"), tmp_path / "r")
    src, got = _weights(run), _weights(tmp_path / "r")
    for k, v in got.items():
        if not k.startswith("head."):
            assert torch.equal(v, src[k]) == (not k.endswith("bias")), k


def test_finetune_add_layers_inserts_a_trainable_layer(source, tmp_path):
    run, _ = source
    info = train(make_cfg(*TINY, "strategy=finetune", f"strategy.source={run}", "strategy.mode=add_layers",
                          "strategy.lr_decay=0.5"), tmp_path / "r")
    assert info["status"] == "completed" and any(k.startswith("blocks.block3.") for k in _weights(tmp_path / "r"))


def test_layerwise_supervised_hands_its_aux_head_to_the_model_head(tmp_path):
    info = train(make_cfg(*TINY, "strategy=layerwise", "strategy.epochs_per_layer=1",
                          "strategy.finetune.enabled=false"), tmp_path / "r")
    assert [s["name"] for s in info["stages"]] == ["greedy-block1", "greedy-block2"]
    last = info["stages"][-1]["final"]
    assert info["final"]["val/loss"] == pytest.approx(last["val/loss"], abs=1e-5)
    assert info["final"]["val/acc"] == last["val/acc"]


def _growths(run):
    return [e for e in read_metrics(run / "metrics.jsonl") if e.get("event") == "growth"]


def test_grow_by_stacking_layers(tmp_path):
    info = train(make_cfg(*TINY, "strategy=grow", "strategy.deepen=stack", "strategy.widths=[[16],[16,16]]",
                          "strategy.epochs_per_stage=1"), tmp_path / "r")
    assert [s["params"] for s in info["stages"]][1] > info["stages"][0]["params"]
    arch = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert [b["name"] for b in arch["blocks"]] == ["block1", "block2"] and len(_growths(tmp_path / "r")) == 1


GROW = [*TINY, "strategy=grow", "strategy.widths=[[16],[32],[32,32]]", "strategy.epochs_per_stage=1",
        "strategy.optimizer_state=map"]


@pytest.fixture(scope="module")
def grow_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("tf") / "grow"
    return run, train(make_cfg(*GROW), run)


def test_grow_net2net_mlp_widening_and_identity_layers_keep_the_probe_loss(grow_run):
    run, info = grow_run
    growths = _growths(run)
    assert len(growths) == 2 and info["status"] == "completed"
    for e in growths:
        assert e["params_after"] > e["params_before"]
        assert e["probe_loss_after"] == pytest.approx(e["probe_loss_before"], abs=1e-5, rel=1e-5)
    arch = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert [b["mlp_hidden"] for b in arch["blocks"]] == [32, 32]


def test_resume_from_the_stage_before_a_growth_is_bit_identical(grow_run, tmp_path):
    run, _ = grow_run
    resumed = tmp_path / "resumed"
    copy_rewound_to_stage_1(run, resumed)
    info = train(make_cfg(*GROW, "resume=auto"), resumed)
    assert info["status"] == "completed"
    ref, got = _weights(run), _weights(resumed)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(resumed)
