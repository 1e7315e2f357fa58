"""``dataset=hf``: the memory-mapped splits as token tensors (``storage=memory``) or as
map-style readers that tokenise a row when the loader asks for it (``storage=stream``).

Both storages read through the same tokenisation (a row's text, for language modelling
followed by a newline), so they give the same batches; a streamed split's batches depend
only on the engine's seeded order, so a resumed run reads exactly what it would have.
Labels stay in memory (for language modelling: the next-token targets, one int64 a token).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.data.bundle import DataBundle, LazyInputs, Split
from stagetrain.data.finish import channel_stats, finish_bundle
from stagetrain.data.tokenizer import Tokenizer, pad_batch
from stagetrain.datasets.hf.config import (
    held_fraction,
    labels,
    lm_parts,
    lm_training_rows,
    splits,
    test_rows,
    token_counts,
    training_texts,
)
from stagetrain.textfiles import label_names


class Rows:
    """Labelled texts: row i -> its text's first ``max_len`` tokens, padded with 0."""

    def __init__(self, data: Any, fld: str, tok: Tokenizer, max_len: int):
        self.data, self.fld, self.tok, self.max_len = data.select_columns([fld]), fld, tok, max_len

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.max_len,)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.batch([i])[0]

    def batch(self, rows: list[int]) -> torch.Tensor:
        texts = self.data[rows][self.fld] if rows else []
        return pad_batch([self.tok.encode((t or "")[: self.max_len + 1]) for t in texts], self.max_len)


class Windows:
    """Language modelling: window i -> tokens ``lo + i * T + shift`` .. ``+ T`` of the split's
    stream (each row's text and a newline), tokenising only the rows it spans."""

    def __init__(self, data: Any, fld: str, tok: Tokenizer, starts: np.ndarray, lo: int, n: int, length: int):
        self.data, self.fld, self.tok = data.select_columns([fld]), fld, tok
        self.starts, self.lo, self.n, self.length = starts, lo, n, length

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.length,)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        a = self.lo + int(i) * self.length
        b = a + self.length
        r0 = int(np.searchsorted(self.starts, a, "right")) - 1
        r1 = int(np.searchsorted(self.starts, b - 1, "right")) - 1
        texts = self.data[r0:r1 + 1][self.fld]
        tokens = torch.cat([self.tok.encode((t or "") + "\n") for t in texts])
        off = int(self.starts[r0])
        return tokens[a - off:b - off]


def bundle(ds: Any, seed: int, storage: str = "memory") -> DataBundle:
    """The splits in ``storage`` (``load_data``'s choice, which also records why)."""
    parts = splits(ds)
    why = f"dataset.storage={storage}"
    if ds.label_field is not None:
        made, tok = _classification(ds, seed, parts, storage, why)
    else:
        tok = Tokenizer.build(ds.tokenizer, training_texts(ds), ds)
        made = _lm(ds, seed, parts, tok, storage, why)
    made.info.update({"tokenizer": tok.describe(), "vocab_size": tok.vocab_size,
                      "splits_given": sorted(parts), "rows": {k: len(v) for k, v in parts.items()}})
    return made


def _inputs(reader: Any, rows: list[int], storage: str, workers: int) -> torch.Tensor | LazyInputs:
    if storage == "stream":
        return LazyInputs(reader, torch.tensor(rows, dtype=torch.long), workers=workers)
    return reader.batch(rows) if rows else torch.empty(0, *reader.sample_shape, dtype=torch.long)


def _classification(ds: Any, seed: int, parts: dict[str, Any], storage: str,
                    why: str) -> tuple[DataBundle, Tokenizer]:
    """Labelled rows: the splits are drawn over row positions first (the test rows, then the
    seeded validation rows), so a BPE learns from the training rows alone; then each split's
    rows are read (in memory) or wrapped in a reader (streamed)."""
    train_names = labels(parts["train"], ds.label_field)
    names = label_names(train_names)
    index = {name: i for i, name in enumerate(names)}
    made: dict[str, Split] = {}
    held = [] if "test" in parts else test_rows(train_names, ds.test_fraction)
    kept = sorted(set(range(len(train_names))) - set(held))
    layout = {"train": ("train", kept), "test": ("test", None) if "test" in parts else ("train", held),
              "val": ("val", None)}
    for split, (source, rows) in layout.items():
        if source not in parts:
            continue
        data = parts[source]
        rows = list(range(len(data))) if rows is None else rows
        got = labels(data, ds.label_field)
        unknown = sorted({got[r] for r in rows} - set(names))
        if unknown:
            raise StagetrainError(f"dataset=hf: the {split} split has labels {unknown[:5]} that the training split "
                                  f"has no examples of (it has {names[:10]}).")
        y = torch.tensor([index[got[r]] for r in rows], dtype=torch.long)
        made[split] = Split(torch.tensor(rows, dtype=torch.long).view(-1, 1), y)  # row positions, read below
    bundle = finish_bundle(ds, seed, made["train"], made["test"], 1.0, made.get("val"))
    rows_of = {s: getattr(bundle, s).x[:, 0].tolist() for s in ("train", "val", "test")}
    texts = training_texts(ds) if ds.tokenizer != "bpe" else \
        [t or "" for t in parts["train"][rows_of["train"]][ds.text_field]] if rows_of["train"] else []
    tok = Tokenizer.build(ds.tokenizer, texts, ds)
    source = {"train": "train", "val": "val" if "val" in parts else "train", "test": "test" if "test" in parts else "train"}
    workers = int(getattr(ds, "workers", 0))
    for s, rows in rows_of.items():
        reader = Rows(parts[source[s]], ds.text_field, tok, ds.max_len)
        setattr(bundle, s, Split(_inputs(reader, rows, storage, workers), getattr(bundle, s).y))
    bundle.in_shape = (ds.max_len,)
    bundle.mean, bundle.std = channel_stats(bundle.train, 1.0)
    shown = [names[c] for c in ds.classes] if ds.classes is not None else names
    bundle.info = {"task": "classification", "labels": shown, "examples": len(train_names), "storage": storage,
                   "storage_reason": why, **({"workers": workers} if storage == "stream" else {})}
    return bundle, tok


def _stream_of(ds: Any, data: Any, tok: Tokenizer) -> tuple[torch.Tensor, np.ndarray]:
    """A split's whole token stream (the targets) and each row's first token position."""
    encoded = [tok.encode((t or "") + "\n") for t in data.data.column(ds.text_field).to_pylist()]
    counts = token_counts(ds, data) if ds.tokenizer in ("bytes", "chars") else [len(e) for e in encoded]
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
    return (torch.cat(encoded) if encoded else torch.zeros(0, dtype=torch.long)), starts


def _lm(ds: Any, seed: int, parts: dict[str, Any], tok: Tokenizer, storage: str, why: str) -> DataBundle:
    T = ds.max_len
    streams = {name: _stream_of(ds, data, tok) for name, data in parts.items()}
    n_train, n_val, _ = lm_parts(ds, len(streams["train"][0]), parts)
    held = held_fraction(ds, parts)
    if ds.tokenizer not in ("bytes", "chars") and held > 0:  # a learnt tokenizer: cut where its training text ends
        n_train = int(streams["train"][1][lm_training_rows(ds, parts)])
        n_val = 0 if "val" in parts else round((len(streams["train"][0]) - n_train) * ds.val_fraction / held)
    # split -> (source split, first token, tokens)
    layout = {"train": ("train", 0, n_train),
              "val": ("val", 0, len(streams["val"][0])) if "val" in parts else ("train", n_train, n_val),
              "test": ("test", 0, len(streams["test"][0])) if "test" in parts else
              ("train", n_train + n_val, len(streams["train"][0]) - n_train - n_val)}
    made = {}
    for split, (source, lo, size) in layout.items():
        tokens, starts = streams[source]
        n = max(0, (size - 1) // T)
        if n == 0:
            raise StagetrainError(
                f"dataset=hf: the text is too short: its {split} part ({size} tokens) holds no window of "
                f"dataset.max_len={T} tokens plus the next one. Give more text or lower dataset.max_len.")
        y = tokens[lo + 1:lo + 1 + n * T].view(n, T)
        if storage == "stream":
            x = LazyInputs(Windows(parts[source], ds.text_field, tok, starts, lo, n, T), torch.arange(n),
                           workers=int(ds.workers))
        else:
            x = tokens[lo:lo + n * T].view(n, T)
        made[split] = Split(x, y)
    train = made["train"]
    if ds.max_train is not None and ds.max_train < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: ds.max_train]
        train = train.subset(torch.sort(keep).values)
    nbytes = sum(len((t or "").encode("utf-8")) + 1 for t in parts["train"].data.column(ds.text_field).to_pylist())
    info = {"task": "lm", "tokens": {k: v[2] for k, v in layout.items()},
            "bytes_per_token": nbytes / max(1, len(streams["train"][0]))}  # val/bpb: 1.0 for bytes
    if storage == "stream":
        info["workers"] = int(ds.workers)
    return DataBundle(ds.name, train, made["val"], made["test"], torch.arange(len(train)), (T,), tok.vocab_size,
                      torch.zeros(1), torch.ones(1), 1.0, info)
