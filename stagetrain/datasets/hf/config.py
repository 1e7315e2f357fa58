"""``dataset=hf``: Hugging Face ``datasets`` over local files (torch-free part).

The files (``dataset.path``: one file or a ``save_to_disk`` folder; ``dataset.files``: one
file per split) pass the file gate (``userfile.check_file``) before ``datasets`` opens them;
``datasets`` runs offline (``HF_DATASETS_OFFLINE``) and only with its packaged builders
(``json``, ``csv``, ``parquet``, ``text``) and ``load_from_disk``, so nothing is downloaded
and a hub name is refused. The splits are Arrow tables memory-mapped from the cache
(``cache_dir``) or the saved folder: nothing is read into Python objects but the labels.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.schema import DatasetConfig
from stagetrain.textfiles import (
    expand,
    held_out_counts,
    labelled_meta,
    part_sizes,
    token_vocab,
    validate_text_dataset,
)

STREAMABLE = True  # bundle(ds, seed, "stream"): each row tokenised when the loader reads it
ITEMSIZE = 8  # int64 token ids
FORMATS = ("auto", "json", "csv", "parquet", "text", "disk")
SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".txt": "text"}
SPLITS = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}


@dataclass
class SplitFiles:
    """One file per split (each optional but train): ``dataset.files={train:a.jsonl,test:b.jsonl}``."""

    train: str | None = None
    validation: str | None = None
    test: str | None = None


@dataclass
class Config(DatasetConfig):
    """Texts (``text_field``) and labels (``label_field``; null: language modelling) of local
    files read by Hugging Face ``datasets``, tokenised to ``max_len`` tokens."""

    name: str = "hf"
    path: str | None = None  # a .jsonl/.json/.csv/.tsv/.parquet/.txt file, or a save_to_disk folder
    files: SplitFiles = field(default_factory=SplitFiles)  # one file per split: {train: a.jsonl, test: b.jsonl}
    format: str = "auto"  # auto (by suffix; a folder: disk) | json | csv | parquet | text | disk
    text_field: str = "text"
    label_field: str | None = None  # null: language modelling (next tokens); a column: classification
    tokenizer: str = "bytes"  # bytes | chars | bpe (vocab_size) | hf (tokenizer_path)
    vocab_size: int | None = None  # tokenizer=bpe: token ids besides padding (>= 257), learnt from training texts
    tokenizer_path: str | None = None  # tokenizer=hf: a local folder that tokenizer.save_pretrained wrote
    max_len: int = 128
    test_fraction: float = 0.1  # without a test split: held out (stratified, or the token stream's tail)
    cache_dir: str | None = None  # Arrow files datasets converts the files to; null: its own (HF_DATASETS_CACHE)


def inputs(ds: Any) -> str:
    return "tokens"


def task(ds: Any) -> str:
    return "lm" if ds.label_field is None else "classification"


def validate(ds: Any) -> None:
    validate_text_dataset(ds, lm=ds.label_field is None)
    check_choice("dataset.format", ds.format, FORMATS)
    if not ds.path and not given_files(ds):
        raise StagetrainError("dataset=hf needs dataset.path (a .jsonl, .csv, .parquet or .txt file, or a folder "
                              "written by datasets' save_to_disk) or dataset.files (one file per split, e.g. "
                              "dataset.files={train:train.jsonl,test:test.jsonl}).")
    if ds.path and given_files(ds):
        raise StagetrainError("dataset=hf: give dataset.path or dataset.files, not both.")
    if given_files(ds) and "train" not in given_files(ds):
        raise StagetrainError(f"dataset.files={given_files(ds)} has no train file: add train:<file>.")


def given_files(ds: Any) -> dict[str, str]:
    files = ds.files or {}
    return {k: str(getattr(files, k)) for k in ("train", "validation", "test") if getattr(files, k, None)}


def _library() -> Any:
    """``datasets``, offline: it never looks a name up on the hub nor downloads."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    logging.getLogger("datasets").setLevel(logging.WARNING)  # no "PyTorch version ... available" on import
    try:
        import datasets
    except ImportError:
        raise StagetrainError("dataset=hf reads files with Hugging Face datasets, which is not installed: "
                              "pip install 'stagetrain[hf]' (or pip install 'datasets>=2.19,<4').") from None
    for flag in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if hasattr(datasets.config, flag):
            setattr(datasets.config, flag, True)
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


def sources(ds: Any) -> dict[str, Path]:
    """The file (or saved folder) of each split given, every one through the file gate."""
    given = {SPLITS[k]: (f"dataset.files.{k}", v) for k, v in given_files(ds).items()} or {
        "train": ("dataset.path", ds.path)}
    found = {}
    for split, (key, value) in given.items():
        p = expand(value)
        if not p.exists() and not p.suffix and not value.startswith((".", "/", "~")):
            raise StagetrainError(
                f"{key}={value} is not a local file or folder. dataset=hf reads local files only and never downloads "
                "(datasets runs with HF_DATASETS_OFFLINE=1), so a Hugging Face hub name is refused: download it once "
                "elsewhere, save it with Dataset.save_to_disk (or to_json / to_parquet) and give that folder or file.")
        if p.is_dir():
            for f in userfile.walk(p, key):
                userfile.check_file(f, key, "data")
        else:
            userfile.check_file(p, key, "data")
        found[split] = p
    return found


def file_format(ds: Any, path: Path) -> str:
    if ds.format != "auto":
        return ds.format
    if path.is_dir():
        return "disk"
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise StagetrainError(f"dataset=hf: cannot tell the format of {path} from its suffix; set dataset.format to "
                              f"one of {', '.join(FORMATS[1:])} (suffixes: {', '.join(SUFFIXES)}).")
    return fmt


_CACHE: dict[tuple, dict[str, Any]] = {}


def splits(ds: Any) -> dict[str, Any]:
    """split (train / val / test) -> a memory-mapped ``datasets.Dataset``, each with its text
    (and label) column; read once per process for the same files and options."""
    found = sources(ds)
    key = (repr(sorted((k, str(p), p.stat().st_mtime_ns) for k, p in found.items())), ds.format, ds.text_field,
           ds.label_field, ds.cache_dir, ds.root)
    if key not in _CACHE:
        out: dict[str, Any] = {}
        for split, path in found.items():
            out.update(_open(ds, split, path))
        for split, data in out.items():
            _check_fields(ds, split, found.get(split, found["train"]), data)
        _CACHE[key] = out
    return _CACHE[key]


def _open(ds: Any, split: str, path: Path) -> dict[str, Any]:
    lib = _library()
    fmt = file_format(ds, path)
    cache = str(expand(ds.cache_dir)) if ds.cache_dir else None
    try:
        if fmt == "disk":
            data = lib.load_from_disk(str(path), keep_in_memory=False)
            if isinstance(data, lib.DatasetDict):
                unknown = [k for k in data if k not in SPLITS]
                if unknown:
                    raise StagetrainError(f"dataset.path={path}: the saved splits {unknown} are not train, validation "
                                          "or test; save them under those names.")
                return {SPLITS[k]: v for k, v in data.items()}
            return {split: data}
        extra = {"delimiter": "\t"} if fmt == "csv" and path.suffix.lower() == ".tsv" else {}
        return {split: lib.load_dataset(fmt, data_files=str(path), split="train", cache_dir=cache, **extra)}
    except StagetrainError:
        raise
    except Exception as e:  # the library's parse errors: pyarrow, json, csv, a folder that is not save_to_disk's
        cause = str(getattr(e, "__cause__", None) or e).strip().splitlines()
        raise StagetrainError(f"dataset=hf could not read {path} as {fmt}: {type(e).__name__}: "
                              f"{(cause or [''])[0][:300]}. Check the file, or set dataset.format.") from None


def _check_fields(ds: Any, split: str, path: Path, data: Any) -> None:
    columns = list(data.column_names)
    for key, fld in (("text_field", ds.text_field), ("label_field", ds.label_field)):
        if fld is not None and fld not in columns:
            null = " (or dataset.label_field=null for language modelling)" if key == "label_field" else ""
            raise StagetrainError(f"dataset.{key}={fld}: the {split} split ({path}) has no such field; its fields are "
                                  f"{columns}. Set dataset.{key} to one of them{null}.")
    kind = getattr(data.features[ds.text_field], "dtype", None)
    if kind not in ("string", "large_string"):
        raise StagetrainError(f"dataset.text_field={ds.text_field}: the {split} split ({path}) holds {kind or 'lists'} "
                              f"there, not text; its fields are {columns}.")


def labels(data: Any, fld: str) -> list[str]:
    """A split's labels as names (ClassLabel ids and numbers as their decimal text)."""
    return [str(v) for v in data.data.column(fld).to_pylist()]


def test_rows(all_labels: list[str], fraction: float) -> list[int]:
    """Rows held out for testing when no test split is given: ``held_out_counts`` of each
    class, drawn with a fixed seed, the same for every run."""
    g = random.Random(0)
    test: list[int] = []
    for name, k in sorted(held_out_counts(all_labels, fraction).items()):
        members = [i for i, lab in enumerate(all_labels) if lab == name]
        test += g.sample(members, k)
    return sorted(test)


def token_counts(ds: Any, data: Any) -> list[int]:
    """Tokens each row gives in the language-model stream (its text and a newline): exact for
    ``bytes`` and ``chars``, the UTF-8 bytes for other tokenizers (an estimate)."""
    import pyarrow.compute as pc

    col = data.data.column(ds.text_field)
    lengths = pc.utf8_length(col) if ds.tokenizer == "chars" else pc.binary_length(col)
    return [n + 1 for n in lengths.fill_null(0).to_pylist()]


def lm_parts(ds: Any, tokens: int, parts: dict[str, Any]) -> tuple[int, int, int]:
    """Tokens of the training stream kept for training, validation and testing: a split given
    as a file is not carved from it."""
    _, n_val, n_test = part_sizes(tokens, ds)
    n_val, n_test = (0 if "val" in parts else n_val), (0 if "test" in parts else n_test)
    return tokens - n_val - n_test, n_val, n_test


def held_fraction(ds: Any, parts: dict[str, Any]) -> float:
    """The fraction of a language model's training stream held out (validation and test not given as files)."""
    return (0.0 if "val" in parts else ds.val_fraction) + (0.0 if "test" in parts else ds.test_fraction)


def lm_training_rows(ds: Any, parts: dict[str, Any]) -> int:
    """Leading rows of a language model's training file that lie wholly before its held-out
    tail (by the rows' sizes): what a tokenizer learns from, and, for a learnt tokenizer
    (bpe, hf), where the training tokens end, so it never sees validation or test text."""
    counts = token_counts(ds, parts["train"])
    limit, total, k = (1.0 - held_fraction(ds, parts)) * sum(counts), 0, 0
    while k < len(counts) and total + counts[k] <= limit:
        total += counts[k]
        k += 1
    return k


def training_texts(ds: Any) -> list[str]:
    """The texts a tokenizer's vocabulary is built from: a language model's rows before its
    held-out tail (``lm_training_rows``), or the training split's labelled texts less the rows
    held out for testing (a BPE learns from the training rows alone: ``reader._classification``)."""
    parts = splits(ds)
    texts = [t or "" for t in parts["train"].data.column(ds.text_field).to_pylist()]
    if ds.label_field is None:
        return [*texts[: lm_training_rows(ds, parts)], "\n"]  # language modelling: rows end in a newline
    if "test" not in parts:
        held = set(test_rows(labels(parts["train"], ds.label_field), ds.test_fraction))
        texts = [t for i, t in enumerate(texts) if i not in held]
    return texts


def vocab_size(ds: Any) -> int:
    return token_vocab(ds.tokenizer, lambda: training_texts(ds), ds)


def meta(ds: Any) -> tuple[tuple[int, ...], int, int, bool]:
    parts = splits(ds)
    if ds.label_field is None:
        tokens = lm_parts(ds, sum(token_counts(ds, parts["train"])), parts)[0]
        return (ds.max_len,), vocab_size(ds), max(0, (tokens - 1) // ds.max_len), True
    return (*labelled_meta(ds, labels(parts["train"], ds.label_field), "test" in parts), "val" in parts)
