"""Text source → token ids → fixed-length batches, through grain; deterministic and resumable.

A token stream (1-D array of ids) is split into train/val (first `train_split` for training, as
nanoGPT). Batches are drawn from a `grain.MapDataset` of windows: window `i` starts at an offset
derived from (seed, i) (random, like nanoGPT's get_batch) or at i·seq_len (sequential). Because
the dataset is random access, the iterator's whole state is the index of the next batch, which
is saved in checkpoints so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import grain
import numpy as np

from lm.config import DataConfig
from lm.data import sources
from lm.tokenizer import CharTokenizer, Tokenizer, load_tokenizer, named_tokenizer


# ---- sources: name -> text loader ------------------------------------------------------------

def _read_text(name: str) -> Callable[[], str]:
    def load() -> str:
        with open(sources.fetch(name), encoding="utf-8") as f:
            return f.read()
    return load


TEXT_SOURCES: dict[str, Callable[[], str]] = {
    "tinyshakespeare": _read_text("tinyshakespeare"),
}


def load_text(name: str) -> str:
    if name not in TEXT_SOURCES:
        raise ValueError(f"data.source: unknown text source {name!r}; known: "
                         f"{sorted(TEXT_SOURCES) + ['shards']}")
    return TEXT_SOURCES[name]()


def _train_split_bpe(cfg: DataConfig, vocab: int, text: str) -> Tokenizer:
    """A BPE trained on the training split of the source, cached under tokenizer_dir()."""
    from lm.tokenizer import tokenizer_path, train_bpe
    name = f"{cfg.source}_train_bpe{vocab}"
    path = tokenizer_path(name)
    if os.path.exists(path):
        return load_tokenizer(path)
    train_text = text[:int(len(text) * cfg.train_split)]   # never the validation text
    docs = [d for d in train_text.split("\n\n") if d]
    tok = train_bpe(docs, vocab)
    tok.save(path)
    print(f"trained a {vocab}-token BPE on {len(train_text):,} characters of {cfg.source} "
          f"(train split) -> {path}")
    return tok


def build_tokenizer(cfg: DataConfig, text: Optional[str] = None) -> Tokenizer:
    """'char' (vocabulary = the characters of the whole text, as nanoGPT); 'bpe:N' (a BPE of N
    tokens trained on the source's training split, cached); a tokenizer name ('gpt2', or one
    saved by tools.train_tokenizer); or the path of a saved artifact."""
    if cfg.tokenizer == "char":
        if text is None:
            text = load_text(cfg.source)
        return CharTokenizer.from_text(text)
    if cfg.tokenizer.startswith("bpe:"):
        vocab = cfg.tokenizer[4:]
        if not vocab.isdigit():
            raise ValueError(f"data.tokenizer: {cfg.tokenizer!r}: expected 'bpe:<vocab size>'")
        return _train_split_bpe(cfg, int(vocab), load_text(cfg.source) if text is None else text)
    if os.path.exists(cfg.tokenizer):
        return load_tokenizer(cfg.tokenizer)
    try:
        return named_tokenizer(cfg.tokenizer)
    except KeyError as e:
        raise ValueError(f"data.tokenizer: {e.args[0]}; other choices: 'char', 'bpe:<vocab size>', "
                         f"or the path of a saved tokenizer") from None


def encode_text(tok: Tokenizer, text: str) -> np.ndarray:
    if hasattr(tok, "encode_array"):
        return tok.encode_array(text)
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    return np.asarray(tok.encode(text), dtype=dtype)


@dataclass
class TokenSplits:
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer


def load_token_splits(cfg: DataConfig) -> TokenSplits:
    """Token streams for training and validation."""
    if cfg.source == "shards":
        files = sorted(glob.glob(cfg.shards))
        if not files:
            raise FileNotFoundError(f"data.shards: no token shards match {cfg.shards!r}")
        tok = build_tokenizer(cfg, text="")
        stream = np.concatenate([np.load(f, mmap_mode="r") for f in files])
        n = int(len(stream) * cfg.train_split)
        return TokenSplits(stream[:n], stream[n:], tok)
    text = load_text(cfg.source)
    tok = build_tokenizer(cfg, text)
    n = int(len(text) * cfg.train_split)  # split the text, then encode each part (nanoGPT)
    return TokenSplits(encode_text(tok, text[:n]), encode_text(tok, text[n:]), tok)


# ---- windows and batches -----------------------------------------------------------------------

class TokenWindows(grain.sources.RandomAccessDataSource):
    """Window i of a token stream: inputs [T] and next-token targets [T]."""

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, sampling: str,
                 length: int = 2**40, bos_id: Optional[int] = None):
        if len(tokens) < seq_len + 2:
            raise ValueError(f"token stream of {len(tokens)} ids is shorter than seq_len+2 "
                             f"({seq_len + 2})")
        self.tokens, self.seq_len, self.seed = tokens, seq_len, seed
        self.sampling, self.length, self.bos_id = sampling, length, bos_id
        self.n_starts = len(tokens) - seq_len - 1

    def __len__(self) -> int:
        return self.length

    def offset(self, i: int) -> int:
        if self.sampling == "sequential":
            return (i * self.seq_len) % self.n_starts
        return int(np.random.default_rng((self.seed, i)).integers(0, self.n_starts))

    def __getitem__(self, i: int) -> dict:
        o = self.offset(int(i))
        chunk = np.asarray(self.tokens[o:o + self.seq_len + 1], dtype=np.int32)
        out = {"inputs": chunk[:-1], "targets": chunk[1:]}
        if self.bos_id is not None:
            # Documents start at BOS; a BOS target ends the previous document, so it stays
            # in the previous segment (and is still predicted).
            out["segment_ids"] = np.cumsum(chunk[:-1] == self.bos_id).astype(np.int32)
        return out


class BatchIterator:
    """Iterator over global batches (dicts of numpy arrays) with checkpointable position."""

    def __init__(self, windows: TokenWindows, batch_size: int, start: int = 0):
        self.dataset = grain.MapDataset.source(windows).batch(batch_size, drop_remainder=True)
        self.index = start

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        batch = self.dataset[self.index]
        self.index += 1
        return batch

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])


def make_iterators(cfg: DataConfig, splits: TokenSplits, *, eval_batches: int,
                   bos_id: Optional[int] = None) -> tuple[BatchIterator, Callable[[], Iterator]]:
    """(train iterator, a function returning a fresh iterator over the fixed validation batches)."""
    train = BatchIterator(TokenWindows(splits.train, cfg.seq_len, cfg.seed, cfg.sampling,
                                       bos_id=bos_id), cfg.batch_size)
    val_windows = TokenWindows(splits.val, cfg.seq_len, cfg.seed + 1, cfg.sampling,
                               bos_id=bos_id)

    def val_iter():
        it = BatchIterator(val_windows, cfg.batch_size)
        return (next(it) for _ in range(eval_batches))
    return train, val_iter
