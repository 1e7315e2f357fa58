"""``dataset=text_classification``: labelled texts from JSONL / CSV / a folder of class files (torch-free part)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stagetrain.core.errors import StagetrainError, check_choice
from stagetrain.core.schema import DatasetConfig
from stagetrain.textfiles import labelled_meta, read_labelled, token_vocab, validate_text_dataset


@dataclass
class Config(DatasetConfig):
    """Labelled texts from JSONL / CSV (``text_field``, ``label_field``) or a folder with one
    file per class (entries separated by ``delimiter`` lines), padded/truncated to ``max_len``."""

    name: str = "text_classification"
    path: str | None = None
    test_path: str | None = None  # null: a stratified test_fraction of ``path`` (fixed seed)
    format: str = "auto"  # auto (folder / .csv / else jsonl) | jsonl | csv | folder
    text_field: str = "text"
    label_field: str = "label"
    delimiter: str = "%"
    tokenizer: str = "bytes"  # bytes | chars | bpe (trained on the training examples) | hf (a local folder)
    vocab_size: int | None = None  # tokenizer=bpe: token ids besides padding (>= 257)
    tokenizer_path: str | None = None  # tokenizer=hf: a local folder that tokenizer.save_pretrained wrote
    max_len: int = 128
    test_fraction: float = 0.2


def inputs(ds: Any) -> str:
    return "tokens"


def validate(ds: Any) -> None:
    validate_text_dataset(ds, lm=False)
    check_choice("dataset.format", ds.format, ("auto", "jsonl", "csv", "folder"))
    if not ds.path:
        raise StagetrainError("dataset=text_classification needs dataset.path: a JSONL or CSV file with "
                              "'text' and 'label' fields, or a folder with one file per class.")


def labelled(ds: Any) -> tuple[list[str], list[str]]:
    return read_labelled(ds)


def vocab_size(ds: Any) -> int:
    return token_vocab(ds.tokenizer, lambda: labelled(ds)[0], ds)


def meta(ds: Any) -> tuple[tuple[int, ...], int, int]:
    return labelled_meta(ds, labelled(ds)[1], own_test=bool(ds.test_path))
