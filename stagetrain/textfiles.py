"""Reading text data without torch: UTF-8 files, entries split by a delimiter line,
labelled examples from JSONL / CSV / a folder of class files, the fortunes folder, and
the vocabulary a tokenizer gives.

The config layer reads vocabulary sizes here (``model.vocab_size`` follows the data), so
this module imports no torch; ``stagetrain.data.text`` turns what it reads into tensors.
Token id 0 is padding for every tokenizer: ``bytes`` maps byte b to b + 1 (257 ids);
``chars`` maps 1 to characters outside the vocabulary and 2.. to the distinct characters
of the text, in code-point order.
"""

from __future__ import annotations

import fnmatch
import os
import random
from pathlib import Path
from typing import Any

from stagetrain import userfile
from stagetrain.errors import StagetrainError, check_choice
from stagetrain.texttables import label_name, read_table  # noqa: F401 - label_name: part of this module's API

PAD, UNKNOWN = 0, 1
BYTE_VOCAB = 257
FORTUNES_FOLDERS = ("text/fortunes", "fortunes")  # under dataset.root
SYSTEM_FORTUNES = "/usr/share/games/fortunes"  # the Debian package `fortunes`
SKIPPED = ("README*", "COPYRIGHT", "LICENSE*", "SHA256SUMS", "*.dat", "*.u8", ".*")  # not class files


def expand(path: str) -> Path:
    return Path(os.path.expanduser(str(path)))


def read_utf8(path: Path, key: str) -> str:
    """A file's text through the file gate (``userfile``): refused naming ``key`` and the path
    when it is missing, not a regular file, over the data limit, or not UTF-8 (with the byte
    offset)."""
    return userfile.read_text(path, key, "data")


def split_entries(text: str, delimiter: str) -> list[str]:
    """Entries separated by lines holding only ``delimiter``; empty entries dropped."""
    entries, current = [], []
    for line in text.splitlines():
        if line.rstrip("\r") == delimiter:
            entries.append("\n".join(current))
            current = []
        else:
            current.append(line)
    entries.append("\n".join(current))
    return [e for e in entries if e.strip()]


def class_files(folder: Path, key: str) -> list[Path]:
    """The class files of a folder (one file per class, sorted by name), skipping README,
    COPYRIGHT, checksums, fortune's .dat indexes and hidden files. Whatever else is there
    is a class file: one that is not a regular file is refused when it is read."""
    files = [p for p in userfile.listing(folder, key)[1] if not any(fnmatch.fnmatch(p.name, pat) for pat in SKIPPED)]
    if not files:
        raise StagetrainError(f"{key}: the folder {folder} holds no class files (one text file per class, "
                              "entries separated by a delimiter line).")
    return files


def read_folder(folder: Path, delimiter: str, key: str) -> tuple[list[str], list[str]]:
    """(texts, labels) of a folder with one file per class; every class needs an entry."""
    texts: list[str] = []
    labels: list[str] = []
    for path in class_files(folder, key):
        entries = split_entries(read_utf8(path, key), delimiter)
        if not entries:
            raise StagetrainError(f"{key}: class {path.name!r} ({path}) has no examples: the file is empty "
                                  f"or holds only '{delimiter}' lines. Remove it or add entries.")
        texts += entries
        labels += [path.name] * len(entries)
    return texts, labels


def table_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if path.is_dir():
        return "folder"
    return "csv" if path.suffix.lower() in (".csv", ".tsv") else "jsonl"


def read_labelled(ds: Any, path: str | None = None) -> tuple[list[str], list[str]]:
    """(texts, label names) of a text_classification dataset (``path``: another file, e.g. the test file)."""
    src = expand(path or ds.path)
    key = "dataset.test_path" if path else "dataset.path"
    fmt = table_format(src, ds.format)
    if fmt == "folder":
        return read_folder(src, ds.delimiter, key)
    return read_table(src, fmt, ds.text_field, ds.label_field, key)


def label_names(labels: list[str]) -> list[str]:
    """Label names in class order 0..k-1: numeric labels by value, others alphabetically."""
    names = sorted(set(labels))
    try:
        return sorted(names, key=float)
    except ValueError:
        return names


def held_out_counts(labels: list[str], fraction: float) -> dict[str, int]:
    """Examples of each class held out for the test split (stratified; a class keeps one
    example for training)."""
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return {c: min(n - 1, round(fraction * n)) for c, n in counts.items()}


def fortunes_folder(ds: Any) -> Path:
    """Where the fortunes collection is: under dataset.root (STAGETRAIN_DATA), or the Debian package's."""
    root = expand(ds.root)
    candidates = [root / sub for sub in FORTUNES_FOLDERS] + [root, Path(SYSTEM_FORTUNES)]
    for folder in candidates:
        if (folder / "art").is_file() and (folder / "zippy").is_file():
            return folder
    raise StagetrainError(
        f"dataset=fortunes: the fortunes collection was not found under {root} (looked in "
        f"{', '.join(str(c) for c in candidates)}). It is one file per category (art, computers, ..., zippy) "
        f"with entries separated by '%' lines. Either set dataset.root=<folder> or STAGETRAIN_DATA to a folder "
        f"holding text/fortunes/, or install the Debian packages (apt-get install fortunes fortunes-min), "
        f"which put it in {SYSTEM_FORTUNES}.")


def corpus_files(ds: Any) -> list[Path]:
    """The files of a ``dataset=text`` corpus, in the order given (a folder: its files, sorted)."""
    paths = [ds.paths] if isinstance(ds.paths, str) else list(ds.paths or [])
    if not paths:
        raise StagetrainError("dataset=text needs dataset.paths: one or more UTF-8 text files (or folders of "
                              "them), e.g. dataset.paths=[notes.txt] or \"dataset.paths=[a.txt,b.txt]\".")
    files: list[Path] = []
    for p in map(expand, paths):
        if os.path.isdir(p):
            files += [f for f in userfile.listing(p, "dataset.paths")[1] if not f.name.startswith(".")]
        else:
            files.append(p)
    return files


def corpus_text(ds: Any) -> str:
    """The running text a language-model dataset reads: its files joined, or fortunes' entries."""
    if ds.name == "fortunes":
        texts, _ = read_folder(fortunes_folder(ds), "%", "dataset=fortunes")
        random.Random(0).shuffle(texts)  # fixed order: the held-out tail samples every category
        return "".join(t + "\n%\n" for t in texts)
    text = "".join(read_utf8(f, "dataset.paths") for f in corpus_files(ds))
    if not text:
        raise StagetrainError(f"dataset=text: the files {[str(f) for f in corpus_files(ds)]} are empty.")
    return text


def dataset_texts(ds: Any) -> list[str]:
    """Every text a dataset's tokenizer vocabulary is built from."""
    if is_lm(ds):
        return [corpus_text(ds)]
    if ds.name == "fortunes":
        return read_folder(fortunes_folder(ds), "%", "dataset=fortunes")[0]
    return read_labelled(ds)[0]


def char_vocab(texts: list[str]) -> list[str]:
    """The ``chars`` tokenizer's characters (ids 2..)."""
    return sorted(set().union(*map(set, texts)))


def vocab_size(ds: Any) -> int:
    """Token ids a text dataset gives (padding and unknown included)."""
    if ds.tokenizer == "bytes":
        return BYTE_VOCAB
    return 2 + len(char_vocab(dataset_texts(ds)))


def validate_text_dataset(ds: Any) -> None:
    """Options of the text datasets that the type schema cannot check (no file is read)."""
    check_choice("dataset.tokenizer", ds.tokenizer, ("bytes", "chars"))
    if ds.max_len < 2:
        raise StagetrainError(f"dataset.max_len={ds.max_len} is out of range: it must be >= 2 tokens.")
    if not 0 < ds.test_fraction < 1 or ds.val_fraction + ds.test_fraction >= 1:
        raise StagetrainError(f"dataset.test_fraction={ds.test_fraction} is out of range: it must be in (0, 1) "
                              f"and leave training data beside dataset.val_fraction={ds.val_fraction}.")
    lm = is_lm(ds)
    if ds.name == "fortunes":
        check_choice("dataset.task", ds.task, ("classification", "lm"))
    if ds.name == "text_classification":
        check_choice("dataset.format", ds.format, ("auto", "jsonl", "csv", "folder"))
        if not ds.path:
            raise StagetrainError("dataset=text_classification needs dataset.path: a JSONL or CSV file with "
                                  "'text' and 'label' fields, or a folder with one file per class.")
    if lm and (ds.classes is not None or ds.labeled_fraction < 1):
        raise StagetrainError(
            f"dataset={ds.name}{' dataset.task=lm' if ds.name == 'fortunes' else ''} is language modelling: its "
            "targets are the next tokens, so dataset.classes and dataset.labeled_fraction do not apply. Use "
            "dataset=fortunes (category labels) or dataset=text_classification for labelled texts.")


def is_lm(ds: Any) -> bool:
    """True for the text datasets that give next-token targets (causal language modelling)."""
    return ds.name == "text" or (ds.name == "fortunes" and getattr(ds, "task", "") == "lm")
