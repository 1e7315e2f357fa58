"""The objective registry (stagetrain/nn/objective_registry.py): every objective has one record
and one loss, generic code reads the record (uses_head, the metrics, the trivial baseline,
the comparable loss), an unknown name is one paragraph, and a new objective registered with
its loss is trained and scored without editing the engine, the baselines or the plan."""

from __future__ import annotations

import pytest
import torch
from conftest import make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Stage
from stagetrain.families import build_spec
from stagetrain.models import StagedModel
from stagetrain.nn.objective_registry import (
    OBJECTIVE_TYPES,
    ObjectiveType,
    objective_type,
    register,
)
from stagetrain.nn.objectives import LOSSES, build_helper, split_metrics, stage_loss
from stagetrain.runs.baselines import kind_of
from stagetrain.runs.convergence import _judge

NAMES = ("supervised", "lm", "mlm", "autoencoder", "denoising", "rbm")


def test_every_objective_has_one_record_and_one_loss():
    assert set(OBJECTIVE_TYPES) == set(LOSSES) >= set(NAMES)
    assert all(objective_type(n).name == n for n in NAMES)


def test_an_unknown_objective_is_one_paragraph_naming_the_registered_ones():
    with pytest.raises(StagetrainError) as info:
        objective_type("contrastive")
    assert "'contrastive'" in str(info.value) and "autoencoder, denoising, lm, mlm, rbm, supervised" in str(info.value)
    stage = Stage("s", 1, ["head"], objective="contrastive")
    assert not stage.uses_head and kind_of(stage) is None


@pytest.mark.parametrize("name,head,baseline,metrics", [
    ("supervised", True, "majority", {"loss", "acc"}), ("lm", True, "unigram", {"loss", "ppl", "bpb"}),
    ("mlm", False, "unigram", {"loss", "ppl", "bpb"}), ("autoencoder", False, "mean_image", {"loss"}),
    ("denoising", False, "mean_image", {"loss"}), ("rbm", False, "mean_image", {"loss"}),
])
def test_generic_code_reads_the_record(name, head, baseline, metrics):
    whole = Stage("s", 1, ["block1", "head"], objective=name)
    assert whole.uses_head is head
    assert not Stage("s", 1, ["block1"], objective=name, helper={"kind": "rbm", "in": 16}).uses_head
    assert not Stage("s", 1, ["block1"], objective=name, stop_block=1).uses_head
    assert kind_of(Stage("s", 1, ["block1"], objective=name, stop_block=1)) == baseline
    deeper = kind_of(Stage("s", 1, ["block2"], objective=name, stop_block=2))
    assert deeper == (None if objective_type(name).baseline_raw_input_only else baseline)
    assert set(split_metrics(name, 1.0, 3, 4, bytes_per_token=1.0)) == metrics


def test_a_loss_that_is_not_comparable_is_judged_on_validation_only():
    """CD-k's training loss says nothing across epochs: an RBM stage is judged on its
    validation reconstruction error alone; an autoencoder whose training loss has settled
    is not still falling, whatever its validation curve does (the noise of a decaying LR)."""
    curves = {"train": [(0.30, None), (0.29, None), (0.29, None), (0.29, None)], "val": [1.0, 0.9, 0.5, 0.2]}
    assert _judge(curves, "autoencoder", None)[0] is True
    assert _judge(curves, "rbm", None)[0] is False


def _mlp() -> StagedModel:
    torch.manual_seed(0)
    return StagedModel(build_spec(make_cfg("model=mlp", "model.widths=[6,6]").model, (1, 4, 4), 3))


def test_denoising_differs_from_autoencoder_only_by_its_training_noise():
    model, x = _mlp(), torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    helper = build_helper({"kind": "decoder", "type": "linear", "in": 16, "out": 6, "tied": True})
    losses = {}
    for name in ("autoencoder", "denoising"):
        args = {"noise": 0.5} if name == "denoising" else None  # an autoencoder takes no parameters
        stage = Stage("s", 1, ["block1", "helper"], objective=name, stop_block=1, objective_args=args)
        torch.manual_seed(2)
        losses[name] = [float(stage_loss(stage, model, helper, x, None, 0, t)[0].detach()) for t in (False, True)]
    assert losses["autoencoder"][0] == losses["denoising"][0]  # evaluation: the clean input
    assert losses["autoencoder"][1] != losses["denoising"][1]  # training: masked input for denoising


def test_a_registered_objective_trains_through_the_generic_code():
    """A new objective: its record and its loss, nothing else edited. The stage scores its
    metrics, finds its baseline and trains the model's own head."""
    def hinge(stage, model, helper, h, y, first, training):
        logits = model(h)
        return torch.nn.functional.multi_margin_loss(logits, y), logits

    register(ObjectiveType("hinge", through_head=True, metrics=("acc",), baseline="majority", labels=True))
    LOSSES["hinge"] = hinge
    try:
        model, stage = _mlp(), Stage("hinge", 1, ["block1", "block2", "head"], objective="hinge")
        x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 3, (16,))
        assert stage.uses_head and kind_of(stage) == "majority"
        loss, logits = stage_loss(stage, model, None, x, y, 0, True)
        loss.backward()
        assert logits.shape == (16, 3) and model.head.layer.weight.grad.abs().sum() > 0
        assert set(split_metrics("hinge", float(loss.detach()), 5, 16)) == {"loss", "acc"}
    finally:
        OBJECTIVE_TYPES.pop("hinge")
        LOSSES.pop("hinge")
