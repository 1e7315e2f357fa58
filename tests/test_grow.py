"""grow: every invariant of ALGORITHMS.md "grow", optimizer mapping, resume, end to end."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    DATA_ROOT,
    assert_epochs_exactly_once,
    final_weights,
    kill_when,
    make_cfg,
    resume_until_done,
    run_cli,
)
from safetensors import safe_open

from stagetrain.core.errors import StagetrainError
from stagetrain.families import build_spec
from stagetrain.growth import deepen_dense as deepen
from stagetrain.growth import map_optimizer_state, optimizer_state_by_name, widen_dense
from stagetrain.models import StagedModel, count_parameters
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train


def widen(*args, **kw):
    """The dense widening with its unit mapping g (the optimizer-state map's core)."""
    new, info = widen_dense(*args, **kw)
    return new, info["mapping"]


def _model(name="mlp", dtype=torch.float64, **over) -> StagedModel:
    keys = {"mlp": {"widths": [6, 5]}, "cnn": {"channels": [3, 4]}}[name]
    cfg = make_cfg(f"model={name}", *[f"model.{k}={v}" for k, v in {**keys, **over}.items()])
    shape = (1, 8, 8)
    torch.manual_seed(0)
    model = StagedModel(build_spec(cfg.model, shape, 10)).to(dtype)
    return model


def _randomise_bn(model: StagedModel) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)


def _x(dtype=torch.float64):
    return torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)


@pytest.mark.parametrize("index", [0, 1])
def test_invariant1_net2wider_preserves_mlp_outputs_float64(index):
    model = _model().eval()
    new, _ = widen(model, index, 11, generator=torch.Generator().manual_seed(0))
    new = new.to(torch.float64).eval()
    assert (new(_x()) - model(_x())).abs().max() <= 1e-10


def test_invariant1_net2wider_preserves_outputs_float32():
    model = _model(dtype=torch.float32).eval()
    new, _ = widen(model, 0, 13, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(new.eval()(_x(torch.float32)), model(_x(torch.float32)), atol=1e-5, rtol=1e-5)


def test_invariant1_net2wider_preserves_bn_model_in_eval_mode():
    model = _model(bn=True)
    _randomise_bn(model)
    model.eval()
    new, _ = widen(model, 0, 9, generator=torch.Generator().manual_seed(0))
    new = new.to(torch.float64).eval()
    assert (new(_x()) - model(_x())).abs().max() <= 1e-10


@pytest.mark.parametrize("index", [0, 1])  # conv -> conv, and conv -> flatten -> linear head
def test_invariant1_net2wider_preserves_cnn_incl_flatten_boundary(index):
    model = _model("cnn")
    _randomise_bn(model)
    model.eval()
    new, _ = widen(model, index, 7, generator=torch.Generator().manual_seed(0))
    new = new.to(torch.float64).eval()
    assert new.spec["head"]["in"] == (7 if index == 1 else 4) * 2 * 2
    assert (new(_x()) - model(_x())).abs().max() <= 1e-10


def test_invariant2_replicas_sum_to_the_old_outgoing_column():
    model = _model()
    new, g = widen(model, 0, 12, generator=torch.Generator().manual_seed(3))
    old_w1, new_w1 = model.blocks["block1"].layer, new.blocks["block1"].layer
    old_out, new_out = model.blocks["block2"].layer.weight, new.blocks["block2"].layer.weight
    for i in range(6):
        replicas = (g == i).nonzero().flatten()
        torch.testing.assert_close(new_out[:, replicas].sum(1), old_out[:, i], atol=1e-12, rtol=0)
        for j in replicas:
            assert torch.equal(new_w1.weight[j], old_w1.weight[i]) and torch.equal(new_w1.bias[j], old_w1.bias[i])


def test_invariant3_parameter_count_grows_by_q_minus_n_times_in_plus_out_plus_1():
    model = _model()  # 64 -> 6 -> 5 -> 10
    new, _ = widen(model, 0, 20, generator=torch.Generator().manual_seed(0))
    assert count_parameters(new) - count_parameters(model) == (20 - 6) * (64 + 5 + 1)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_invariant4_identity_deepen_is_exact_for_relu(name):
    model = _model(name, bn=True)
    _randomise_bn(model)
    model.eval()
    new = deepen(model, 0, "identity").to(torch.float64).eval()
    assert len(new.block_names) == 3
    assert (new(_x()) - model(_x())).abs().max() <= 1e-10


def test_invariant4_identity_deepen_is_refused_for_tanh():
    with pytest.raises(StagetrainError, match="residual_zero"):
        deepen(_model(activation="tanh"), 0, "identity")
    cfg = make_cfg("strategy=grow", "strategy.widths=[[8],[8,8]]", "model.activation=tanh")
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match="deepen=identity"):
        validate(cfg)


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_invariant4_residual_zero_insert_is_exact_for_any_activation(act):
    model = _model(activation=act).eval()
    new = deepen(model, 1, "residual_zero").to(torch.float64).eval()
    assert (new(_x()) - model(_x())).abs().max() <= 1e-12


@pytest.fixture(scope="module")
def grow_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("grow") / "run"
    info = train(make_cfg("strategy=grow", "strategy.widths=[[16],[64],[64,64]]", "strategy.noise=0"), run)
    return run, info


def test_invariant5_probe_loss_is_continuous_at_every_growth(grow_run):
    run, _ = grow_run
    growths = [e for e in read_metrics(run / "metrics.jsonl") if e.get("event") == "growth"]
    assert len(growths) == 2
    for e in growths:
        assert e["params_after"] > e["params_before"]
        assert e["probe_loss_after"] == pytest.approx(e["probe_loss_before"], abs=1e-5, rel=1e-5)


def test_grow_on_digits_reaches_093_and_records_sizes(grow_run):
    _, info = grow_run
    assert info["final"]["test/acc"] >= 0.93
    params = [s["params"] for s in info["stages"]]
    assert params == sorted(params) and params[0] < params[-1]
    assert info["stop_reason"] == "epochs"


def test_grown_checkpoint_reloads_from_its_arch_spec_alone(grow_run):
    run, _ = grow_run
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    model = StagedModel(state["arch"])
    model.load_state_dict(state["model"])
    assert model.block_names == ["block1", "block2"] and model.spec["blocks"][0]["out"] == 64
    with safe_open(str(run / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["arch"]) == state["arch"]


def test_invariant6_flop_budget_overshoots_by_at_most_one_step_and_is_recorded(tmp_path):
    budget = 1.5e8
    info = train(make_cfg("strategy=grow", f"strategy.flop_budget={budget}"), tmp_path / "run")
    assert info["stop_reason"] == "budget"
    last = info["stages"][-1]
    one_step = last["flops"] / last["steps"] * 1.5  # the last stage's step cost (a batch may be partial)
    assert budget <= info["flops"] < budget + one_step
    assert last["stop_reason"] == "budget"


def test_target_stops_the_run_and_is_recorded(tmp_path):
    info = train(make_cfg("strategy=grow", "strategy.target='val/acc>=0.8'"), tmp_path / "run")
    assert info["stop_reason"] == "target" and info["final"]["val/acc"] >= 0.8


def test_noise_is_deterministic_for_a_seed():
    model = _model()
    a, g = widen(model, 0, 10, noise=0.1, generator=torch.Generator().manual_seed(5))
    b, _ = widen(model, 0, 10, noise=0.1, generator=torch.Generator().manual_seed(5))
    c, _ = widen(model, 0, 10, noise=0.1, generator=torch.Generator().manual_seed(6))
    wa, wb, wc = (m.blocks["block1"].layer.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert not torch.equal(wa[6:], model.blocks["block1"].layer.weight[g[6:]]), "noise must perturb the copies"
    assert torch.equal(wa[:6], model.blocks["block1"].layer.weight), "old units keep their weights"


def test_adam_moments_are_mapped_through_net2wider():
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.0)
    F.cross_entropy(model(_x()), torch.arange(16) % 10).backward()
    opt.step()
    prev = optimizer_state_by_name(opt, model)
    new, mapping = widen_dense(model, 0, 10, generator=torch.Generator().manual_seed(2))
    g = mapping["mapping"]
    new_opt = torch.optim.Adam(new.parameters(), lr=0.0)
    map_optimizer_state(new_opt, new, prev, [mapping])
    counts = torch.bincount(g).to(torch.float64)[g]
    rows = new_opt.state[new.blocks["block1"].layer.weight]
    old_rows = prev["blocks.block1.layer.weight"]
    torch.testing.assert_close(rows["exp_avg"], old_rows["exp_avg"][g] / counts[:, None], atol=0, rtol=0)
    torch.testing.assert_close(rows["exp_avg_sq"], old_rows["exp_avg_sq"][g] / counts[:, None] ** 2, atol=0, rtol=0)
    bias = new_opt.state[new.blocks["block1"].layer.bias]
    torch.testing.assert_close(bias["exp_avg"], prev["blocks.block1.layer.bias"]["exp_avg"][g] / counts, atol=0, rtol=0)
    cols = new_opt.state[new.blocks["block2"].layer.weight]
    assert torch.equal(cols["exp_avg"], prev["blocks.block2.layer.weight"]["exp_avg"][:, g])
    head = new_opt.state[new.head.layer.weight]
    assert torch.equal(head["exp_avg"], prev["head.layer.weight"]["exp_avg"])


def test_optimizer_state_map_runs_end_to_end(tmp_path):
    info = train(make_cfg("strategy=grow", "strategy.optimizer_state=map", "train.epochs=3",
                          "strategy.epochs_per_stage=2"), tmp_path / "run")
    assert info["status"] == "completed"


@pytest.mark.full  # a kill/resume or concurrency campaign: `pytest --full`
def test_kill_right_after_growth_then_resume_gives_identical_weights(tmp_path):
    args = ["strategy=grow", "strategy.widths=[[32],[128]]", "strategy.epochs_per_stage=2", "train.epochs=2",
            "dataset=synthetic", "dataset.n_train=4000", "dataset.shape=[1,28,28]", "train.batch_size=32",
            "checkpoint.every_steps=40", "progress=off"]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    kill_when(run, args, tmp_path, lambda ev: any(e.get("event") == "growth" for e in ev))
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)
    growths = [e for e in read_metrics(run / "metrics.jsonl") if e.get("event") == "growth"]
    assert len(growths) == 1


def test_flops_share_stages_are_bounded_by_flops_and_their_schedule_spans_the_share(tmp_path):
    """trigger=flops_share: each stage stops on its FLOP share (not a stand-in epoch count),
    its cosine schedule decays over the steps that share buys (LR near 0 at its end), and
    the dry run estimates the budget, not a multiple of it."""
    budget = 3e8
    args = ["strategy=grow", "strategy.trigger=flops_share", f"strategy.flop_budget={budget}",
            "plots=false", "device=cpu"]
    dry = train(make_cfg(*args, "dry_run=true"), None)
    estimate = sum(r["flops"] for r in dry["estimates"])
    assert 0.9 * budget <= estimate <= 1.1 * budget, estimate
    assert all(s["epochs"] is None and s["max_flops"] for s in dry["plan"]["stages"])
    info = train(make_cfg(*args), tmp_path / "run")
    shares = [s["flops"] for s in info["stages"]]
    assert [s["stop_reason"] for s in info["stages"]][:-1] == ["stage_budget"] * (len(shares) - 1)
    last = info["stages"][-1]
    assert info["flops"] < budget + 1.5 * last["flops"] / last["steps"], "at most one step over the budget"
    lr = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("split") == "train"]
    for k in range(1, len(shares) + 1):
        last = [e["lr"] for e in lr if e["stage"] == k][-1]
        assert last < 0.1 * 1e-3, f"stage {k} ended at LR {last}: its schedule did not span its share"


def test_dry_run_lists_each_stages_growth_operations():
    dry = train(make_cfg("strategy=grow", "strategy.widths=[[16],[64],[64,64]]", "dry_run=true"), None)
    growth = [r["growth"] for r in dry["estimates"]]
    assert growth[0] == ""
    assert growth[1] == "widen block1 to 64 (net2net, noise 0)"
    assert growth[2] == "deepen after block1 (identity)"


# ---- grow's default schedule follows the model family (issue 28)

@pytest.mark.parametrize(("model", "expected"), [
    (["model=mlp"], [[16], [64], [256]]),
    (["model=cnn"], [[4, 8], [8, 16], [16, 32]]),
    (["model=resnet"], [[4, 8, 16], [8, 16, 32], [16, 32, 64]]),
    (["model=transformer", "model.n_layers=4", "model.d_model=32"], [[128], [128, 128], [128] * 4]),
    (["model=transformer"], [[256], [256, 256]]),
    (["model=transformer", "model.n_layers=1"], [[64], [128], [256]]),
])
def test_default_grow_schedule_follows_the_model_family(model, expected):
    from stagetrain.strategies.grow.config import schedule, validate

    cfg = make_cfg("strategy=grow", *model)
    assert cfg.strategy.widths is None
    assert schedule(cfg) == expected
    validate(cfg)


TINY_LM = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=3", "plots=false",
           "train.batch_size=16", "dataset.max_len=16", "strategy.epochs_per_stage=1", "train.epochs=1"]


def test_default_grow_deepens_a_transformer_lm_on_a_local_text_file(tmp_path):
    corpus = tmp_path / "poem.txt"
    corpus.write_text("roses are red, violets are blue, sugar is sweet and so are you.\n" * 60, encoding="utf-8")
    info = train(make_cfg("strategy=grow", "dataset=text", f"dataset.paths=[{corpus}]", *TINY_LM), tmp_path / "run")
    assert [s["params"] for s in info["stages"]] == sorted({s["params"] for s in info["stages"]})
    assert len(info["stages"]) == 3 and info["stop_reason"] == "epochs"
    growths = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("event") == "growth"]
    assert len(growths) == 2
    for e in growths:  # the new layers are zero-output: the function is unchanged
        assert e["probe_loss_after"] == pytest.approx(e["probe_loss_before"], abs=1e-5, rel=1e-5)


def test_default_grow_widens_a_resnet_to_its_own_channels(tmp_path):
    info = train(make_cfg("strategy=grow", "model=resnet", "strategy.epochs_per_stage=1", "train.epochs=1",
                          "plots=false"), tmp_path / "run")
    assert len(info["stages"]) == 3 and info["stop_reason"] == "epochs"
    arch = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert [b["out"] for b in arch["blocks"]] == list(make_cfg("model=resnet").model.stage_channels)
    assert info["stages"][-1]["params"] > info["stages"][0]["params"]


FORTUNES = DATA_ROOT / "text" / "fortunes"


@pytest.mark.skipif(not (FORTUNES / "zippy").is_file(),
                    reason=f"needs the fortunes collection, not found in {FORTUNES}: put it in ../shared/data/text/"
                           "fortunes beside the repository, or set STAGETRAIN_DATA")
def test_default_grow_runs_a_transformer_on_fortunes(tmp_path):
    """The README's plain command, each stage cut to a small FLOP share (not to other widths)."""
    info = train(make_cfg("strategy=grow", "model=transformer", "dataset=fortunes", f"dataset.root={DATA_ROOT}", "plots=false",
                          "strategy.trigger=flops_share", "strategy.flop_budget=6e9"), tmp_path / "run")
    assert len(info["stages"]) == 2 and info["stages"][1]["params"] > info["stages"][0]["params"]
