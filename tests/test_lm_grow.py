"""Growing a Transformer language model: every Transformer growth operator's invariants
(the function where it is promised, parameter counts, Adam moments carried through it),
depth schedules (stack, insert) as plans and as real runs on a small text file, the growth
event's probe loss, and resume across a stacking step."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_epochs_exactly_once, copy_rewound_to_stage_1, final_weights, make_cfg

from stagetrain.families import transformer as family
from stagetrain.growth import apply_op, map_optimizer_state, optimizer_state_by_name
from stagetrain.models import StagedModel, count_parameters
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

LM = ["model=transformer", "model.d_model=16", "model.n_heads=2", "plots=false", "train.batch_size=16",
      "dataset.max_len=16", "optim.lr=0.01", "strategy=grow", "strategy.widths=[[32]]", "strategy.epochs_per_stage=1",
      "train.epochs=1", "strategy.optimizer_state=map"]
D, HIDDEN, VOCAB, T = 16, 32, 13, 10


def _lm(layers: int = 2) -> StagedModel:
    m = family.Config(d_model=D, n_heads=2, n_layers=layers, mlp_hidden=[HIDDEN] * layers, stem="tokens", head="lm",
                      vocab_size=VOCAB, max_len=T)
    torch.manual_seed(0)
    return StagedModel(family.spec(m, (T,), VOCAB))


def _trained_adam(model: StagedModel) -> torch.optim.Adam:
    """Adam after two steps of next-token loss: every parameter has non-zero moments."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(1, VOCAB, (4, T), generator=torch.Generator().manual_seed(1))
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1)).backward()
        opt.step()
    return opt


def _grow(model: StagedModel, op: dict):
    """The trained model's output on ``_x()``, the grown model, the moments before and the
    grown model's Adam moments mapped through ``op``."""
    opt = _trained_adam(model)
    prev = optimizer_state_by_name(opt, model)
    model.eval()
    with torch.no_grad():
        before = model(_x())
    grown, info = apply_op(model, op, torch.Generator().manual_seed(0))
    new_opt = torch.optim.Adam(grown.parameters(), lr=1e-3)
    map_optimizer_state(new_opt, grown, prev, [info])
    return before, grown, prev, optimizer_state_by_name(new_opt, grown)


def _x() -> torch.Tensor:
    return torch.randint(1, VOCAB, (3, T), generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("kind", ["residual_zero", "identity"])
def test_an_inserted_layer_keeps_the_function_and_starts_with_fresh_moments(kind):
    model = _lm(2)
    before, grown, prev, state = _grow(model, {"op": "deepen", "after": "block2", "kind": kind})
    for mode in (grown.eval, grown.train):  # the identity in training mode too (no dropout here, zero branches)
        mode()
        with torch.no_grad():
            torch.testing.assert_close(grown(_x()), before, rtol=0, atol=1e-5)
    layer = count_parameters(model.blocks["block1"])
    assert count_parameters(grown) == count_parameters(model) + layer
    assert grown.block_names == ["block1", "block2", "block3"]
    assert not any(k.startswith("blocks.block3.") for k in state), "the new layer starts with fresh moments"
    assert all(torch.equal(state[k]["exp_avg"], prev[k]["exp_avg"]) for k in prev), "old layers keep theirs"


def test_net2net_mlp_widening_keeps_the_function_and_splits_the_moments():
    model = _lm(2)
    before, grown, prev, state = _grow(model, {"op": "widen", "block": "block1", "width": 48, "method": "net2net"})
    with torch.no_grad():
        torch.testing.assert_close(grown.eval()(_x()), before, rtol=0, atol=1e-5)
    assert count_parameters(grown) == count_parameters(model) + 16 * (D + 1 + D)  # fc1 rows + biases, fc2 columns
    fc1, fc2 = "blocks.block1.mlp.fc1.weight", "blocks.block1.mlp.fc2.weight"
    assert state[fc1]["exp_avg"].shape == (48, D) and state[fc2]["exp_avg"].shape == (D, 48)
    # first moments of a replicated unit's own row are split between its copies; consumer columns are copied
    assert torch.allclose(state[fc1]["exp_avg"][:HIDDEN].sum(0) + state[fc1]["exp_avg"][HIDDEN:].sum(0),
                          prev[fc1]["exp_avg"].sum(0), atol=1e-7)
    assert torch.equal(state[fc2]["exp_avg"][:, :HIDDEN], prev[fc2]["exp_avg"])


def test_stacking_copies_the_layers_and_their_adam_moments():
    model = _lm(2)
    _, grown, prev, state = _grow(model, {"op": "stack"})
    assert grown.block_names == ["block1", "block2", "block3", "block4"]
    per_layer = count_parameters(model.blocks["block1"])
    assert count_parameters(grown) == count_parameters(model) + 2 * per_layer
    for copy, orig in (("block3", "block1"), ("block4", "block2")):
        ours, theirs = grown.blocks[copy].state_dict(), grown.blocks[orig].state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
        for k in theirs:
            for moment in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(state[f"blocks.{copy}.{k}"][moment], prev[f"blocks.{orig}.{k}"][moment])
    assert all(torch.equal(state[k]["exp_avg"], prev[k]["exp_avg"]) for k in prev)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("roses are red, violets are blue, sugar is sweet and so are you.\n" * 60, encoding="utf-8")
    return path


def _growths(run):
    return [e for e in read_metrics(run / "metrics.jsonl") if e.get("event") == "growth"]


def test_insert_grows_a_language_model_and_the_probe_loss_is_unchanged(tmp_path, corpus):
    run = tmp_path / "insert"
    info = train(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy.depths=[1,2]",
                          "strategy.deepen=insert"), run)
    assert info["status"] == "completed" and [s["objective"] for s in info["stages"]] == ["lm", "lm"]
    (event,) = _growths(run)
    assert event["ops"] == [{"op": "deepen", "after": "block1", "kind": "residual_zero"}]
    assert event["probe_loss_after"] == pytest.approx(event["probe_loss_before"], abs=1e-5)
    assert event["probe_loss_before"] < 5.0  # the LM's next-token loss in nats on validation windows (ln 257 = 5.55)


def test_a_stacking_schedule_doubles_the_layers_and_resumes_bit_identical_across_a_stack(tmp_path, corpus):
    args = [*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy.depths=[1,2,4]", "strategy.deepen=stack"]
    run = tmp_path / "ref"
    info = train(make_cfg(*args), run)
    assert [s["params"] for s in info["stages"]] == sorted({s["params"] for s in info["stages"]})  # it grew twice
    growths = _growths(run)
    assert [e["ops"] for e in growths] == [[{"op": "stack"}]] * 2
    assert all(e["probe_loss_before"] > 0 and e["probe_loss_after"] > 0 for e in growths)
    arch = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["arch"]
    assert [b["name"] for b in arch["blocks"]] == ["block1", "block2", "block3", "block4"]
    resumed = tmp_path / "resumed"  # restart from the end of stage 1: it stacks and trains to the same weights
    copy_rewound_to_stage_1(run, resumed)
    assert train(make_cfg(*args, "resume=auto"), resumed)["status"] == "completed"
    ref, got = final_weights(run), final_weights(resumed)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(resumed)


def test_flop_share_trigger_bounds_each_stage_of_a_stacking_language_model(tmp_path, corpus):
    budget = 2e8  # about 1.5 epochs of the 1-layer model on this corpus
    info = train(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy.depths=[1,2]",
                          "strategy.deepen=stack", "strategy.trigger=flops_share", f"strategy.flop_budget={budget}"),
                 tmp_path / "run")
    assert [s["name"] for s in info["stages"]] == ["grow-1", "grow-2"] and len(_growths(tmp_path / "run")) == 1
    for stage in info["stages"]:  # each spends its half of the budget, overshooting by at most one step
        assert 0.4 * budget < stage["flops"] <= 0.5 * budget * 1.15
    assert info["flops"] <= budget * 1.15
