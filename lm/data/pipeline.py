"""Text source → token ids → fixed-length batches, through grain; deterministic and resumable.

A token stream (1-D array of ids) is split into train/val (first `train_split` for training, as
nanoGPT). Batches are drawn from a `grain.MapDataset` of windows: window `i` starts at an offset
derived from (seed, i) (random, like nanoGPT's get_batch) or at i·seq_len (sequential). Because
the dataset is random access, the iterator's whole state is the index of the next batch, which
is saved in checkpoints so a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import grain
import numpy as np

from lm import paths
from lm.config import DataConfig
from lm.conversation import render
from lm.data import sources, tfds_builders
from lm.data.corpus import CORPORA, synthetic_tokens, text_of
from lm.data.shards import ShardStream, StreamView
from lm.tokenizer import (CharTokenizer, Tokenizer, load_tokenizer, named_tokenizer,
                          tokenizer_path, train_bpe)


def load_text(name: str) -> str:
    if name not in sources.TEXT_SOURCES:
        raise ValueError(f"data.source: unknown text source {name!r}; known: "
                         f"{sorted(sources.TEXT_SOURCES) + sorted(CORPORA) + ['shards']}")
    return sources.read_text(name)


def _train_split_bpe(cfg: DataConfig, vocab: int, text: Optional[str] = None,
                     docs: Optional[list[str]] = None) -> Tokenizer:
    """A BPE trained on the training split of the source (its text's first `train_split`, or a
    corpus' training documents), cached under lm.paths.tokenizer_dir()."""
    name = f"{cfg.source}_train_bpe{vocab}"
    if docs is not None:          # a corpus: its content is in the name (a changed corpus retrains)
        name = f"{cfg.source}_{corpus_digest(docs)}_train_bpe{vocab}"
    path = tokenizer_path(name)
    if os.path.exists(path):
        return load_tokenizer(path)
    if docs is None:
        train_text = text[:int(len(text) * cfg.train_split)]   # never the validation text
        docs = [d for d in train_text.split("\n\n") if d]
    tok = train_bpe(docs, vocab)
    tok.save(path)
    print(f"trained a {vocab}-token BPE on {sum(map(len, docs)):,} characters of {cfg.source} "
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
        if cfg.tokenizer_source and cfg.tokenizer_source != cfg.source:
            known = set(CORPORA) | set(sources.TEXT_SOURCES)
            if cfg.tokenizer_source not in known:
                raise ValueError(f"data.tokenizer_source: unknown source "
                                 f"{cfg.tokenizer_source!r}; known: "
                                 f"{sorted(known)}")
            cfg, text = dataclasses.replace(cfg, source=cfg.tokenizer_source), None
        if cfg.source in CORPORA:
            return _train_split_bpe(cfg, int(vocab),
                                    docs=[text_of(d) for d in CORPORA[cfg.source]()[0]])
        return _train_split_bpe(cfg, int(vocab), load_text(cfg.source) if text is None else text)
    if os.path.exists(cfg.tokenizer):
        return load_tokenizer(cfg.tokenizer)
    try:
        return named_tokenizer(cfg.tokenizer)
    except KeyError as e:
        raise ValueError(f"data.tokenizer: {e.args[0]}; other choices: 'char', 'bpe:<vocab size>', "
                         f"or the path of a saved tokenizer") from None


@dataclass
class TokenSplits:
    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer


def load_token_splits(cfg: DataConfig, tokenizer: Optional[Tokenizer] = None) -> TokenSplits:
    """Token streams for training and validation (with `tokenizer`, e.g. a parent run's,
    instead of building one from `cfg.tokenizer`)."""
    if cfg.source == "shards":
        files = sorted(glob.glob(cfg.shards))
        if not files:
            raise FileNotFoundError(f"data.shards: no token shards match {cfg.shards!r} (make "
                                    f"them with tools.prepare_fineweb or tools.process_web)")
        tok = tokenizer or build_tokenizer(cfg, text="")
        val_files = sorted(glob.glob(cfg.val_shards)) if cfg.val_shards else []
        if cfg.val_shards and not val_files:
            raise FileNotFoundError(f"data.val_shards: no shards match {cfg.val_shards!r}")
        if cfg.reader == "tfds":
            stream, val = tfds_builders.token_shards(files, val_files)
        else:                                # memory-mapped: no copy, any size
            stream, val = ShardStream(files), (ShardStream(val_files) if val_files else None)
        if val is not None:
            return TokenSplits(stream, val, tok)
        n = int(len(stream) * cfg.train_split)
        return TokenSplits(StreamView(stream, 0, n), StreamView(stream, n, len(stream)), tok)
    if cfg.source in CORPORA:
        if cfg.reader == "tfds":
            raise ValueError(f"data.reader='tfds' reads text sources "
                             f"{sorted(sources.TEXT_SOURCES)} and token shards; the corpus "
                             f"{cfg.source!r} is read with data.reader='files'")
        return corpus_splits(cfg, tokenizer)
    if cfg.reader == "tfds":
        load_text(cfg.source)                # an unknown source: the same error as 'files'
        train, val = tfds_builders.text_splits(cfg.source, cfg.train_split)
    else:                                    # split the text, then encode each part (nanoGPT)
        text = load_text(cfg.source)
        n = int(len(text) * cfg.train_split)
        train, val = text[:n], text[n:]
    tok = tokenizer or build_tokenizer(cfg, train + val)
    return TokenSplits(tok.encode_array(train), tok.encode_array(val), tok)


def corpus_digest(docs: list) -> str:
    """A short hash of a corpus' documents (texts and conversations)."""
    h = hashlib.blake2b(digest_size=6)
    for d in docs:
        h.update((d if isinstance(d, str) else json.dumps(d, sort_keys=True)).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def tokenize_docs(tok: Tokenizer, docs: list, seed: int) -> np.ndarray:
    """Documents shuffled (seeded) and concatenated: `[bos] + encode(text)` per text, the chat
    rendering per conversation, `[bos] + synthetic_tokens(doc)` per synthetic document."""
    order = np.random.default_rng(seed).permutation(len(docs))
    texts = [docs[i] for i in order]
    bos = int(tok.bos_id)
    plain = [d for d in texts if isinstance(d, str)]
    encoded = iter(tok.encode_batch(plain))
    ordinary = tok.vocab_size - len(tok.special_tokens)
    parts = []
    for d in texts:
        if isinstance(d, str):
            parts.append([bos] + list(next(encoded)))
        elif "synthetic" in d:
            parts.append([bos] + synthetic_tokens(d, ordinary))
        else:
            parts.append(render(d, tok)[0])
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    return np.concatenate([np.asarray(p, dtype) for p in parts])


def corpus_splits(cfg: DataConfig, tokenizer: Optional[Tokenizer] = None) -> TokenSplits:
    """A named corpus (`lm.data.corpus`): its training and validation documents tokenized,
    cached by (corpus content, tokenizer, seed)."""
    tok = tokenizer or build_tokenizer(cfg)
    if tok.bos_id is None:
        raise ValueError(f"data.source={cfg.source!r} needs a BPE tokenizer with <|bos|> "
                         f"(e.g. data.tokenizer=bpe:4096)")
    meta = tok.to_dict()
    train_docs, val_docs = CORPORA[cfg.source]()
    key = hashlib.sha256(json.dumps([cfg.source, meta, cfg.seed, corpus_digest(train_docs),
                                     corpus_digest(val_docs)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:16]
    path = paths.cache_dir(f"{cfg.source}-{key}.npz")
    if os.path.exists(path):
        z = np.load(path)
        return TokenSplits(z["train"], z["val"], tok)
    train = tokenize_docs(tok, train_docs, cfg.seed)
    val = tokenize_docs(tok, val_docs, cfg.seed + 1)
    os.makedirs(paths.cache_dir(), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, train=train, val=val)
    os.replace(tmp, path)
    print(f"{cfg.source}: {len(train_docs):,} training documents -> {len(train):,} tokens, "
          f"{len(val_docs):,} validation documents -> {len(val):,} tokens (cached at {path})")
    return TokenSplits(train, val, tok)


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
