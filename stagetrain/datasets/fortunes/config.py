"""``dataset=fortunes``: the Debian fortunes collection, by category or as one text (torch-free part)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.datasets.text_classification.config import Config as TextClassificationConfig
from stagetrain.textfiles import (
    expand,
    labelled_meta,
    lm_meta,
    read_folder,
    token_vocab,
    validate_text_dataset,
)

FOLDERS = ("text/fortunes", "fortunes")  # under dataset.root
SYSTEM_FORTUNES = "/usr/share/games/fortunes"  # the Debian package `fortunes`


@dataclass
class Config(TextClassificationConfig):
    """Category classification, or (task=lm) its entries as one text."""

    name: str = "fortunes"
    task: str = "classification"  # classification | lm


def inputs(ds: Any) -> str:
    return "tokens"


def task(ds: Any) -> str:
    return ds.task


def validate(ds: Any) -> None:
    check_choice("dataset.task", ds.task, ("classification", "lm"))
    validate_text_dataset(ds, lm=ds.task == "lm")


def folder(ds: Any) -> Path:
    """Where the collection is: under dataset.root (STAGETRAIN_DATA), or the Debian package's."""
    root = expand(ds.root)
    candidates = [root / sub for sub in FOLDERS] + [root, Path(SYSTEM_FORTUNES)]
    for found in candidates:
        if (found / "art").is_file() and (found / "zippy").is_file():
            return found
    raise StagetrainError(
        f"dataset=fortunes: the fortunes collection was not found under {root} (looked in "
        f"{', '.join(str(c) for c in candidates)}). It is one file per category (art, computers, ..., zippy) "
        f"with entries separated by '%' lines. Either set dataset.root=<folder> or STAGETRAIN_DATA to a folder "
        f"holding text/fortunes/, or install the Debian packages (apt-get install fortunes fortunes-min), "
        f"which put it in {SYSTEM_FORTUNES}.")


def labelled(ds: Any) -> tuple[list[str], list[str]]:
    return read_folder(folder(ds), "%", "dataset=fortunes")


def corpus(ds: Any) -> str:
    """task=lm: every entry, in a fixed shuffled order (so the held-out tail samples every category)."""
    texts, _ = labelled(ds)
    random.Random(0).shuffle(texts)
    return "".join(t + "\n%\n" for t in texts)


def vocab_size(ds: Any) -> int:
    return token_vocab(ds.tokenizer, lambda: [corpus(ds)] if ds.task == "lm" else labelled(ds)[0], ds)


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    if ds.task == "lm":
        text = corpus(ds)  # read once: its length and (chars) its vocabulary
        return lm_meta(ds, text, token_vocab(ds.tokenizer, lambda: [text], ds))
    return labelled_meta(ds, labelled(ds)[1], own_test=False)
