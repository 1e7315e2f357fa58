"""The ``lm`` objective: a causal model (no position sees a later token), the loss as a
hand-computed next-token cross-entropy, perplexity and bits per byte, targets on val/ppl,
and small real language-model runs on a local text file with the strategies that train one."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import (
    assert_epochs_exactly_once,
    final_weights,
    kill_when,
    make_cfg,
    resume_until_done,
    run_cli,
)
from safetensors import safe_open

from stagetrain.core.errors import StagetrainError
from stagetrain.core.plan import Stage, parse_target, target_met
from stagetrain.families import transformer as family
from stagetrain.models import StagedModel
from stagetrain.nn.objectives import lm_loss, split_metrics, stage_loss
from stagetrain.runs.rundir import read_metrics
from stagetrain.runs.runner import train

LM = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "plots=false",
      "train.batch_size=16", "dataset.max_len=16", "optim.lr=0.01"]


def _lm(layers=2) -> StagedModel:
    m = family.Config(d_model=16, n_heads=2, n_layers=layers, stem="tokens", head="lm", vocab_size=13, max_len=10)
    torch.manual_seed(0)
    return StagedModel(family.spec(m, (10,), 13)).double().eval()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("roses are red, violets are blue, sugar is sweet and so are you.\n" * 60, encoding="utf-8")
    return path


def test_no_position_depends_on_a_later_token():
    model = _lm()
    x = torch.randint(1, 13, (3, 10), generator=torch.Generator().manual_seed(0))
    for t in (3, 7):
        changed = x.clone()
        changed[:, t] = (changed[:, t] % 12) + 1
        with torch.no_grad():
            a, b = model(x), model(changed)
        torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=0)  # earlier logits: bit-identical
        assert not torch.allclose(a[:, t], b[:, t])  # the changed position itself does change


def test_lm_loss_is_the_mean_next_token_cross_entropy():
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]],
                           [[0.0, 1.0, 0.0], [-2.0, 3.0, 1.0]]])
    y = torch.tensor([[0, 2], [1, 1]])
    by_hand = []
    for b in range(2):
        for t in range(2):
            z = logits[b, t].tolist()
            by_hand.append(math.log(sum(math.exp(v) for v in z)) - z[int(y[b, t])])
    assert lm_loss(logits, y).item() == pytest.approx(sum(by_hand) / 4, rel=1e-6)
    model = _lm(layers=1)
    x = torch.randint(1, 13, (2, 10), generator=torch.Generator().manual_seed(1))
    stage = Stage(name="lm", epochs=1, trainable=["head"], objective="lm")
    loss, logits_out = stage_loss(stage, model, None, x, torch.roll(x, -1, 1), 0, False)
    z = model(x)
    expected = -torch.log_softmax(z, -1).gather(-1, torch.roll(x, -1, 1).unsqueeze(-1)).mean()
    assert logits_out is None and loss.item() == pytest.approx(expected.item(), rel=1e-6)  # in float32, as bf16 runs


def test_perplexity_and_bits_per_byte():
    out = split_metrics("lm", 2.0, 0, 100, bytes_per_token=1.0)
    assert out == {"loss": 2.0, "ppl": pytest.approx(math.exp(2.0)), "bpb": pytest.approx(2.0 / math.log(2))}
    assert split_metrics("lm", 2.0, 0, 100, bytes_per_token=1.25)["bpb"] == pytest.approx(1.6 / math.log(2))
    assert "acc" not in out and split_metrics("supervised", 1.0, 30, 40)["acc"] == 0.75


def test_targets_accept_perplexity():
    assert parse_target("val/ppl<=20") == ("val/ppl", "<=", 20.0)
    assert target_met("val/ppl<=20", {"val/ppl": 19.5}) and not target_met("val/ppl<=20", {"val/ppl": 21.0})
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match="val/ppl"):
        validate(make_cfg("strategy=grow", "strategy.target='val/perplexity<=20'"))
    with pytest.raises(StagetrainError, match="names val/ppl, which a classifier does not report"):
        validate(make_cfg("strategy=grow", "strategy.target='val/ppl<=20'"))


def test_an_accuracy_target_on_a_language_model_is_refused(corpus):
    from stagetrain.runs.config import validate

    with pytest.raises(StagetrainError, match="names val/acc, which a language model"):
        validate(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy=grow",
                          "strategy.target='val/acc>=0.5'"))


def test_scratch_language_model_run(tmp_path, corpus):
    info = train(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy=scratch", "train.epochs=3"),
                 tmp_path / "run")
    final = info["final"]
    assert info["plan"]["stages"][0]["objective"] == "lm" and "val/acc" not in final
    assert final["val/ppl"] == pytest.approx(math.exp(final["val/loss"]))
    assert final["val/bpb"] == pytest.approx(final["val/loss"] / math.log(2))  # byte tokenizer: one byte a token
    assert final["val/loss"] < math.log(257) - 1  # it learned the repeated line far beyond uniform guessing
    events = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl") if e.get("split") == "train"]
    assert events and all("ppl" in e and "acc" not in e for e in events)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["task"] == "lm"


def test_grow_stops_at_a_perplexity_target_and_finetune_continues_it(tmp_path, corpus):
    data = ["dataset=text", f"dataset.paths=[{corpus}]"]
    info = train(make_cfg(*LM, *data, "strategy=grow", "strategy.widths=[[16],[32],[64]]",
                          "strategy.epochs_per_stage=2", "strategy.target='val/ppl<=15'"), tmp_path / "grow")
    assert info["stop_reason"] == "target" and info["final"]["val/ppl"] <= 15
    assert len(info["stages"]) == 2 and info["stages"][0]["final"]["val/ppl"] > 15  # it grew once, then met it
    assert [s["objective"] for s in info["plan"]["stages"]] == ["lm"] * 3
    tuned = train(make_cfg(*LM, *data, "strategy=finetune", f"strategy.source={tmp_path / 'grow'}",
                           "train.epochs=1"), tmp_path / "finetune")
    assert [s["objective"] for s in tuned["stages"]] == ["lm"]
    assert tuned["final"]["val/loss"] < info["final"]["val/loss"] + 0.2  # it starts from the grown model


def test_a_language_model_fine_tunes_into_a_text_classifier(tmp_path, corpus):
    """LM pretraining, then labels: finetune swaps the LM head for a pooled classifier over
    padded texts and keeps the pretrained embedding and layers."""
    data = ["dataset=text", f"dataset.paths=[{corpus}]"]
    train(make_cfg(*LM, *data, "strategy=scratch", "train.epochs=1"), tmp_path / "lm")
    rows = [{"text": f"{w} {i}", "label": name} for name, w in (("pets", "cat dog"), ("sky", "rain sun"))
            for i in range(30)]
    labelled = tmp_path / "rows.jsonl"
    labelled.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    info = train(make_cfg(*LM, "dataset=text_classification", f"dataset.path={labelled}", "strategy=finetune",
                          f"strategy.source={tmp_path / 'lm'}", "strategy.mode=linear_probe", "train.epochs=10", "optim.lr=0.05"),
                 tmp_path / "clf")
    assert info["stages"][0]["objective"] == "supervised" and info["final"]["test/acc"] >= 0.9
    with safe_open(tmp_path / "lm" / "model.safetensors", "pt") as lm, \
            safe_open(tmp_path / "clf" / "model.safetensors", "pt") as clf:
        assert torch.equal(lm.get_tensor("stem.embed.weight"), clf.get_tensor("stem.embed.weight"))
        assert json.loads(clf.metadata()["arch"])["head"]["type"] == "seq_classifier"


def test_dry_run_counts_the_windows_without_training(corpus):
    out = train(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy=scratch", "dry_run=true"), None)
    tokens = len(corpus.read_bytes())
    windows = (tokens - 2 * round(0.1 * tokens) - 1) // 16
    assert out["dry_run"] and out["plan"]["stages"][0]["objective"] == "lm"
    assert out["estimates"][0]["samples"] == windows and out["estimates"][0]["flops"] > 0


def test_layerwise_trains_a_language_model_through_auxiliary_lm_heads(corpus):
    out = train(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy=layerwise", "dry_run=true"), None)
    greedy, finetune = out["plan"]["stages"]
    assert greedy["objective"] == "lm" and greedy["helper"]["kind"] == "lm_head" and finetune["objective"] == "lm"
    with pytest.raises(StagetrainError, match="LM head shares the token embedding"):
        train(make_cfg(*LM, "dataset=text", f"dataset.paths=[{corpus}]", "strategy=layerwise",
                       "strategy.finetune.enabled=false", "dry_run=true"), None)


@pytest.mark.full  # three CLI runs, one killed (about a minute on 2 busy cores): `pytest --full`
def test_a_killed_language_model_run_resumes_to_identical_weights(tmp_path):
    corpus = tmp_path / "long.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(3000)),
                      encoding="utf-8")
    args = ["dataset=text", f"dataset.paths=[{corpus}]", "model=transformer", "model.d_model=32", "model.n_heads=2",
            "dataset.max_len=32", "strategy=scratch", "train.epochs=3", "train.batch_size=32",
            "checkpoint.every_steps=25", "progress=off", "plots=false"]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    kill_when(run, args, tmp_path, lambda ev: any(e.get("split") == "val" and e["epoch"] == 1 for e in ev))
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)
