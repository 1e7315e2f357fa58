"""Hostile and careless data files, one table: every file a run reads goes through the file
gate (``stagetrain.core.userfile``) and a reader on top of it, so a FIFO, a device, a folder, a
sparse or huge file, a missing file, a link loop, a decompression bomb, a truncated image,
invalid UTF-8, an over-long line or CSV field, deeply nested JSON, a line that is not an
object, a missing or null label, or integer tensors in a weight file are each refused with
a non-zero exit and one ``Error:`` paragraph naming the file and the cause -- no traceback,
no hang, no MemoryError, nothing changed in the working directory.

Rows run in-process through the real CLI (``hostile.run_main``); the files are made once
per session, all tiny. One row is about a file over the data budget: the budget is lowered
for that row (``userfile.LIMITS``) and a real 2 MB single-line file is over it -- a real
200 MB line would cost seconds to write and read for the same code path. Beside the table:
numeric labels 1, 1.0 and "01" are one class; a DataLoader worker killed by a signal is one
paragraph.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import make_cfg
from hostile import TINY, assert_refused, deadline, fingerprint, idx_root, run_main

from stagetrain import checkpoint as ckpt
from stagetrain.core import userfile

MiB = 1024**2
TRAIN = ["strategy=scratch", "train.epochs=1", "model.widths=[8]"]
TRANSFORMER = ["strategy=scratch", "train.epochs=1", "model=transformer", "model.d_model=16", "model.n_heads=2",
               "model.n_layers=1"]
TEXT = [*TRANSFORMER, "dataset=text", "dataset.max_len=8"]
TC = [*TRANSFORMER, "dataset=text_classification", "dataset.max_len=8"]
IMG = [*TRAIN, "dataset=imagefolder", "dataset.image_size=8", "dataset.channels=1"]
IDX = [*TRAIN, "dataset=mnist"]
FT = ["strategy=finetune", "train.epochs=1", "model.widths=[8]"]


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def _text_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    out = {"dir": d}
    os.mkfifo(d / "fifo.txt")
    out["fifo_txt"] = d / "fifo.txt"
    out["sparse40"] = _sparse(d / "sparse40.txt", 40 * 1024**3)
    out["sparse1"] = _sparse(d / "sparse1.txt", 1024**3)
    (d / "latin1.txt").write_bytes(b"abc caf\xe9 au lait\n")
    out["latin1"] = d / "latin1.txt"
    (d / "oneline.txt").write_bytes(b"a" * (2 * MiB))  # one 2 MB line, no newline
    out["oneline"] = d / "oneline.txt"
    (d / "self.txt").symlink_to("self.txt")
    out["self_txt"] = d / "self.txt"
    (d / "dangling.txt").symlink_to("gone.txt")
    out["dangling"] = d / "dangling.txt"
    (d / "withfifo").mkdir()
    (d / "withfifo" / "a.txt").write_text("some text " * 50)
    os.mkfifo(d / "withfifo" / "b.txt")
    out["withfifo"] = d / "withfifo"
    return out


def _rows(n: int = 12) -> list[dict]:
    return [{"text": f"example {i} " * 3, "label": "ab"[i % 2]} for i in range(n)]


def _jsonl(path: Path, rows: list, extra: list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in rows[:4]] + list(extra) + [json.dumps(r) for r in rows[4:]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _table_files(d: Path) -> dict[str, Path]:
    d.mkdir()
    out = {}
    os.mkfifo(d / "fifo.jsonl")
    out["fifo_jsonl"] = d / "fifo.jsonl"
    out["sparse_jsonl"] = _sparse(d / "sparse.jsonl", 40 * 1024**3)
    out["long_jsonl"] = _jsonl(d / "long.jsonl", _rows(), [json.dumps({"text": "x" * (2 * MiB), "label": "a"})])
    out["deep_jsonl"] = _jsonl(d / "deep.jsonl", _rows(), ['{"text": "t", "label": "a", "x": ' + "[" * 100_000
                                                            + "]" * 100_000 + "}"])
    out["nested_jsonl"] = _jsonl(d / "nested.jsonl", _rows(), ['{"text": "t", "label": "a", "x": ' + "[" * 50
                                                                + "]" * 50 + "}"])
    out["list_jsonl"] = _jsonl(d / "list.jsonl", _rows(), ['["text", "label"]'])
    out["string_jsonl"] = _jsonl(d / "string.jsonl", _rows(), ['"just a string"'])
    out["null_jsonl"] = _jsonl(d / "null.jsonl", _rows(), ['{"text": "no label here", "label": null}'])
    out["nofield_jsonl"] = _jsonl(d / "nofield.jsonl", _rows(), ['{"text": "no label field"}'])
    out["objlabel_jsonl"] = _jsonl(d / "objlabel.jsonl", _rows(), ['{"text": "t", "label": {"a": 1}}'])
    out["bad_json"] = _jsonl(d / "bad.jsonl", _rows(), ['{"text": "t", "label": '])
    head = "text,label\n" + "".join(f"example {i},{'ab'[i % 2]}\n" for i in range(8))
    (d / "short.csv").write_text(head + "a row without its label\n" + "more,a\n")
    out["short_csv"] = d / "short.csv"
    (d / "empty_label.csv").write_text(head + "an empty label,\n" + "more,a\n")
    out["empty_label_csv"] = d / "empty_label.csv"
    (d / "huge_field.csv").write_text(head + '"' + "y" * 200_000 + '",a\n')
    out["huge_field_csv"] = d / "huge_field.csv"
    (d / "latin1.csv").write_bytes(head.encode() + "caf\xe9,a\n".encode("latin-1"))
    out["latin1_csv"] = d / "latin1.csv"
    (d / "classes").mkdir()
    (d / "classes" / "jokes").write_text("one\n%\ntwo\n%\nthree\n")
    os.mkfifo(d / "classes" / "quotes")
    out["classes_fifo"] = d / "classes"
    out["good_jsonl"] = _jsonl(d / "good.jsonl", _rows())
    return out


def _png(path: Path, size: int = 12, mode: str = "L") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), 128).save(path)
    return path


def _image_root(base: Path, name: str, damage) -> Path:
    root = base / name
    for cls in ("cat", "dog"):
        for i in range(4):
            _png(root / "train" / cls / f"{i}.png")
    damage(root / "train" / "dog")
    return root


def _bomb(folder: Path) -> None:
    from PIL import Image

    Image.new("1", (30_000, 30_000)).save(folder / "bomb.png")  # 900 million pixels in a few KB


def _image_files(d: Path) -> dict[str, Path]:
    damages = {
        "img_bomb": _bomb,
        "img_truncated": lambda f: (f / "t.png").write_bytes(_png(f / "t.png", 64, "RGB").read_bytes()[:120]),
        "img_garbage": lambda f: (f / "g.png").write_bytes(b"not an image at all"),
        "img_loop": lambda f: (f / "again").symlink_to(f),
        "img_fifo": lambda f: os.mkfifo(f / "pipe.png"),
        "img_zero": lambda f: (f / "zero.png").symlink_to("/dev/zero"),
        "img_sparse": lambda f: _sparse(f / "huge.png", 100 * MiB),
        "img_classdir_loop": lambda f: (f.parent / "cycle").symlink_to(f.parent),
    }
    return {name: _image_root(d, name, damage) for name, damage in damages.items()}


def _idx_files(d: Path) -> dict[str, Path]:
    def mk(name: str, damage) -> Path:
        return idx_root(d, name, damage)

    def replace(name: str, make) -> object:
        return lambda raw: ((raw / name).unlink(), make(raw / name))

    return {
        "idx_fifo": mk("fifo", replace("train-images-idx3-ubyte", os.mkfifo)),
        "idx_sparse": mk("sparse", replace("train-labels-idx1-ubyte", lambda p: _sparse(p, 40 * 1024**3))),
        "idx_zero": mk("zero", replace("t10k-images-idx3-ubyte", lambda p: p.symlink_to("/dev/zero"))),
        "idx_labels_fifo": mk("labels_fifo", replace("train-labels-idx1-ubyte", os.mkfifo)),
    }


def _weight_files(d: Path) -> dict[str, Path]:
    from safetensors.torch import save_file

    d.mkdir()
    run = d / "run"
    assert run_main([*TINY, f"hydra.run.dir={run}"]) == 0
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    model = state["model"]
    first = next(k for k in model if k.endswith("weight"))
    out = {}
    torch.save({**model, first: model[first].to(torch.int8)}, d / "int8_bare.pth")
    out["w_int8_bare"] = d / "int8_bare.pth"
    tensors = {k: v.contiguous() for k, v in model.items()}
    save_file({**tensors, first: tensors[first] > 0}, str(d / "bool.safetensors"),
              metadata={"arch": json.dumps(state["arch"])})
    out["w_bool_st"] = d / "bool.safetensors"
    s = {**state, "model": {**model, first: model[first].to(torch.int64)}}
    s["sha256"] = ckpt.digest(s)  # a crafted checkpoint with a recomputed digest
    torch.save(s, d / "int64.pt")
    out["w_int64_ckpt"] = d / "int64.pt"
    out["first_key"] = first
    return out


# ({name} is filled in from the session's files)
CASES: list[tuple[list[str], list[str]]] = [
    # ---- dataset=text: dataset.paths
    ([*TEXT, "dataset.paths=[{fifo_txt}]"], ["dataset.paths: {fifo_txt} is a named pipe (FIFO)", "not read"]),
    ([*TEXT, "dataset.paths=[/dev/zero]"], ["dataset.paths: /dev/zero is a character device"]),
    ([*TEXT, "dataset.paths=[{withfifo}]"], ["withfifo/b.txt is a named pipe (FIFO)"]),
    ([*TEXT, "dataset.paths=[{sparse40}]"], ["sparse40.txt is 40 GB", "more than the 8 GB a data file"]),
    ([*TEXT, "dataset.paths=[{sparse1}]"], ["sparse1.txt is a sparse file", "mostly holes"]),
    ([*TEXT, "dataset.paths=[{dir}/nope.txt]"], ["dataset.paths: {dir}/nope.txt does not exist"]),
    ([*TEXT, "dataset.paths=[{dangling}]"], ["dangling.txt does not exist", "symbolic link whose target is missing"]),
    ([*TEXT, "dataset.paths=[{self_txt}]"], ["self.txt cannot be read", "points back at itself"]),
    ([*TEXT, "dataset.paths=[{latin1}]"], ["latin1.txt is not UTF-8 text (byte 7 is 0xe9)", "iconv"]),
    ([*TEXT, "dataset.paths=[{oneline}]", "+_limit=1"], ["oneline.txt is 2 MB", "more than the 1 MB a data file"]),
    # ---- dataset=text_classification: JSONL, CSV, a folder of class files
    ([*TC, "dataset.path={fifo_jsonl}"], ["dataset.path: {fifo_jsonl} is a named pipe (FIFO)"]),
    ([*TC, "dataset.path=/dev/zero", "dataset.format=csv"], ["dataset.path: /dev/zero is a character device"]),
    ([*TC, "dataset.path={classes_fifo}"], ["classes/quotes is a named pipe (FIFO)"]),
    ([*TC, "dataset.path={dir}/nope.jsonl"], ["nope.jsonl does not exist"]),
    ([*TC, "dataset.path={sparse_jsonl}"], ["sparse.jsonl is 40 GB"]),
    ([*TC, "dataset.path={long_jsonl}"], ["line 5 of {long_jsonl} is 2,097,", "characters long"]),
    ([*TC, "dataset.path={deep_jsonl}"], ["line 5 of {deep_jsonl} nests JSON values more than 32 levels"]),
    ([*TC, "dataset.path={nested_jsonl}"], ["line 5 of {nested_jsonl} nests JSON values more than 32 levels"]),
    ([*TC, "dataset.path={list_jsonl}"], ["line 5 of {list_jsonl} is a JSON list, not an object"]),
    ([*TC, "dataset.path={string_jsonl}"], ["line 5 of {string_jsonl} is a JSON string, not an object"]),
    ([*TC, "dataset.path={bad_json}"], ["line 5 of {bad_json} is not JSON"]),
    ([*TC, "dataset.path={null_jsonl}"], ["line 5 of {null_jsonl} has no label (its 'label' is null)"]),
    ([*TC, "dataset.path={nofield_jsonl}"], ["line 5 of {nofield_jsonl} has no 'label' field", "dataset.label_field"]),
    ([*TC, "dataset.path={objlabel_jsonl}"], ["line 5 of {objlabel_jsonl}: its 'label' is a JSON object"]),
    ([*TC, "dataset.path={short_csv}"], ["line 10 of {short_csv} has no label (its 'label' is missing)"]),
    ([*TC, "dataset.path={empty_label_csv}"], ["line 10 of {empty_label_csv} has no label (its 'label' is empty)"]),
    ([*TC, "dataset.path={huge_field_csv}"], ["line 10 of {huge_field_csv} cannot be read as CSV",
                                              "field larger than field limit"]),
    ([*TC, "dataset.path={latin1_csv}"], ["latin1.csv is not UTF-8 text (byte 110 is 0xe9)"]),
    ([*TC, "dataset.path={good_jsonl}", "dataset.test_path={fifo_jsonl}"],
     ["dataset.test_path: {fifo_jsonl} is a named pipe (FIFO)"]),
    # ---- dataset=imagefolder: each image through the gate, decoded with bounds
    ([*IMG, "dataset.root={img_bomb}"], ["bomb.png declares 900,000,000 pixels", "decompression-bomb limit"]),
    ([*IMG, "dataset.root={img_truncated}"], ["cannot read {img_truncated}/train/dog/t.png as an image", "truncated"]),
    ([*IMG, "dataset.root={img_garbage}"], ["cannot read {img_garbage}/train/dog/g.png as an image"]),
    ([*IMG, "dataset.root={img_loop}"], ["dog/again is a symbolic link loop", "leads back to"]),
    ([*IMG, "dataset.root={img_classdir_loop}"], ["train/cycle is a symbolic link loop"]),
    ([*IMG, "dataset.root={img_fifo}"], ["dog/pipe.png is a named pipe (FIFO)"]),
    ([*IMG, "dataset.root={img_zero}"], ["dog/zero.png is a character device"]),
    ([*IMG, "dataset.root={img_sparse}"], ["dog/huge.png is 100 MB, more than the 64 MB an image file"]),
    ([*IMG, "dataset.root={img_fifo}", "dataset.storage=stream", "dataset.workers=1"],
     ["dog/pipe.png is a named pipe (FIFO)"]),
    ([*IMG, "dataset.root={dir}/no_such_root"], ["dataset=imagefolder", "no_such_root/train is not a folder"]),
    # ---- IDX files (MNIST layout under dataset.root): checked before torchvision opens them by name
    ([*IDX, "dataset.root={idx_fifo}"], ["train-images-idx3-ubyte is a named pipe (FIFO)"]),
    ([*IDX, "dataset.root={idx_sparse}"], ["train-labels-idx1-ubyte is 40 GB"]),
    ([*IDX, "dataset.root={idx_zero}"], ["t10k-images-idx3-ubyte is a character device"]),
    ([*IDX, "dataset.root={idx_labels_fifo}", "dataset.storage=stream"],
     ["train-labels-idx1-ubyte is a named pipe (FIFO)"]),
    # ---- weight files: a tensor that is not floating where the model's is
    ([*FT, "strategy.source={w_int8_bare}"], ["int8_bare.pth: its weight {first_key} is int8", "not loaded"]),
    ([*FT, "strategy.source={w_bool_st}"], ["bool.safetensors: its weight {first_key} is bool"]),
    ([*FT, "strategy.source={w_int64_ckpt}"], ["int64.pt: its weight {first_key} is int64"]),
]


def _id(args: list[str]) -> str:
    return " ".join(a for a in args if a not in TRAIN and a not in TEXT + TC + IMG + IDX + FT)


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("hostile_files")
    made: dict[str, Path] = {}
    made.update(_text_files(base / "text"))
    made.update(_table_files(base / "tables"))
    made.update(_image_files(base / "images"))
    made.update(_idx_files(base / "idx"))
    made.update(_weight_files(base / "weights"))
    return made


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A cwd with a file and a folder in it: fingerprinted before and after each row."""
    (tmp_path / "notes.txt").write_text("mine\n")
    (tmp_path / "keep").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    return tmp_path


def test_the_table_has_at_least_35_distinct_rows():
    assert len({_id(a) for a, _ in CASES}) == len(CASES) >= 35, len(CASES)


@pytest.mark.parametrize("args,expected", CASES, ids=[_id(a) for a, _ in CASES])
def test_hostile_file_is_refused_cleanly(args, expected, files, workdir, capsys, monkeypatch):
    if "+_limit=1" in args:  # the data budget lowered to 1 MB for this row (see the module docstring)
        monkeypatch.setitem(userfile.LIMITS, "data", MiB)
    fill = {k: str(v) for k, v in files.items()}
    args = [a.format(**fill) for a in args if not a.startswith("+_")]
    expected = [e.format(**fill) for e in expected]
    before = fingerprint(workdir)
    code = run_main([*args, "progress=off", "plots=false", "device=cpu", "device.threads=1"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert "MemoryError" not in text, text
    assert_refused(code, text, expected)
    assert fingerprint(workdir) == before, "a refused input changed or left files in the working directory"


def test_numeric_labels_are_taken_by_value(tmp_path):
    """1, 1.0, "01" and "1.0" are one class ("1"); 2 and "2.0" another; words stay words."""
    from stagetrain.datasets import load_data
    from stagetrain.runs.config import validate
    from stagetrain.textfiles import label_name

    labels = [1, 1.0, "01", "1.0", 2, "2.0"]
    rows = [{"text": f"text number {i}", "label": labels[i % len(labels)]} for i in range(36)]
    path = _jsonl(tmp_path / "numbers.jsonl", rows)
    data = load_data(validate(make_cfg("dataset=text_classification", "model=transformer", f"dataset.path={path}")).dataset, seed=0)
    assert data.info["labels"] == ["1", "2"] and data.num_classes == 2
    assert [label_name(v) for v in (1, 1.0, "01", "1.0", " 1 ", "0.50", "1e3", "nan", "cat", "01a")] == \
        ["1", "1", "1", "1", "1", "0.5", "1000", "nan", "cat", "01a"]


COUNTER = {"path": ""}  # a file a byte longer per image read in a worker, shared by the forked workers


def _die_in_worker(path: str, channels: int, size: int) -> torch.Tensor:
    """Images read normally until 30 have been read by workers, then the reading worker is
    killed as by the out-of-memory killer: mid-training, after the statistics pass."""
    if torch.utils.data.get_worker_info() is not None:
        with open(COUNTER["path"], "ab") as f:
            f.write(b".")
        if os.path.getsize(COUNTER["path"]) > 30:
            os.kill(os.getpid(), signal.SIGKILL)
    return torch.full((size * size * channels,), 100, dtype=torch.uint8)


def test_a_loader_worker_killed_mid_training_is_one_paragraph_and_the_run_resumable(tmp_path, workdir, monkeypatch,
                                                                                   capsys):
    """Chosen behaviour: the run stops as after a failure (run.json "failed", the last
    checkpoint kept), with one paragraph that names the signal and says resume=auto."""
    from stagetrain.data import imagefolder

    root = _image_root(tmp_path, "imgs", lambda f: None)
    COUNTER["path"] = str(tmp_path / "reads")
    monkeypatch.setattr(imagefolder, "decode", _die_in_worker)  # the forked workers inherit it
    run = tmp_path / "run"
    code = run_main([*IMG, f"dataset.root={root}", "dataset.storage=stream", "dataset.workers=1", "train.epochs=20",
                     "train.batch_size=2", f"hydra.run.dir={run}", "progress=off", "plots=false", "device=cpu",
                     "device.threads=1"])
    text = capsys.readouterr()
    text = text.out + text.err
    assert code != 0 and "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, text
    assert "dataset.workers=1: a data-loading process died" in errors[0] and "killed by SIGKILL" in errors[0]
    assert "resume=auto" in errors[0]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "killed by SIGKILL" in info["error"]
    assert (run / "checkpoints" / "last.pt").exists()  # epochs before the kill were checkpointed


def test_a_number_like_label_of_any_size_is_a_name_and_cheap():
    """A label such as 1e5000 would take minutes (or raise) as an integer: beyond 1e30 a label
    is kept as written, and deciding so costs nothing."""
    from stagetrain.textfiles import label_name

    with deadline(60):  # fails instead of hanging the suite should the bound go
        assert [label_name(v) for v in ("1e5000", "1e99999999", "-1e-5000", "1e30", "2.5e1")] == \
            ["1e5000", "1e99999999", "-1e-5000", str(10**30), "25"]
