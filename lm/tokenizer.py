"""Tokenizers behind one interface: character-level (nanoGPT's shakespeare_char) and byte-level BPE.

Every stage (data shards, training, evaluation, sampling, chat) talks to a `Tokenizer`:
`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, and `token_bytes()` (UTF-8 byte
length of each id, used for bits-per-byte so losses compare across tokenizers).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of `lm` needs from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: bytes each id decodes to (0 for special tokens)."""
        ...

    def save(self, path: str) -> None: ...


class CharTokenizer:
    """One id per distinct character of the training text, sorted (nanoGPT's shakespeare_char)."""

    kind = "char"

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: characters must be distinct")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharTokenizer: character {e.args[0]!r} is not in the vocabulary "
                             f"({self.vocab_size} characters)") from None

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for whole corpora: a lookup table over code points."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(max(max(map(ord, self.chars)), int(codes.max(initial=0))) + 1, -1, np.int32)
        for i, c in enumerate(self.chars):
            table[ord(c)] = i
        ids = table[codes]
        if (ids < 0).any():
            bad = chr(int(codes[np.argmax(ids < 0)]))
            raise ValueError(f"CharTokenizer: character {bad!r} is not in the vocabulary")
        return ids.astype(np.uint16 if self.vocab_size < 2**16 else np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars], np.int32)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"kind": self.kind, "version": 1, "chars": self.chars}, f, ensure_ascii=False)


def load_tokenizer(path: str) -> Tokenizer:
    """Load any tokenizer artifact written by `save` (dispatches on its `kind`)."""
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    raise ValueError(f"load_tokenizer: {path}: unknown tokenizer kind {kind!r} (known: 'char')")
