"""Tokenized, shuffled shards that `lm.data.pipeline` reads directly (`data.source=shards`).

Two datatrove blocks, so tokenization scales out with the rest of the run and stays resumable:

- `TokenizeDocs` (one task per rank of the output stage, after PII): encodes each document as
  `[bos] + ids` and writes `tokens/<rank>.npy` (the documents back to back) and
  `tokens/<rank>.lens.npy` (tokens per document, BOS included), plus the documents' ids.
- `ShardWriter` (one task): a seeded permutation of *all* documents of the run, written as shards of
  about `shard_tokens` tokens (`shard_00000.npy`, ... uint16 when the vocabulary fits, else uint32)
  and `index.json` (tokenizer, dtype, bos id, seed, docs and tokens per shard). Files are written
  under a temporary name and renamed, so a crash never leaves a half shard behind.

The trainer reads them with
`DataConfig(source="shards", shards="<out>/shards/*.npy", tokenizer=<index.json "tokenizer">,
segment_on_bos=True)`: `load_token_splits` concatenates the shards in sorted order, every document
starts with BOS, and `segment_on_bos` keeps attention inside documents.
"""
from __future__ import annotations

import glob
import json
import os
from typing import Optional

import numpy as np
from datatrove.pipeline.base import PipelineStep

from lm.config import DataConfig
from lm.data.shards import INDEX, read_index, token_dtype  # noqa: F401
from lm.data.shards import save_atomic as _save_atomic
from lm.data.shards import write_json_atomic as _write_json_atomic
from lm.tokenizer import load_tokenizer, named_tokenizer

_TOKENIZERS: dict = {}


def build_tokenizer(spec: str):
    """'gpt2', a saved tokenizer name, or a tokenizer artifact path (what DataConfig.tokenizer takes).
    Cached per process: a worker running several tasks loads it once."""

    key = (spec, os.environ.get("LM_DATA_DIR"))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = load_tokenizer(spec) if os.path.exists(spec) else named_tokenizer(spec)
    return _TOKENIZERS[key]


class TokenizeDocs(PipelineStep):
    """Encodes documents as [bos] + ids into tokens/<rank>.npy; passes the documents on."""

    type = "🔢 - TOKENIZER"
    name = "🔢 Tokenize for lm shards"

    def __init__(self, output_dir: str, tokenizer: str = "gpt2", batch_docs: int = 256):
        super().__init__()
        self.output_dir = output_dir
        self.tokenizer = tokenizer
        self.batch_docs = batch_docs

    def run(self, data, rank: int = 0, world_size: int = 1):
        tok = build_tokenizer(self.tokenizer)
        dtype = token_dtype(tok.vocab_size)
        chunks, lens, ids, batch = [], [], [], []

        def flush():
            with self.track_time("batch"):
                for doc, toks in zip(batch, tok.encode_batch([d.text for d in batch], prepend_bos=True)):
                    chunks.append(np.asarray(toks, dtype=dtype))
                    lens.append(len(toks))
                    ids.append(doc.id)
                    self.stat_update("tokens", value=len(toks))
            batch.clear()

        for doc in data:
            self.stat_update("documents")
            batch.append(doc)
            if len(batch) >= self.batch_docs:
                flush()
            yield doc
        if batch:
            flush()
        os.makedirs(self.output_dir, exist_ok=True)
        base = os.path.join(self.output_dir, f"{rank:05d}")
        _save_atomic(base + ".lens.npy", np.asarray(lens, dtype=np.int64))
        with open(base + ".ids.json.tmp", "w", encoding="utf-8") as f:
            json.dump(ids, f)
        os.replace(base + ".ids.json.tmp", base + ".ids.json")
        _save_atomic(base + ".npy", np.concatenate(chunks) if chunks else np.zeros(0, dtype))


class ShardWriter(PipelineStep):
    """Shuffles all documents of the run (seeded) and writes token shards + index.json."""

    type = "💽 - WRITER"
    name = "🧱 lm token shards"

    def __init__(self, tokens_dir: str, output_dir: str, tokenizer: str = "gpt2", seed: int = 0,
                 shard_tokens: int = 1 << 24, world_size: Optional[int] = None):
        super().__init__()
        self.tokens_dir, self.output_dir = tokens_dir, output_dir
        self.tokenizer, self.seed, self.shard_tokens = tokenizer, seed, shard_tokens
        self.token_world_size = world_size

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if data:
            yield from data
        tok = build_tokenizer(self.tokenizer)
        dtype = token_dtype(tok.vocab_size)
        ranks = sorted(int(os.path.basename(p)[:5]) for p in glob.glob(
            os.path.join(self.tokens_dir, "[0-9][0-9][0-9][0-9][0-9].lens.npy")))
        if self.token_world_size is not None and len(ranks) != self.token_world_size:
            raise RuntimeError(f"expected token files of {self.token_world_size} ranks in "
                               f"{self.tokens_dir}, found {len(ranks)}")
        streams, starts, lens = [], [], []
        for r in ranks:
            base = os.path.join(self.tokens_dir, f"{r:05d}")
            s = np.load(base + ".npy", mmap_mode="r")
            ln = np.load(base + ".lens.npy")
            streams.append(s)
            starts.append(np.concatenate([[0], np.cumsum(ln)[:-1]]).astype(np.int64))
            lens.append(ln)
        which = np.concatenate([np.full(len(ln), i, np.int64) for i, ln in enumerate(lens)]) \
            if lens else np.zeros(0, np.int64)
        start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
        length = np.concatenate(lens) if lens else np.zeros(0, np.int64)
        order = np.random.default_rng(self.seed).permutation(len(length))

        os.makedirs(self.output_dir, exist_ok=True)
        for old in glob.glob(os.path.join(self.output_dir, "shard_*.npy")):
            os.remove(old)  # a rerun rewrites every shard
        shards, buf, buf_tokens = [], [], 0

        def write():
            nonlocal buf, buf_tokens
            name = f"shard_{len(shards):05d}.npy"
            arr = np.concatenate(buf).astype(dtype, copy=False)
            _save_atomic(os.path.join(self.output_dir, name), arr)
            shards.append({"file": name, "docs": len(buf), "tokens": int(arr.size)})
            self.stat_update("shards")
            buf, buf_tokens = [], 0

        with self.track_time():
            for d in order:
                i, o, n = which[d], start[d], length[d]
                buf.append(np.asarray(streams[i][o:o + n]))
                buf_tokens += int(n)
                self.stat_update("documents")
                self.stat_update("tokens", value=int(n))
                if buf_tokens >= self.shard_tokens:
                    write()
            if buf:
                write()
        index = {
            "format": "lm-token-shards/1",
            "tokenizer": self.tokenizer,
            "vocab_size": int(tok.vocab_size),
            "bos_id": int(tok.bos_id),
            "dtype": np.dtype(dtype).name,
            "seed": self.seed,
            "documents": int(len(length)),
            "tokens": int(length.sum()) if len(length) else 0,
            "shards": shards,
            "layout": "each document is [bos] + tokens; documents shuffled across the whole run",
        }
        _write_json_atomic(os.path.join(self.output_dir, INDEX), index)


def data_config(shards_dir: str, **overrides):
    """The trainer's DataConfig for these shards."""

    idx = read_index(shards_dir)
    return DataConfig(source="shards", shards=os.path.join(shards_dir, "shard_*.npy"),
                      tokenizer=idx["tokenizer"], segment_on_bos=True, **overrides)


def iter_documents(shards_dir: str, bos_id: int):
    """Token arrays of the documents in shard order (splitting each shard at BOS)."""
    idx = read_index(shards_dir)
    for sh in idx["shards"]:
        arr = np.load(os.path.join(shards_dir, sh["file"]), mmap_mode="r")
        cuts = np.flatnonzero(np.asarray(arr) == bos_id).tolist() + [len(arr)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            yield np.asarray(arr[a:b])
