"""Tokenizers of the text datasets: ``bytes`` (UTF-8 bytes, no vocabulary to build),
``chars`` (the dataset's characters), ``bpe`` (a byte-level BPE that the ``tokenizers``
library trains on the training text only) and ``hf`` (a local ``transformers`` tokenizer
folder). Id 0 is padding for bytes, chars and bpe (``textfiles`` says how ids are
numbered); ``hf`` keeps the folder's ids. ``encode`` gives an int64 tensor, ``decode`` the
text back, ``describe`` what run.json records (for bpe: the tokenizer itself, as JSON, so a
run can be rebuilt exactly; training is deterministic, so resume rebuilds the same one)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch

from stagetrain.textfiles import (
    BPE_PAD_TOKEN,
    BYTE_VOCAB,
    PAD,
    UNKNOWN,
    char_vocab,
    hf_tokenizer,
    recorded_bpe,
)


@dataclass
class Tokenizer:
    kind: str  # bytes | chars | bpe | hf
    chars: list[str] = field(default_factory=list)  # chars: the character of id 2 + i
    impl: Any = None  # bpe: a tokenizers.Tokenizer; hf: a transformers tokenizer
    size: int = 0  # bpe: dataset.vocab_size + 1 (padding); hf: the tokenizer's ids
    source: str = ""  # hf: the folder; bpe: the run it was reused from

    @classmethod
    def build(cls, kind: str, texts: list[str], ds: Any = None) -> Tokenizer:
        """``texts``: what a vocabulary is learnt from (bpe: the training text only)."""
        if kind == "bpe" and getattr(ds, "tokenizer_path", None):  # a run's BPE, reused (a fine-tune's source)
            reused = from_description(recorded_bpe(str(ds.tokenizer_path)))
            reused.source = str(ds.tokenizer_path)
            return reused
        if kind == "bpe":
            return cls(kind, impl=train_bpe(texts, int(ds.vocab_size)), size=int(ds.vocab_size) + 1)
        if kind == "hf":
            impl = hf_tokenizer(str(ds.tokenizer_path))
            return cls(kind, impl=impl, size=len(impl), source=str(ds.tokenizer_path))
        return cls(kind, char_vocab(texts) if kind == "chars" else [])

    @property
    def vocab_size(self) -> int:
        if self.kind in ("bpe", "hf"):
            return self.size
        return BYTE_VOCAB if self.kind == "bytes" else 2 + len(self.chars)

    def encode(self, text: str, special: bool = False) -> torch.Tensor:
        """Token ids; ``special``: with the hf tokenizer's special tokens (e.g. [CLS] ... [SEP])."""
        if self.kind == "bytes":
            raw = text.encode("utf-8")
            if not raw:
                return torch.zeros(0, dtype=torch.long)
            return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long() + 1
        if self.kind == "bpe":
            return torch.tensor(self.impl.encode(text).ids, dtype=torch.long)
        if self.kind == "hf":
            return torch.tensor(self.impl(text, add_special_tokens=special, verbose=False)["input_ids"], dtype=torch.long)
        lookup = self._lookup()
        return torch.tensor([lookup.get(c, UNKNOWN) for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        if self.kind == "hf":
            return self.impl.decode([int(i) for i in ids], skip_special_tokens=True)
        ids = [int(i) for i in ids if int(i) != PAD]
        if self.kind == "bpe":
            return self.impl.decode(ids)
        if self.kind == "bytes":
            return bytes(i - 1 for i in ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i - 2] if i >= 2 else "\ufffd" for i in ids)

    def describe(self) -> dict[str, Any]:
        """What run.json records: enough to map ids back to text (bpe: the tokenizer's JSON,
        which ``tokenizers.Tokenizer.from_str`` reads back, and its sha256)."""
        out: dict[str, Any] = {"kind": self.kind, "vocab_size": self.vocab_size, "pad_id": PAD}
        if self.kind == "bytes":
            out["ids"] = "byte b has id b + 1"
        elif self.kind == "bpe":
            text = self.impl.to_str()
            out.update(trained_tokens=self.impl.get_vocab_size(), trained_on=f"reused from {self.source}" if self.source else "the training text only",
                       sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), json=text)
        elif self.kind == "hf":
            out.update(path=self.source, pad_id=self.impl.pad_token_id, tokenizer=type(self.impl).__name__)
        else:
            out.update(unknown_id=UNKNOWN, chars="".join(self.chars))
        return out

    def _lookup(self) -> dict[str, int]:
        if getattr(self, "_ids", None) is None:
            self._ids = {c: i + 2 for i, c in enumerate(self.chars)}
        return self._ids


def train_bpe(texts: list[str], vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2's pre-tokenisation) trained on ``texts``: id 0 is padding,
    1..256 the bytes, then merges up to ``vocab_size`` tokens besides padding (fewer when
    the text runs out of pairs). Deterministic: the same texts give the same tokenizer."""
    from tokenizers import Tokenizer as Impl
    from tokenizers import decoders, models, pre_tokenizers, trainers

    impl = Impl(models.BPE())
    impl.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    impl.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size + 1, special_tokens=[BPE_PAD_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    impl.train_from_iterator(texts, trainer)
    return impl


def from_description(info: dict[str, Any]) -> Tokenizer:
    """The tokenizer a run recorded (run.json's ``data.tokenizer``): bytes, chars or bpe."""
    if info["kind"] == "bpe":
        from tokenizers import Tokenizer as Impl

        return Tokenizer("bpe", impl=Impl.from_str(info["json"]), size=int(info["vocab_size"]))
    return Tokenizer(info["kind"], list(info.get("chars", "")))


def pad_batch(seqs: list[torch.Tensor], length: int) -> torch.Tensor:
    """[N, length] int64: each sequence truncated to ``length`` tokens, then padded with 0."""
    out = torch.full((len(seqs), length), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, : len(s)] = s
    return out
