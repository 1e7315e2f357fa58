"""Reading text data without torch, for the text dataset plugs: UTF-8 files, entries split
by a delimiter line, labelled examples from JSONL / CSV / a folder of class files, the
options every text dataset has, sizes without tokenising, and the vocabulary a tokenizer gives.

The config layer reads vocabulary sizes here (``model.vocab_size`` follows the data), so
this module imports no torch; ``stagetrain.data.text`` turns what it reads into tensors.
Token id 0 is padding for every tokenizer: ``bytes`` maps byte b to b + 1 (257 ids);
``chars`` maps 1 to characters outside the vocabulary and 2.. to the distinct characters
of the text, in code-point order; ``bpe`` (byte-level BPE, ``data.tokenizer``) maps 1..256
to the bytes and 257.. to merges learnt from the training text, ``dataset.vocab_size`` ids
besides padding, known without training; ``hf`` keeps a local tokenizer folder's ids
(``len(tokenizer)`` of them; the folder's padding id, which must be 0 for labelled texts).
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.texttables import label_name, read_table  # noqa: F401 - label_name: part of this module's API

PAD, UNKNOWN = 0, 1
BYTE_VOCAB = 257
BPE_PAD_TOKEN = "<pad>"  # bpe: the special token of id 0
TOKENIZERS = ("bytes", "chars", "bpe", "hf")
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


def part_sizes(tokens: int, ds: Any) -> tuple[int, int, int]:
    """Tokens of a language model's training, validation and test parts (the held-out tail)."""
    n_val, n_test = round(ds.val_fraction * tokens), round(ds.test_fraction * tokens)
    return tokens - n_val - n_test, n_val, n_test


def lm_meta(ds: Any, text: str, vocab: int) -> tuple[tuple[int, ...], int, int]:
    """(input shape, classes = the vocabulary, training windows) of a corpus, without tokenising."""
    tokens = len(text) if ds.tokenizer == "chars" else len(text.encode("utf-8"))  # bpe, hf: an upper bound
    return (ds.max_len,), vocab, max(0, (part_sizes(tokens, ds)[0] - 1) // ds.max_len)


def labelled_meta(ds: Any, labels: list[str], own_test: bool) -> tuple[tuple[int, ...], int, int]:
    """(input shape, classes, examples outside the test split) of labelled texts."""
    held = 0 if own_test else sum(held_out_counts(labels, ds.test_fraction).values())
    return (ds.max_len,), len(set(labels)), len(labels) - held


def char_vocab(texts: list[str]) -> list[str]:
    """The ``chars`` tokenizer's characters (ids 2..)."""
    return sorted(set().union(*map(set, texts)))


def token_vocab(tokenizer: str, texts: Callable[[], list[str]], ds: Any = None) -> int:
    """Token ids ``tokenizer`` gives over ``texts()`` (padding and unknown included); bpe
    and hf read their size from ``ds`` (no training, no text read)."""
    if tokenizer == "bytes":
        return BYTE_VOCAB
    if tokenizer == "bpe":
        path = getattr(ds, "tokenizer_path", None)
        return int(recorded_bpe(str(path))["vocab_size"]) if path else int(ds.vocab_size) + 1
    if tokenizer == "hf":
        return len(hf_tokenizer(str(ds.tokenizer_path)))
    return 2 + len(char_vocab(texts()))


@functools.lru_cache(maxsize=4)
def recorded_bpe(path: str) -> dict[str, Any]:
    """The BPE a run trained (``run.json``'s ``data.tokenizer``), for ``dataset.tokenizer=bpe
    dataset.tokenizer_path=<run directory>``: a fine-tune reuses its source's vocabulary."""
    key = "dataset.tokenizer_path"
    found = expand(path)
    found = found / "run.json" if found.is_dir() else found
    try:
        if not found.exists():
            raise KeyError(found)
        info = json.loads(userfile.read_text(found, key, "record"))
        tok = info["data"]["tokenizer"]
        if tok.get("kind") == "bpe" and isinstance(tok.get("json"), str) and int(tok["vocab_size"]) > 257:
            return tok
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    raise StagetrainError(f"{key}={path} with dataset.tokenizer=bpe names the run whose BPE to reuse, but {found} "
                          "records none (run.json's data.tokenizer must be a bpe one). Give the directory of a run "
                          "trained with dataset.tokenizer=bpe, or leave dataset.tokenizer_path unset to train one.")


@functools.lru_cache(maxsize=4)
def hf_tokenizer(path: str) -> Any:
    """``transformers.AutoTokenizer`` of a local folder (``dataset.tokenizer_path``): no
    download, no code from the folder; each file passes the file gate first."""
    key = "dataset.tokenizer_path"
    folder = expand(path)
    files = userfile.listing(folder, key)[1]
    for f in files:
        userfile.check_file(f, key, "data")
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise StagetrainError(f"{key}={path} needs the transformers package: pip install 'stagetrain[hf]'.") from None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - transformers raises OSError, ValueError, KeyError, ... for a bad folder
        raise StagetrainError(
            f"{key}={path}: transformers cannot read a tokenizer there ({type(e).__name__}: {str(e)[:300]}). The "
            "folder must hold what tokenizer.save_pretrained writes (tokenizer.json or vocab files, "
            f"tokenizer_config.json); it has {[f.name for f in files][:10]}.") from None


def validate_text_dataset(ds: Any, lm: bool) -> None:
    """Options every text dataset has that the type schema cannot check (no file is read)."""
    check_tokenizer(ds)
    if ds.max_len < 2:
        raise StagetrainError(f"dataset.max_len={ds.max_len} is out of range: it must be >= 2 tokens.")
    if not 0 < ds.test_fraction < 1 or ds.val_fraction + ds.test_fraction >= 1:
        raise StagetrainError(f"dataset.test_fraction={ds.test_fraction} is out of range: it must be in (0, 1) "
                              f"and leave training data beside dataset.val_fraction={ds.val_fraction}.")
    if lm and (ds.classes is not None or ds.labeled_fraction < 1):
        task = " dataset.task=lm" if hasattr(ds, "task") else ""
        raise StagetrainError(
            f"dataset={ds.name}{task} is language modelling: its targets are the next tokens, so dataset.classes "
            "and dataset.labeled_fraction do not apply. Use labelled texts (e.g. dataset=fortunes or "
            "dataset=text_classification) for classes.")


def check_tokenizer(ds: Any) -> None:
    """dataset.tokenizer and the options only some tokenizers have (vocab_size: bpe; tokenizer_path: hf,
    or bpe reusing a run's)."""
    check_choice("dataset.tokenizer", ds.tokenizer, TOKENIZERS)
    size, path = getattr(ds, "vocab_size", None), getattr(ds, "tokenizer_path", None)
    if ds.tokenizer == "bpe" and path:
        have = int(recorded_bpe(str(path))["vocab_size"]) - 1
        if size is not None and size != have:
            raise StagetrainError(f"dataset.vocab_size={size} differs from the {have} of the BPE that "
                                  f"dataset.tokenizer_path={path} recorded. Leave dataset.vocab_size unset to follow it.")
        return
    if ds.tokenizer == "bpe" and (size is None or size < 257):
        raise StagetrainError(
            f"dataset.tokenizer=bpe needs dataset.vocab_size >= 257 (it is {size}): the BPE's token ids besides "
            "padding, 256 of them the bytes and the rest merges learnt from the training text, e.g. "
            "dataset.vocab_size=1024.")
    if ds.tokenizer != "bpe" and size is not None:
        raise StagetrainError(f"dataset.vocab_size={size} applies to dataset.tokenizer=bpe only (the vocabulary "
                              f"of dataset.tokenizer={ds.tokenizer} follows from it). Remove it or use bpe.")
    if ds.tokenizer == "hf" and not path:
        raise StagetrainError("dataset.tokenizer=hf needs dataset.tokenizer_path: a local folder that "
                              "tokenizer.save_pretrained wrote (tokenizer.json, tokenizer_config.json, ...).")
    if ds.tokenizer not in ("hf", "bpe") and path:
        raise StagetrainError(f"dataset.tokenizer_path={path} applies to dataset.tokenizer=hf (a tokenizer folder) "
                              f"and bpe (a run whose BPE to reuse) only; it is {ds.tokenizer}. Remove it.")
