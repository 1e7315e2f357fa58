"""Tokenizers of the text datasets: ``bytes`` (UTF-8 bytes, no vocabulary to build) and
``chars`` (the dataset's characters). Id 0 is padding in both (``textfiles`` says why and
how ids are numbered); ``encode`` gives an int64 tensor, ``decode`` the text back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from stagetrain.textfiles import BYTE_VOCAB, PAD, UNKNOWN, char_vocab


@dataclass
class Tokenizer:
    kind: str  # bytes | chars
    chars: list[str] = field(default_factory=list)  # chars: the character of id 2 + i

    @classmethod
    def build(cls, kind: str, texts: list[str]) -> Tokenizer:
        return cls(kind, char_vocab(texts) if kind == "chars" else [])

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB if self.kind == "bytes" else 2 + len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        if self.kind == "bytes":
            raw = text.encode("utf-8")
            if not raw:
                return torch.zeros(0, dtype=torch.long)
            return torch.frombuffer(bytearray(raw), dtype=torch.uint8).long() + 1
        lookup = self._lookup()
        return torch.tensor([lookup.get(c, UNKNOWN) for c in text], dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        ids = [int(i) for i in ids if int(i) != PAD]
        if self.kind == "bytes":
            return bytes(i - 1 for i in ids).decode("utf-8", errors="replace")
        return "".join(self.chars[i - 2] if i >= 2 else "\ufffd" for i in ids)

    def describe(self) -> dict[str, Any]:
        """What run.json records: enough to map ids back to text."""
        out: dict[str, Any] = {"kind": self.kind, "vocab_size": self.vocab_size, "pad_id": PAD}
        if self.kind == "bytes":
            out["ids"] = "byte b has id b + 1"
        else:
            out.update(unknown_id=UNKNOWN, chars="".join(self.chars))
        return out

    def _lookup(self) -> dict[str, int]:
        if getattr(self, "_ids", None) is None:
            self._ids = {c: i + 2 for i, c in enumerate(self.chars)}
        return self._ids


def pad_batch(seqs: list[torch.Tensor], length: int) -> torch.Tensor:
    """[N, length] int64: each sequence truncated to ``length`` tokens, then padded with 0."""
    out = torch.full((len(seqs), length), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = s[:length]
        out[i, : len(s)] = s
    return out
