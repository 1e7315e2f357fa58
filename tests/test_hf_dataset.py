"""``dataset=hf``: Hugging Face ``datasets`` over small local files written here (offline):
each format's classes and labels, splits from files, memory and stream giving the same
batches and the same training, one-paragraph errors, and exact resume after kill -9."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import final_weights, kill_mid_epoch, make_cfg, resume_until_done, run_cli

from stagetrain.core.errors import StagetrainError
from stagetrain.datasets import load_data
from stagetrain.runs.config import validate

datasets = pytest.importorskip("datasets", reason="dataset=hf needs the hf extra: pip install 'stagetrain[hf]'")

WORDS = {"cat": "the cat purrs and sleeps on the warm mat", "dog": "a dog barks loudly at the mailman",
         "sky": "the sky turns grey before the rain"}
TINY = ["model=transformer", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "plots=false",
        "train.epochs=2", "train.batch_size=8", "strategy=scratch", "dataset.max_len=16"]


def _rows(n=20):
    return [{"text": f"{WORDS[k]} {i}", "label": k, "id": i} for i in range(n) for k in sorted(WORDS)]


def _write(tmp_path, fmt, rows=None):
    rows = rows or _rows()
    if fmt == "jsonl":
        path = tmp_path / "data.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    elif fmt == "csv":
        path = tmp_path / "data.csv"
        path.write_text("text,label,id\n" + "\n".join(f"{r['text']},{r['label']},{r['id']}" for r in rows))
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = tmp_path / "data.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "text":
        path = tmp_path / "data.txt"
        path.write_text("\n".join(r["text"] for r in rows * 3), encoding="utf-8")
    else:  # save_to_disk: a DatasetDict with its own test split
        path = tmp_path / "saved"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                              "test": datasets.Dataset.from_list(_rows(4))}).save_to_disk(str(path))
    return path


def _cfg(tmp_path, *overrides):
    return validate(make_cfg(*TINY, "dataset=hf", f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.workers=0",
                             *overrides))


def _refused(tmp_path, *overrides) -> str:
    with pytest.raises(StagetrainError) as e:
        load_data(_cfg(tmp_path, *overrides).dataset, 0)
    text = str(e.value)
    assert "\n" not in text.strip() and "Traceback" not in text
    return text


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "disk"])
def test_each_format_gives_the_classes_and_labels(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    b = load_data(_cfg(tmp_path, f"dataset.path={path}", "dataset.label_field=label").dataset, 0)
    assert b.info["labels"] == ["cat", "dog", "sky"] and b.num_classes == 3
    assert b.info["tokenizer"]["kind"] == "bytes" and b.train.x.dtype == torch.int64
    assert len(b.train) + len(b.val) + (0 if fmt == "disk" else len(b.test)) == 60
    assert len(b.test) == (12 if fmt == "disk" else 6)  # the saved test split, else 10% stratified
    # row i of the split decodes back to its text, and its label to its class
    texts = {r["text"][:16]: r["label"] for r in _rows() + _rows(4)}
    for x, y in zip(b.test.x, b.test.y, strict=True):
        text = bytes(int(t) - 1 for t in x if t > 0).decode()
        assert texts[text] == b.info["labels"][int(y)]


def test_text_file_is_language_model_windows(tmp_path):
    path = _write(tmp_path, "text")
    b = load_data(_cfg(tmp_path, f"dataset.path={path}").dataset, 0)
    assert b.info["task"] == "lm" and b.num_classes == 257 and b.info["bytes_per_token"] == 1.0
    assert torch.equal(b.train.x[:, 1:], b.train.y[:, :-1])
    raw = path.read_bytes() + b"\n"
    first = bytes(int(t) - 1 for t in torch.cat([b.train.x[0], b.train.x[1]]))
    assert raw.startswith(first)


def test_splits_come_from_the_files(tmp_path):
    train, test = _write(tmp_path, "jsonl"), tmp_path / "test.jsonl"
    test.write_text("\n".join(json.dumps(r) for r in _rows(2)))
    b = load_data(_cfg(tmp_path, f"dataset.files={{train:{train},test:{test}}}", "dataset.label_field=label").dataset, 0)
    assert len(b.test) == 6 and len(b.train) + len(b.val) == 60 and b.info["splits_given"] == ["test", "train"]


@pytest.mark.parametrize("label,tokens", [("label", ["dataset.tokenizer=bytes"]), ("null", ["dataset.tokenizer=chars"]),
                                          ("null", ["dataset.tokenizer=bpe", "dataset.vocab_size=300"])],
                         ids=["classification", "lm_chars", "lm_bpe"])
def test_memory_and_stream_give_the_same_batches(tmp_path, label, tokens):
    if "dataset.tokenizer=bpe" in tokens:
        pytest.importorskip("tokenizers", reason="dataset.tokenizer=bpe needs the hf extra")
    path = _write(tmp_path, "jsonl")
    loaded = {mode: load_data(_cfg(tmp_path, f"dataset.path={path}", f"dataset.label_field={label}", *tokens,
                                   f"dataset.storage={mode}").dataset, 0) for mode in ("memory", "stream")}
    mem, st = loaded["memory"], loaded["stream"]
    assert st.train.streamed and not mem.train.streamed
    order = torch.randperm(len(mem.train), generator=torch.Generator().manual_seed(1))
    for split in ("train", "val", "test"):
        a, b = getattr(mem, split), getattr(st, split)
        assert torch.equal(a.y, b.y)
        assert torch.equal(a.x[order[: len(a)] % len(a)], b.x[order[: len(a)] % len(a)])


def test_cli_runs_in_memory_and_streamed_to_the_same_result(tmp_path):
    path = _write(tmp_path, "jsonl")
    finals = {}
    for mode in ("memory", "stream"):
        proc = run_cli(*TINY, "dataset=hf", f"dataset.path={path}", "dataset.label_field=label",
                       f"dataset.storage={mode}", "dataset.workers=0", f"dataset.cache_dir={tmp_path / 'cache'}",
                       f"hydra.run.dir={tmp_path / mode}", "progress=off", cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        run = json.loads((tmp_path / mode / "run.json").read_text())
        assert run["status"] == "completed" and run["data"]["storage"] == mode
        finals[mode] = run["final"]
    assert finals["memory"] == finals["stream"]
    ref, got = final_weights(tmp_path / "memory"), final_weights(tmp_path / "stream")
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_a_wrong_field_names_the_fields_there_are(tmp_path):
    path = _write(tmp_path, "jsonl")
    text = _refused(tmp_path, f"dataset.path={path}", "dataset.text_field=body")
    assert "dataset.text_field=body" in text and "['text', 'label', 'id']" in text
    text = _refused(tmp_path, f"dataset.path={path}", "dataset.label_field=category")
    assert "dataset.label_field=category" in text and "'label'" in text and "label_field=null" in text


def test_a_missing_file_and_a_hub_name_are_one_paragraph(tmp_path):
    text = _refused(tmp_path, f"dataset.path={tmp_path / 'nothing.jsonl'}")
    assert "dataset.path" in text and "nothing.jsonl" in text
    text = _refused(tmp_path, "dataset.path=stanfordnlp/imdb")
    assert "stanfordnlp/imdb" in text and "never downloads" in text
    text = _refused(tmp_path, f"dataset.files={{test:{_write(tmp_path, 'jsonl')}}}")
    assert "no train file" in text


def test_a_file_that_is_not_its_format_is_one_paragraph(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{not json\n')
    text = _refused(tmp_path, f"dataset.path={path}", "dataset.label_field=label")
    assert "broken.jsonl" in text and "json" in text


@pytest.mark.full  # two CLI runs, one killed mid-epoch: `pytest --full`
def test_sigkill_mid_epoch_while_streaming_resumes_to_the_same_weights(tmp_path):
    path = _write(tmp_path, "jsonl", _rows(300))
    args = [*TINY, "dataset=hf", f"dataset.path={path}", "dataset.label_field=label", "dataset.storage=stream",
            "dataset.workers=1", f"dataset.cache_dir={tmp_path / 'cache'}", "train.epochs=4", "checkpoint.every_steps=3",
            "model.d_model=64", "model.n_layers=2", "dataset.max_len=48", "progress=off"]
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run, last = tmp_path / "killed", tmp_path / "killed" / "checkpoints" / "last.pt"
    kill_mid_epoch(run, args, tmp_path)
    assert torch.load(last, weights_only=True)["position"]["batch"] > 0
    resume_until_done(run, args, tmp_path)
    ref, got = final_weights(tmp_path / "reference"), final_weights(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


HELD_OUT_WORD = "quixotrophy"  # only in the held-out rows


def _bpe_has_word(tok_json: str) -> bool:
    vocab = json.loads(tok_json)["model"]["vocab"]
    return any(len(t) >= 4 and t.lstrip("Ġ") in HELD_OUT_WORD for t in vocab if "qui" in t or "trop" in t or "xot" in t)


def test_a_bpe_never_sees_a_language_models_held_out_tail(tmp_path):
    """The held-out validation and test tail is cut where the BPE's training rows end."""
    from stagetrain.data.tokenizer import Tokenizer, from_description

    rows = [{"text": WORDS[k]} for _ in range(40) for k in sorted(WORDS)] + [{"text": f"{HELD_OUT_WORD} " * 6}] * 25
    path = tmp_path / "lm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    ds = _cfg(tmp_path, f"dataset.path={path}", "dataset.tokenizer=bpe", "dataset.vocab_size=320",
              "dataset.val_fraction=0.15", "dataset.test_fraction=0.15").dataset
    data = load_data(ds, 0)
    everything = Tokenizer.build("bpe", [r["text"] for r in rows], ds).impl.to_str()
    assert _bpe_has_word(everything)  # the check can fail: all the rows teach it the word
    assert not _bpe_has_word(data.info["tokenizer"]["json"])  # the run's BPE learnt from the training rows only
    tok = from_description(data.info["tokenizer"])
    assert HELD_OUT_WORD not in tok.decode(data.train.x.flatten())  # and no training window holds a held-out row
    assert HELD_OUT_WORD in tok.decode(data.val.x.flatten()) and HELD_OUT_WORD in tok.decode(data.test.x.flatten())


@pytest.mark.parametrize("storage", ["memory", "stream"])
def test_a_classification_bpe_learns_from_the_training_rows_only(tmp_path, storage):
    """Test rows and the seeded validation rows are drawn before the BPE is trained."""
    from stagetrain.data.tokenizer import Tokenizer, from_description

    path = _write(tmp_path, "jsonl")
    ds = _cfg(tmp_path, f"dataset.path={path}", "dataset.label_field=label", "dataset.tokenizer=bpe",
              "dataset.vocab_size=300", "dataset.max_len=64", f"dataset.storage={storage}").dataset
    data = load_data(ds, 3)
    tok = from_description(data.info["tokenizer"])
    read = (lambda s: s.x) if storage == "memory" else (lambda s: torch.stack([s.x.reader[int(i)] for i in s.x.index]))
    train_texts = [tok.decode(x) for x in read(data.train)]  # exact: no text is cut at 64 tokens
    assert Tokenizer.build("bpe", train_texts, ds).impl.to_str() == data.info["tokenizer"]["json"]
    val_texts = sorted(tok.decode(x) for x in read(data.val))
    assert val_texts and not set(val_texts) & set(train_texts)
    assert Tokenizer.build("bpe", train_texts + val_texts, ds).impl.to_str() != data.info["tokenizer"]["json"]
