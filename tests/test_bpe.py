"""Learnt tokenizers of the text datasets: ``dataset.tokenizer=bpe`` (a byte-level BPE trained
with ``tokenizers`` on the training split only, deterministic, recorded in run.json) and
``dataset.tokenizer=hf`` (a local transformers tokenizer folder), the vocabulary the model
follows, and the paragraphs a wrong option gets."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import DATA_ROOT, make_cfg, run_cli

from stagetrain.core.errors import StagetrainError
from stagetrain.data.tokenizer import Tokenizer, from_description
from stagetrain.datasets import dataset_meta, load_data
from stagetrain.runs.config import validate
from stagetrain.runs.runner import train

SENTENCES = ["the cat sat on the mat", "a dog barked at night", "rain falls on the plain in spain",
             "naïve café crème — déjà vu", "stars shine over the quiet sea", "bread and butter for breakfast"]
HELD_OUT_WORD = "quixotrophy"  # only in the held-out tail
FORTUNES = DATA_ROOT / "text" / "fortunes"


def _settings(*overrides):
    return validate(make_cfg(*overrides, "model=transformer"))


def _lm_corpus(tmp_path):
    """Training text of ordinary sentences; the last 30% (validation and test) is one new word, repeated."""
    path = tmp_path / "corpus.txt"
    train = "\n".join(SENTENCES * 60) + "\n"
    tail = f"{HELD_OUT_WORD} " * (len(train) * 3 // 7 // (len(HELD_OUT_WORD) + 1))
    path.write_text(train + tail, encoding="utf-8")
    return path


def _has_word(tok_json: str, word: str) -> bool:
    vocab = json.loads(tok_json)["model"]["vocab"]
    return any(len(t) >= 4 and t.lstrip("Ġ") in word for t in vocab if "qui" in t or "trop" in t or "xot" in t)


def test_bpe_training_is_deterministic_and_round_trips_text():
    texts = ["\n".join(SENTENCES * 20)]
    ds = type("DS", (), {"vocab_size": 300})()
    a, b = Tokenizer.build("bpe", texts, ds), Tokenizer.build("bpe", texts, ds)
    assert a.impl.to_str() == b.impl.to_str()  # same input, same merges: resume rebuilds the same ids
    assert a.vocab_size == 301 and 257 < a.impl.get_vocab_size() <= 301 and a.impl.token_to_id("<pad>") == 0
    text = "naïve café — unseen 日本 words\n"
    ids = a.encode(text)
    assert int(ids.min()) >= 1 and int(ids.max()) < a.vocab_size  # 0 stays padding, every byte encodable
    assert a.decode(ids) == text and a.decode(torch.cat([ids, torch.zeros(3, dtype=torch.long)])) == text
    again = from_description(a.describe())  # what run.json records rebuilds the tokenizer exactly
    assert torch.equal(again.encode(text), ids) and again.vocab_size == a.vocab_size
    assert len(a.encode(texts[0])) < 0.6 * len(texts[0].encode("utf-8"))  # merges compress the text it learnt


def test_bpe_training_gives_the_same_tokenizer_in_another_process_with_other_threads():
    """What resume relies on: a new process (other hash seed, one thread) trains the same BPE."""
    code = ("import hashlib, sys; from stagetrain.data.tokenizer import Tokenizer; "
            "t = Tokenizer.build('bpe', [sys.argv[1]], type('DS', (), {'vocab_size': 320})()); "
            "print(hashlib.sha256(t.impl.to_str().encode()).hexdigest())")
    text = "\n".join(SENTENCES * 30)
    here = Tokenizer.build("bpe", [text], type("DS", (), {"vocab_size": 320})()).describe()["sha256"]
    env = {**os.environ, "PYTHONHASHSEED": "7", "RAYON_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == here


def test_lm_bpe_never_sees_the_held_out_tail_and_the_model_follows_its_size(tmp_path):
    path = _lm_corpus(tmp_path)
    settings = _settings("dataset=text", f"dataset.paths=[{path}]", "dataset.max_len=16", "dataset.tokenizer=bpe",
                         "dataset.vocab_size=400", "dataset.val_fraction=0.15", "dataset.test_fraction=0.15")
    assert settings.model.vocab_size == 401  # known at config time, before any training
    data = load_data(settings.dataset, seed=0)
    assert data.num_classes == 401 and data.info["vocab_size"] == 401
    recorded = data.info["tokenizer"]["json"]
    text = path.read_text(encoding="utf-8")
    everything = Tokenizer.build("bpe", [text], settings.dataset).impl.to_str()
    assert _has_word(everything, HELD_OUT_WORD)  # the check can fail: all the text learns the word
    assert not _has_word(recorded, HELD_OUT_WORD)  # the run's BPE learnt from the training part only
    n_train = len(text) - round(0.15 * len(text)) * 2
    assert recorded == Tokenizer.build("bpe", [text[:n_train]], settings.dataset).impl.to_str()
    tok = from_description(data.info["tokenizer"])
    assert HELD_OUT_WORD in tok.decode(data.val.x.flatten()) and "the cat sat" in tok.decode(data.train.x[:4].flatten())
    val_text = text[n_train:n_train + round(0.15 * len(text))]
    assert data.info["bytes_per_token"] == pytest.approx(len(val_text.encode()) / len(tok.encode(val_text)))
    assert dataset_meta(settings.dataset)[2] >= len(data.train)  # the dry run's count: an upper bound
    assert torch.equal(load_data(settings.dataset, seed=0).train.x, data.train.x)  # resume: the same ids


def test_classification_bpe_learns_from_the_training_examples_only(tmp_path):
    rows = [{"text": f"{w} number {i}", "label": w.split()[0]} for w in ("cat dog", "rain snow", "bread tea")
            for i in range(30)]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    test.write_text("\n".join(json.dumps({"text": f"{HELD_OUT_WORD} " * 5, "label": lab}) for lab in
                              ("cat", "rain", "bread") * 4), encoding="utf-8")
    ds = _settings("dataset=text_classification", f"dataset.path={train}", f"dataset.test_path={test}",
                   "dataset.tokenizer=bpe", "dataset.vocab_size=300", "dataset.max_len=64").dataset
    data = load_data(ds, seed=3)
    tok = from_description(data.info["tokenizer"])
    assert not _has_word(data.info["tokenizer"]["json"], HELD_OUT_WORD)
    train_texts = [tok.decode(x) for x in data.train.x]  # exact: no text is cut at 64 tokens
    assert Tokenizer.build("bpe", train_texts, ds).impl.to_str() == data.info["tokenizer"]["json"]
    val_texts = {tok.decode(x) for x in data.val.x}
    assert len(val_texts) == len(data.val) and not val_texts & set(train_texts)
    with_val = Tokenizer.build("bpe", train_texts + sorted(val_texts), ds).impl.to_str()
    assert with_val != data.info["tokenizer"]["json"]  # the validation examples would change it: they were left out
    assert data.in_shape == (64,) and data.num_classes == 3 and int(data.train.x.max()) < 301


def _hf_folder(tmp_path):
    from tokenizers import Tokenizer as Impl
    from tokenizers import models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    impl = Impl(models.BPE(unk_token="[UNK]"))
    impl.pre_tokenizer = pre_tokenizers.Whitespace()
    impl.train_from_iterator(SENTENCES * 5, trainers.BpeTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]"],
                                                                show_progress=False))
    folder = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=impl, pad_token="[PAD]", unk_token="[UNK]").save_pretrained(folder)
    return folder, impl.get_vocab_size()


def test_hf_tokenizer_from_a_local_folder(tmp_path):
    folder, size = _hf_folder(tmp_path)
    rows = [{"text": s, "label": str(i % 2)} for i, s in enumerate(SENTENCES * 10)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    settings = _settings("dataset=text_classification", f"dataset.path={path}", "dataset.tokenizer=hf",
                         f"dataset.tokenizer_path={folder}", "dataset.max_len=12")
    assert settings.model.vocab_size == size
    data = load_data(settings.dataset, seed=0)
    assert data.num_classes == 2 and data.info["tokenizer"]["kind"] == "hf" and data.info["vocab_size"] == size
    assert int(data.train.x.max()) < size and (data.train.x == 0).any()  # padded with [PAD], id 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(SENTENCES * 40), encoding="utf-8")
    lm = load_data(_settings("dataset=text", f"dataset.paths=[{corpus}]", "dataset.tokenizer=hf",
                             f"dataset.tokenizer_path={folder}", "dataset.max_len=8").dataset, seed=0)
    assert lm.num_classes == size and len(lm.train) > 0 and lm.info["bytes_per_token"] > 2


@pytest.mark.parametrize("overrides, match", [
    (["dataset.tokenizer=bpe", "dataset.vocab_size=100"], "needs dataset.vocab_size >= 257"),
    (["dataset.tokenizer=bpe"], "needs dataset.vocab_size >= 257"),
    (["dataset.vocab_size=500"], "applies to dataset.tokenizer=bpe only"),
    (["dataset.tokenizer=hf"], "needs dataset.tokenizer_path"),
    (["dataset.tokenizer_path=/tmp"], "applies to dataset.tokenizer=hf"),
    (["dataset.tokenizer=bpe", "dataset.tokenizer_path=/tmp"], "records none"),
    (["dataset.tokenizer=hf", "dataset.tokenizer_path=/nonexistent/tok"], "dataset.tokenizer_path: /nonexistent/tok"),
    (["dataset.tokenizer=wordpiece"], "dataset.tokenizer"),
])
def test_a_wrong_tokenizer_option_is_one_paragraph(tmp_path, overrides, match):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text\n" * 50, encoding="utf-8")
    with pytest.raises(StagetrainError, match=match) as err:
        _settings("dataset=text", f"dataset.paths=[{corpus}]", *overrides)
    assert "\n" not in str(err.value)


def test_a_folder_without_a_tokenizer_is_one_paragraph(tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "notes.txt").write_text("not a tokenizer", encoding="utf-8")
    with pytest.raises(StagetrainError, match="transformers cannot read a tokenizer there") as err:
        _settings("dataset=text", f"dataset.paths=[{tmp_path / 'tok' / 'notes.txt'}]", "dataset.tokenizer=hf",
                  f"dataset.tokenizer_path={tmp_path / 'tok'}")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not (FORTUNES / "zippy").is_file(),
                    reason=f"needs the fortunes collection, not found in {FORTUNES}: put it in ../shared/data/text/"
                           "fortunes beside the repository (or set STAGETRAIN_DATA to the folder holding text/fortunes/)")
def test_fortunes_language_model_with_a_bpe_runs_from_the_cli(tmp_path):
    proc = run_cli("model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "plots=false",
                   "dataset=fortunes", "dataset.task=lm", "dataset.tokenizer=bpe", "dataset.vocab_size=300",
                   "dataset.max_train=50", "train.epochs=1", f"dataset.root={DATA_ROOT}", "progress=off",
                   f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    data, final = info["data"], info["final"]
    assert data["tokenizer"]["kind"] == "bpe" and data["vocab_size"] == 301 and data["bytes_per_token"] > 1.2  # 44 merges: 1.37 here
    assert final["val/bpb"] == pytest.approx(final["val/loss"] / math.log(2) / data["bytes_per_token"])


def test_a_fine_tune_reuses_its_source_runs_bpe(tmp_path):
    """Pretrain a tiny LM with a BPE, then classify with dataset.tokenizer_path=<that run>: the
    same tokenizer (not one trained on the labelled texts), and a fine-tune from the run works."""
    corpus = _lm_corpus(tmp_path)
    lm = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "plots=false",
          "train.epochs=1", "train.batch_size=16", "dataset.max_len=16"]
    source = tmp_path / "lm"
    train(make_cfg(*lm, "dataset=text", f"dataset.paths=[{corpus}]", "dataset.tokenizer=bpe",
                   "dataset.vocab_size=300", "strategy=scratch"), source)
    recorded = json.loads((source / "run.json").read_text())["data"]["tokenizer"]
    rows = [{"text": f"{w} {i}", "label": w.split()[0]} for w in ("cat dog", "rain snow") for i in range(20)]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    cls = [f"dataset.path={path}", "dataset=text_classification", "dataset.tokenizer=bpe",
           f"dataset.tokenizer_path={source}"]
    settings = _settings(*cls, "dataset.max_len=16")
    assert settings.model.vocab_size == 301
    data = load_data(settings.dataset, seed=0)
    assert data.info["tokenizer"]["json"] == recorded["json"] and data.info["tokenizer"]["trained_on"].startswith("reused")
    info = train(make_cfg(*lm, *cls, "strategy=finetune", f"strategy.source={source}"), tmp_path / "ft")
    assert info["data"]["tokenizer"]["sha256"] == recorded["sha256"] and 0 <= info["final"]["test/acc"] <= 1
    with pytest.raises(StagetrainError, match="differs from the 300"):
        _settings(*cls, "dataset.vocab_size=400")
    auto = [*cls[:3], "dataset.vocab_size=300"]  # no tokenizer_path: the fine-tune carries its source's BPE
    info = train(make_cfg(*lm, *auto, "strategy=finetune", f"strategy.source={source}"), tmp_path / "ft2")
    assert info["data"]["tokenizer"]["sha256"] == recorded["sha256"]
    with pytest.raises(StagetrainError, match="trained on a BPE of 301 token ids.*dataset.tokenizer=bpe"):
        _settings(*cls[:2], "dataset.max_len=16", "strategy=finetune", f"strategy.source={source}")
    shutil.rmtree(source)
