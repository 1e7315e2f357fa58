"""Text data: the byte and character tokenizers, language-model windows with a held-out
tail, text classification from JSONL, CSV and a folder of class files (the real fortunes
collection when ../shared/data/text/fortunes is there), labelled fractions and class
subsets, the padding mask, the errors a user meets, and small real runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import DATA_ROOT, make_cfg

from stagetrain.core.errors import StagetrainError
from stagetrain.data.tokenizer import Tokenizer
from stagetrain.datasets import dataset_meta, load_data
from stagetrain.datasets.fortunes.config import SYSTEM_FORTUNES
from stagetrain.families import transformer as family
from stagetrain.models import StagedModel
from stagetrain.runs.config import validate
from stagetrain.runs.runner import train

FORTUNES = DATA_ROOT / "text" / "fortunes"
needs_fortunes = pytest.mark.skipif(
    not (FORTUNES / "zippy").is_file(),
    reason=f"needs the fortunes collection, not found in {FORTUNES}: put it in ../shared/data/text/fortunes beside "
           "the repository (or set STAGETRAIN_DATA to the folder holding text/fortunes/), or apt-get install fortunes")
TINY_MODEL = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "plots=false",
              "train.epochs=1", "train.batch_size=16"]
SENTENCES = ["the cat sat on the mat", "a dog barked at night", "rain falls on the plain in spain",
             "naïve café crème — déjà vu", "stars shine over the quiet sea", "bread and butter for breakfast"]


def _corpus(tmp_path, repeat=40):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES * repeat), encoding="utf-8")
    return path


def _settings(*overrides):
    return validate(make_cfg(*overrides, "model=transformer"))


@pytest.mark.parametrize("kind", ["bytes", "chars"])
def test_tokenizer_round_trips_unicode_text(kind):
    text = "Grüße, 世界! naïve — ok\n\ttabs"
    tok = Tokenizer.build(kind, [text])
    ids = tok.encode(text)
    assert ids.dtype == torch.int64 and int(ids.min()) >= 1 and int(ids.max()) < tok.vocab_size  # 0 is padding
    assert tok.decode(ids) == text
    assert tok.decode(torch.cat([ids, torch.zeros(5, dtype=torch.long)])) == text  # padding decodes to nothing
    if kind == "bytes":
        assert tok.vocab_size == 257 and len(ids) == len(text.encode("utf-8"))
    else:
        assert tok.vocab_size == 2 + len(set(text)) and tok.decode(tok.encode("Grüße?")) == "Grüße\ufffd"


def test_text_windows_predict_the_next_token_and_hold_out_the_tail(tmp_path):
    path = _corpus(tmp_path)
    ds = _settings("dataset=text", f"dataset.paths=[{path}]", "dataset.max_len=16").dataset
    data = load_data(ds, seed=0)
    stream = torch.tensor(list(path.read_bytes())) + 1
    assert data.in_shape == (16,) and data.num_classes == 257 and data.train.x.dtype == torch.int64
    for split in (data.train, data.val, data.test):  # targets: the same window shifted by one token
        assert torch.equal(split.x[:, 1:], split.y[:, :-1])
        assert torch.equal(split.x[1:, 0], split.y[:-1, -1])  # consecutive, non-overlapping windows
    n = len(stream)
    n_val, n_test = round(0.1 * n), round(0.1 * n)
    assert torch.equal(data.train.x.flatten(), stream[: data.train.x.numel()])
    assert torch.equal(data.val.x.flatten(), stream[n - n_val - n_test:][: data.val.x.numel()])
    assert torch.equal(data.test.x.flatten(), stream[n - n_test:][: data.test.x.numel()])
    assert dataset_meta(ds)[:3] == ((16,), 257, len(data.train))  # the dry run's count, without tokenising


def test_character_vocabulary_windows_decode_back_to_the_text(tmp_path):
    path = _corpus(tmp_path, repeat=5)
    text = path.read_text(encoding="utf-8")
    settings = _settings("dataset=text", f"dataset.paths=[{path}]", "dataset.max_len=8", "dataset.tokenizer=chars")
    data = load_data(settings.dataset, seed=0)
    tok = Tokenizer("chars", list(data.info["tokenizer"]["chars"]))
    assert data.num_classes == settings.model.vocab_size == 2 + len(set(text))
    assert text.startswith(tok.decode(data.train.x.flatten()))
    assert data.info["bytes_per_token"] == pytest.approx(len(text.encode("utf-8")) / len(text))  # > 1: é, ï, —


def _write_table(tmp_path, fmt, rows):
    if fmt == "jsonl":
        path = tmp_path / "train.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    else:
        path = tmp_path / "train.csv"
        lines = ["label,text"] + [f"{r['label']},\"{r['text']}\"" for r in rows]
        path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _rows(per_class=30):
    topics = {"animals": "cat dog bird fish", "weather": "rain snow wind sun", "food": "bread rice soup tea"}
    rows = [{"text": f"{words} {i}", "label": name} for name, words in topics.items() for i in range(per_class)]
    return [*rows, {"text": "two\nlines, one text", "label": "animals"}]  # a CSV field spanning lines


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_text_classification_reads_jsonl_and_csv_with_a_stratified_test_split(tmp_path, fmt):
    path = _write_table(tmp_path, fmt, _rows())
    ds = _settings("dataset=text_classification", f"dataset.path={path}", "dataset.max_len=12").dataset
    data = load_data(ds, seed=0)
    assert data.info["labels"] == ["animals", "food", "weather"]  # 0..k-1, alphabetical
    assert data.num_classes == 3 and data.in_shape == (12,)
    assert torch.bincount(data.test.y).tolist() == [6, 6, 6]  # 20% of each class, whatever the seed
    assert torch.equal(data.test.x, load_data(ds, seed=5).test.x)
    tok = Tokenizer("bytes")
    texts = {tok.decode(x) for x in data.train.x}
    assert "cat dog bird" in texts  # "cat dog bird fish 3" truncated to 12 bytes
    assert len(data.train) + len(data.val) + len(data.test) == 91
    every = [tok.decode(x) for split in (data.train, data.val, data.test) for x in split.x]
    assert "two\nlines, o" in every
    assert dataset_meta(ds)[1:3] == (3, len(data.train))  # the dry run's count, without tokenising


def test_labelled_fraction_is_stratified_and_classes_pick_a_subset(tmp_path):
    path = _write_table(tmp_path, "jsonl", _rows(per_class=40))
    ds = _settings("dataset=text_classification", f"dataset.path={path}", "dataset.labeled_fraction=0.25",
                   "dataset.classes=[2,0]").dataset
    data = load_data(ds, seed=1)
    assert data.num_classes == 2 and data.info["labels"] == ["weather", "animals"]
    counts = torch.bincount(data.train.y[data.labeled]).tolist()
    per_class = torch.bincount(data.train.y).tolist()
    assert counts == [round(0.25 * n) for n in per_class]
    assert {Tokenizer("bytes").decode(x).split()[0] for x in data.test.x[data.test.y == 0]} == {"rain"}


def test_padding_does_not_change_a_classifiers_output():
    """Padding ids are masked: the same text padded to 10 or 24 positions gets the same logits."""
    m = family.Config(d_model=16, n_heads=2, n_layers=2, stem="tokens", head="cls", vocab_size=20, max_len=24)
    torch.manual_seed(0)
    model = StagedModel(family.spec(m, (24,), 3)).double().eval()
    ids = torch.tensor([[5, 9, 3, 7, 2, 11]])
    short = torch.nn.functional.pad(ids, (0, 4))
    long = torch.nn.functional.pad(ids, (0, 18))
    with torch.no_grad():
        out_short, out_long = model(short), model(long)
        unmasked = StagedModel({**model.spec, "blocks": [{k: v for k, v in b.items() if k != "padding"}
                                                         for b in model.spec["blocks"]]}).double().eval()
        unmasked.load_state_dict(model.state_dict())
    torch.testing.assert_close(out_short, out_long, rtol=0, atol=1e-12)
    assert not torch.allclose(unmasked(short), unmasked(long))  # without the mask the pads would count


@needs_fortunes
def test_fortunes_categories_with_few_labels_and_a_class_subset():
    ds = _settings("dataset=fortunes", f"dataset.root={DATA_ROOT}", "dataset.labeled_fraction=0.1",
                   "dataset.max_len=32").dataset
    data = load_data(ds, seed=0)
    names = data.info["labels"]
    assert len(names) == 43 and names[0] == "art" and names[-1] == "zippy"
    assert data.info["examples"] == 15217  # every '%'-separated entry, the same count the dry run gives
    per_class = torch.bincount(data.train.y, minlength=43)
    labelled = torch.bincount(data.train.y[data.labeled], minlength=43)
    assert torch.equal(labelled, (per_class.double() * 0.1).round().clamp_min(1).long())
    subset = load_data(replace(ds, classes=[names.index("zippy"), names.index("linux")]), seed=0)
    assert subset.info["labels"] == ["zippy", "linux"] and subset.num_classes == 2
    assert set(Tokenizer("bytes").decode(subset.test.x[0])) and set(subset.test.y.tolist()) == {0, 1}


@needs_fortunes
def test_fortunes_as_language_model_text(tmp_path):
    ds = _settings("dataset=fortunes", "dataset.task=lm", f"dataset.root={DATA_ROOT}").dataset
    shape, vocab, n_train, _ = dataset_meta(ds)
    data = load_data(ds, seed=0)
    assert shape == (128,) and vocab == 257 and len(data.train) == n_train > 10_000
    assert "%\n" in Tokenizer("bytes").decode(data.val.x[:20].flatten())  # entries end with the delimiter


@pytest.mark.skipif(Path(SYSTEM_FORTUNES).is_dir(), reason=f"the fortunes package is installed in {SYSTEM_FORTUNES}")
def test_missing_fortunes_says_where_to_put_them_and_how_to_install(tmp_path):
    cfg = make_cfg(*TINY_MODEL, "dataset=fortunes", f"dataset.root={tmp_path}", "strategy=scratch")
    with pytest.raises(StagetrainError, match=r"STAGETRAIN_DATA.*apt-get install fortunes"):
        train(cfg, tmp_path / "run")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: (p / "latin1.txt").write_bytes("caf\xe9".encode("latin-1")) and "latin1.txt", "not UTF-8 text"),
    (lambda p: (p / "empty.txt").write_text("") is not None and "empty.txt", "are empty"),
])
def test_bad_text_files_are_refused(tmp_path, make, message):
    name = make(tmp_path)
    with pytest.raises(StagetrainError, match=message):
        load_data(_settings("dataset=text", f"dataset.paths=[{tmp_path / name}]").dataset, seed=0)


def test_classification_errors_name_the_problem(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "hello", "category": "a"}\n', encoding="utf-8")
    with pytest.raises(StagetrainError, match=r"no 'label' field.*dataset.label_field"):
        load_data(_settings("dataset=text_classification", f"dataset.path={rows}").dataset, seed=0)
    folder = tmp_path / "classes"
    folder.mkdir()
    (folder / "jokes").write_text("one\n%\ntwo\n", encoding="utf-8")
    (folder / "quotes").write_text("%\n%\n", encoding="utf-8")
    with pytest.raises(StagetrainError, match=r"class 'quotes' .* has no examples"):
        load_data(_settings("dataset=text_classification", f"dataset.path={folder}").dataset, seed=0)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(StagetrainError, match="holds no class files"):
        load_data(_settings("dataset=text_classification", f"dataset.path={empty}").dataset, seed=0)
    with pytest.raises(StagetrainError, match=r"dataset.classes=\[0, 7\] names classes \[7\]"):
        load_data(_settings("dataset=text_classification", f"dataset.path={_write_table(tmp_path, 'jsonl', _rows())}",
                            "dataset.classes=[0,7]").dataset, seed=0)


def test_vocabulary_follows_the_data_or_a_mismatch_is_refused(tmp_path):
    path = _corpus(tmp_path, repeat=2)
    chars = _settings("dataset=text", f"dataset.paths=[{path}]", "dataset.tokenizer=chars")
    assert chars.model.vocab_size == 2 + len(set(path.read_text(encoding="utf-8")))
    assert (chars.model.stem, chars.model.head) == ("tokens", "lm")
    with pytest.raises(StagetrainError, match=r"model.vocab_size=300 does not match .* 257 token ids"):
        _settings("dataset=text", f"dataset.paths=[{path}]", "model.vocab_size=300")
    with pytest.raises(StagetrainError, match="model=transformer"):
        validate(make_cfg("dataset=text", f"dataset.paths=[{path}]", "model=mlp"))


def test_text_classification_run_records_labels_and_tokenizer(tmp_path):
    path = _write_table(tmp_path, "jsonl", _rows(per_class=20))
    info = train(make_cfg(*TINY_MODEL, "dataset=text_classification", f"dataset.path={path}", "dataset.max_len=16",
                          "strategy=scratch", "train.epochs=2", "optim.lr=0.01"), tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["data"]["labels"] == ["animals", "food", "weather"]
    assert saved["data"]["tokenizer"]["kind"] == "bytes" and saved["data"]["vocab_size"] == 257
    assert info["status"] == "completed" and 0 <= info["final"]["test/acc"] <= 1
