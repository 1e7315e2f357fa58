"""Text as token tensors, for the text dataset plugs: a corpus as causal language-model
windows (``lm_bundle``), labelled texts padded to a length (``classification_bundle``).

Language modelling: the corpus becomes one token stream; its last ``val_fraction`` and
``test_fraction`` are held out (by position, so no window of the training part overlaps
them) and each part is cut into non-overlapping windows of ``max_len`` tokens; a window's
targets are its tokens shifted by one (x = s[i:i+T], y = s[i+1:i+T+1]). Classification:
texts truncated or padded (id 0) to ``max_len``, labels 0..k-1 in ``textfiles.label_names``
order, a stratified seed-independent test split unless ``test_path`` is given; then
``finish_bundle`` as for images (classes, validation split, labelled fraction).

A BPE tokenizer (``dataset.tokenizer=bpe``) learns from the training text only. Language
modelling: the text itself is split first (its last ``val_fraction`` / ``test_fraction`` of
characters held out, the same positions whatever the tokenizer learns), the BPE is trained on
the training part and each part is tokenised on its own; ``bytes_per_token`` (what bits per
byte divide by) is the validation part's. Classification: the BPE learns from the training
examples that remain after the test and (seeded) validation splits are drawn.
"""

from __future__ import annotations

from typing import Any

import torch

from stagetrain.core.errors import StagetrainError
from stagetrain.data.bundle import DataBundle, Split
from stagetrain.data.finish import channel_stats, finish_bundle
from stagetrain.data.tokenizer import Tokenizer, pad_batch
from stagetrain.textfiles import held_out_counts, label_names, part_sizes


def windows(stream: torch.Tensor, length: int) -> Split:
    """Non-overlapping windows of ``length`` tokens and their next-token targets."""
    n = max(0, (len(stream) - 1) // length)
    return Split(stream[: n * length].view(n, length), stream[1: n * length + 1].view(n, length))


def _encode(tok: Tokenizer, text: str, ds: Any) -> torch.Tensor:
    try:
        return tok.encode(text)
    except MemoryError:
        raise StagetrainError(
            f"dataset={ds.name}: the corpus ({len(text):,} characters) does not fit in the memory this process may "
            "use as token ids (8 bytes a token, so about 8 times the text). Give less text, or run with more "
            "memory (a higher ulimit -v).") from None


def lm_parts(ds: Any, text: str) -> tuple[Tokenizer, dict[str, torch.Tensor], float]:
    """(tokenizer, the train / val / test token streams, bytes a token). bytes and chars: the
    token stream split by position; bpe and hf: the text split by characters first, the
    BPE trained on the training part, each part tokenised on its own."""
    if ds.tokenizer in ("bytes", "chars"):
        tok = Tokenizer.build(ds.tokenizer, [text], ds)
        stream = _encode(tok, text, ds)
        n_train, n_val, _ = part_sizes(len(stream), ds)
        parts = {"train": stream[:n_train], "val": stream[n_train:n_train + n_val], "test": stream[n_train + n_val:]}
        return tok, parts, len(text.encode("utf-8")) / len(stream)  # 1.0 for bytes; chars: UTF-8 bytes a char
    n_train, n_val, _ = part_sizes(len(text), ds)
    texts = {"train": text[:n_train], "val": text[n_train:n_train + n_val], "test": text[n_train + n_val:]}
    tok = Tokenizer.build(ds.tokenizer, [texts["train"]], ds)
    parts = {name: _encode(tok, part, ds) for name, part in texts.items()}
    return tok, parts, len(texts["val"].encode("utf-8")) / max(1, len(parts["val"]))


def lm_bundle(ds: Any, seed: int, text: str) -> DataBundle:
    """A corpus as language-model windows, its held-out tail as validation and test."""
    tok, parts, per_token = lm_parts(ds, text)
    stream_len = sum(len(p) for p in parts.values())
    splits = {name: windows(part, ds.max_len) for name, part in parts.items()}
    for name, split in splits.items():
        if len(split) == 0:
            raise StagetrainError(
                f"dataset={ds.name}: the text is too short: its {name} part ({len(parts[name])} of {stream_len} "
                f"tokens) holds no window of dataset.max_len={ds.max_len} tokens plus the next one. Give more text "
                "or lower dataset.max_len (or raise dataset.val_fraction / dataset.test_fraction).")
    train = splits["train"]
    if ds.max_train is not None and ds.max_train < len(train):
        keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: ds.max_train]
        train = train.subset(torch.sort(keep).values)
    info = {"task": "lm", "tokenizer": tok.describe(), "vocab_size": tok.vocab_size,
            "tokens": {name: len(part) for name, part in parts.items()},
            "bytes_per_token": per_token}
    return DataBundle(ds.name, train, splits["val"], splits["test"], torch.arange(len(train)), (ds.max_len,),
                      tok.vocab_size, torch.zeros(1), torch.ones(1), 1.0, info)


def classification_bundle(ds: Any, seed: int, texts: list[str], labels: list[str],
                          test: tuple[list[str], list[str]] | None = None) -> DataBundle:
    """Labelled texts padded to ``max_len`` tokens; the test split: ``test`` (read from
    ``dataset.test_path``) or a stratified ``test_fraction``, the same for every seed. The
    splits are drawn over example positions first, so a BPE learns from the training ones."""
    names = label_names(labels)
    index = {name: i for i, name in enumerate(names)}
    vocab_texts = texts  # bytes / chars: the training file's texts (chars: its characters)
    if test is not None:
        test_texts, test_labels = test
        unknown = sorted(set(test_labels) - set(names))
        if unknown:
            raise StagetrainError(f"dataset.test_path={ds.test_path} has labels {unknown[:5]} that dataset.path="
                                  f"{ds.path} has no training examples of (it has {names[:10]}).")
        train_pos = list(range(len(texts)))
        test_pos = list(range(len(texts), len(texts) + len(test_texts)))
        texts, labels = texts + test_texts, labels + test_labels
    else:
        train_pos, test_pos = _stratified_test(labels, ds.test_fraction)
    y = torch.tensor([index[label] for label in labels], dtype=torch.long)
    at = torch.arange(len(texts)).unsqueeze(1)  # each example's position, split in place of its tokens
    train, test = (Split(at[p], y[p]) for p in (torch.tensor(train_pos), torch.tensor(test_pos, dtype=torch.long)))
    bundle = finish_bundle(ds, seed, train, test, 1.0)
    if ds.tokenizer == "bpe":
        vocab_texts = [texts[i] for i in bundle.train.x[:, 0].tolist()]
    tok = Tokenizer.build(ds.tokenizer, vocab_texts, ds)
    _check_padding(tok, ds)
    cut = ds.max_len + 1 if ds.tokenizer in ("bytes", "chars") else None  # a token is >= 1 char: enough to cut
    seqs = [tok.encode(t[:cut], special=True) for t in texts]
    x = pad_batch(seqs, ds.max_len)
    bundle.train, bundle.val, bundle.test = (Split(x[s.x[:, 0]], s.y) for s in (bundle.train, bundle.val, bundle.test))
    bundle.in_shape = (ds.max_len,)
    bundle.mean, bundle.std = channel_stats(bundle.train, 1.0)
    kept = [names[c] for c in ds.classes] if ds.classes is not None else names
    bundle.info = {"task": "classification", "tokenizer": tok.describe(), "vocab_size": tok.vocab_size,
                   "labels": kept, "truncated": sum(len(q) > ds.max_len for q in seqs), "examples": len(seqs)}
    return bundle


def _check_padding(tok: Tokenizer, ds: Any) -> None:
    """Labelled texts are padded with id 0: an hf tokenizer must have its padding there."""
    if tok.kind == "hf" and tok.impl.pad_token_id != 0:
        zero = tok.impl.convert_ids_to_tokens(0)
        raise StagetrainError(
            f"dataset.tokenizer_path={ds.tokenizer_path}: labelled texts are padded with token id 0, but this "
            f"tokenizer's id 0 is {zero!r} and its padding id is {tok.impl.pad_token_id}. Use a tokenizer whose "
            "padding token has id 0 (BERT-style [PAD]), or dataset.tokenizer=bpe / bytes.")


def _stratified_test(labels: list[str], fraction: float) -> tuple[list[int], list[int]]:
    """Positions of the training and test examples: ``held_out_counts`` of each class, drawn
    with a fixed seed so every run (whatever its seed) tests on the same examples."""
    g = torch.Generator().manual_seed(0)
    held = held_out_counts(labels, fraction)
    test: list[int] = []
    for name, k in sorted(held.items()):
        members = [i for i, label in enumerate(labels) if label == name]
        test += [members[int(j)] for j in torch.randperm(len(members), generator=g)[:k]]
    chosen = set(test)
    return [i for i in range(len(labels)) if i not in chosen], sorted(test)
