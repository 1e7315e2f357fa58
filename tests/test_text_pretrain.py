"""Pretrain -> fine-tune on text: lm / mlm pretraining on every training text without its
label inside a run, then a classifier fine-tuned on few labels; the pretrained run as a
source of later runs; resume across the pretrain -> fine-tune boundary; layer-wise
Transformers (auxiliary classifiers on labelled texts, auxiliary LM heads on a corpus);
and the fortunes category pipeline end to end at tiny size."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import (
    DATA_ROOT,
    assert_epochs_exactly_once,
    final_weights,
    kill_when,
    make_cfg,
    resume_until_done,
    run_cli,
)

from stagetrain.core.errors import StagetrainError
from stagetrain.runs.runner import train

TINY = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.max_len=24",
        "dataset.max_len=24", "train.batch_size=16", "optim.lr=0.01", "plots=false"]


@pytest.fixture
def topics(tmp_path):
    words = {"animals": "cat dog bird fish", "weather": "rain snow wind sun", "food": "bread rice soup tea"}
    rows = [{"text": f"{w.split()[i % 4]} {w} {i}", "label": name} for name, w in words.items() for i in range(40)]
    path = tmp_path / "topics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return ["dataset=text_classification", f"dataset.path={path}"]


def _pretrain_then(objective, topics, tmp_path, *extra):
    cfg = make_cfg(*TINY, *topics, "strategy=finetune", "strategy.pretrain.enabled=true",
                   f"strategy.pretrain.objective={objective}", "strategy.pretrain.epochs=2", "train.epochs=10",
                   "dataset.labeled_fraction=0.25", *extra)
    return train(cfg, tmp_path / objective)


@pytest.mark.parametrize("objective", ["mlm", "lm"])
def test_pretraining_reads_every_text_unlabelled_then_fine_tunes_on_few_labels(objective, topics, tmp_path):
    out = _pretrain_then(objective, topics, tmp_path)
    info = json.loads((tmp_path / objective / "run.json").read_text())
    pre, ft = info["stages"]
    assert pre["objective"] == objective and ft["objective"] == "supervised"
    assert pre["samples"] / pre["epochs"] >= 3.5 * ft["samples"] / ft["epochs"]  # every training text, then 25%
    assert pre["final"]["val/loss"] < pre["final"]["train/loss"] + 1 and "val/ppl" in pre["final"]
    blocks = info["plan"]["stages"][0]["trainable"]
    assert blocks == ["stem", "block1", "block2", "helper"]
    assert info["data"]["vocab_size"] == 257  # the data's vocabulary stays the tokenizer's
    spec = torch.load(tmp_path / objective / "checkpoints" / "last.pt", weights_only=False)
    arch = spec.get("arch") or spec.get("spec")
    if objective == "mlm":
        assert info["source"]["pretrain"]["mask_id"] == 257
        assert arch["stem"]["vocab_size"] == 258 and arch["stem"]["mask_id"] == 257
        assert not arch["blocks"][0]["causal"]
    else:
        assert arch["blocks"][0]["causal"] and arch["stem"]["vocab_size"] == 257
    assert out["final"]["test/acc"] > 0.5  # 3 topics from their words: far above chance (1/3)


def test_a_pretrained_text_run_is_the_source_of_a_later_fine_tune(topics, tmp_path):
    _pretrain_then("mlm", topics, tmp_path, "strategy.mode=linear_probe", "strategy.probe_epochs=1")
    source = tmp_path / "mlm"
    pretrained = torch.load(source / "checkpoints" / "stage-1-pretrain-mlm.pt", weights_only=False)["model"]
    cfg = make_cfg(*TINY, *topics, "strategy=finetune", f"strategy.source={source}",
                   "strategy.source_checkpoint=stage-1", "strategy.mode=linear_probe", "strategy.probe_epochs=10",
                   "dataset.labeled_fraction=1.0")
    out = train(cfg, tmp_path / "later")
    info = json.loads((tmp_path / "later" / "run.json").read_text())
    assert info["source"]["checkpoint"] == "stage-1" and info["source"]["sha256"]
    assert [s["name"] for s in info["stages"]] == ["linear-probe"]
    after = final_weights(tmp_path / "later")
    shared = [k for k in pretrained if not k.startswith("head.")]
    assert shared and all(torch.equal(after[k], pretrained[k]) for k in shared)  # the pretrained backbone, as saved
    assert after["stem.embed.weight"].shape[0] == 258  # the mask token's row came along
    assert out["final"]["test/acc"] > 0.4  # a probe on the pretrained features beats chance (1/3)


def test_text_pretraining_needs_labelled_texts_and_the_right_causality(topics, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("some text to model\n" * 50, encoding="utf-8")
    base = [*TINY, "strategy=finetune", "strategy.pretrain.enabled=true", "dry_run=true"]
    with pytest.raises(StagetrainError, match="has no labels to fine-tune on"):
        train(make_cfg(*base, "strategy.pretrain.objective=mlm", "dataset=text", f"dataset.paths=[{corpus}]"), None)
    with pytest.raises(StagetrainError, match="needs bidirectional layers"):
        train(make_cfg(*base, *topics, "strategy.pretrain.objective=mlm", "model.causal=true"), None)
    with pytest.raises(StagetrainError, match="strategy.pretrain.dataset and strategy.pretrain.classes do not apply"):
        train(make_cfg(*base, *topics, "strategy.pretrain.objective=lm", "strategy.pretrain.classes=[0,1]"), None)


def test_layerwise_transformer_on_labelled_texts_and_on_a_corpus(topics, tmp_path):
    out = train(make_cfg(*TINY, *topics, "strategy=layerwise", "strategy.epochs_per_layer=2", "train.epochs=2"),
                tmp_path / "cls")
    info = json.loads((tmp_path / "cls" / "run.json").read_text())
    assert [s["name"] for s in info["stages"]] == ["greedy-block1", "greedy-block2", "finetune"]
    assert info["plan"]["stages"][0]["helper"]["kind"] == "aux_head" and out["final"]["test/acc"] > 0.4
    corpus = tmp_path / "c.txt"
    corpus.write_text("".join(f"line {i}: the quick brown fox\n" for i in range(200)), encoding="utf-8")
    lm = [*TINY, "dataset=text", f"dataset.paths=[{corpus}]", "strategy=layerwise", "strategy.epochs_per_layer=1",
          "train.epochs=1"]
    out = train(make_cfg(*lm), tmp_path / "lm")
    info = json.loads((tmp_path / "lm" / "run.json").read_text())
    assert info["plan"]["stages"][0]["helper"]["kind"] == "lm_head"
    assert all("val/ppl" in s["final"] for s in info["stages"])  # every greedy stage trains next tokens
    assert out["final"]["val/loss"] < 4.0  # well below ln(257) = 5.55
    with pytest.raises(StagetrainError, match="LM head shares the token embedding"):
        train(make_cfg(*lm, "strategy.finetune.enabled=false", "dry_run=true"), None)


@pytest.mark.full  # reads and tokenises the 16,700 fortunes, one CLI run (about a minute): `pytest --full`
@pytest.mark.skipif(not (DATA_ROOT / "text" / "fortunes" / "art").exists(),
                    reason="needs the fortunes corpus: set STAGETRAIN_DATA to a folder holding text/fortunes/")
def test_fortunes_pretrain_then_classify_end_to_end_at_tiny_size(tmp_path):
    proc = run_cli(*TINY, "dataset=fortunes", "dataset.max_train=200", "dataset.labeled_fraction=0.1",
                   "strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.objective=mlm",
                   "strategy.pretrain.epochs=1", "train.epochs=1", "progress=off",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "completed" and len(info["data"]["labels"]) == 43
    pre, ft = info["stages"][0]["samples"], info["stages"][1]["samples"]
    assert pre == 200 and 20 <= ft <= 20 + 43  # all entries, then 10% (stratified: at least one of each class)
    assert 0 <= info["final"]["test/acc"] <= 1 and info["final"]["test/loss"] > 0


@pytest.mark.full  # three CLI runs, one killed (about a minute on 2 busy cores): `pytest --full`
def test_a_run_killed_after_pretraining_resumes_to_identical_weights(topics, tmp_path):
    args = [*TINY, *topics, "strategy=finetune", "strategy.pretrain.enabled=true", "strategy.pretrain.objective=mlm",
            "strategy.pretrain.epochs=2", "train.epochs=2", "dataset.labeled_fraction=0.5", "progress=off"]
    reference = tmp_path / "reference"
    assert run_cli(*args, f"hydra.run.dir={reference}", cwd=tmp_path).returncode == 0
    run = tmp_path / "killed"
    kill_when(run, args, tmp_path, lambda ev: any(e.get("stage") == 1 and e.get("split") == "val" for e in ev))  # resumed run crosses
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(reference), final_weights(run)
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert_epochs_exactly_once(run)
