"""``dataset=text``: causal language modelling on local UTF-8 files (torch-free part)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stagetrain.core import userfile
from stagetrain.core.errors import StagetrainError
from stagetrain.core.schema import DatasetConfig
from stagetrain.textfiles import expand, lm_meta, read_utf8, token_vocab, validate_text_dataset


@dataclass
class Config(DatasetConfig):
    """Windows of ``max_len`` tokens; the last ``val_fraction`` and ``test_fraction`` of the
    token stream are held out."""

    name: str = "text"
    paths: list[str] = field(default_factory=list)  # files (or folders of files), read in this order
    tokenizer: str = "bytes"  # bytes: 256 byte ids + padding | chars: the corpus's characters | bpe | hf
    vocab_size: int | None = None  # tokenizer=bpe: token ids besides padding (>= 257), learnt from the training text
    tokenizer_path: str | None = None  # tokenizer=hf: a local folder that tokenizer.save_pretrained wrote
    max_len: int = 128  # tokens per window
    test_fraction: float = 0.1


def inputs(ds: Any) -> str:
    return "tokens"


def task(ds: Any) -> str:
    return "lm"


def validate(ds: Any) -> None:
    validate_text_dataset(ds, lm=True)


def files(ds: Any) -> list[Path]:
    """The corpus's files, in the order given (a folder: its files, sorted)."""
    paths = [ds.paths] if isinstance(ds.paths, str) else list(ds.paths or [])
    if not paths:
        raise StagetrainError("dataset=text needs dataset.paths: one or more UTF-8 text files (or folders of "
                              "them), e.g. dataset.paths=[notes.txt] or \"dataset.paths=[a.txt,b.txt]\".")
    found: list[Path] = []
    for p in map(expand, paths):
        if os.path.isdir(p):
            found += [f for f in userfile.listing(p, "dataset.paths")[1] if not f.name.startswith(".")]
        else:
            found.append(p)
    return found


def corpus(ds: Any) -> str:
    """The running text: the files joined."""
    text = "".join(read_utf8(f, "dataset.paths") for f in files(ds))
    if not text:
        raise StagetrainError(f"dataset=text: the files {[str(f) for f in files(ds)]} are empty.")
    return text


def vocab_size(ds: Any) -> int:
    return token_vocab(ds.tokenizer, lambda: [corpus(ds)], ds)


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    text = corpus(ds)  # read once: its length and (chars) its vocabulary
    return lm_meta(ds, text, token_vocab(ds.tokenizer, lambda: [text], ds))
