"""The trainer's token-shard format, shared by the web pipeline and `tools.prepare_fineweb`.

A shard directory holds `shard_00000.npy`, ... (uint16 when the vocabulary fits, else uint32; each
document `[bos] + tokens`, back to back), optionally `val_*.npy` (held-out documents), and
`index.json` (format, tokenizer, vocab size, bos id, dtype, documents and tokens per shard). Files
are written under a temporary name and renamed, so a crash never leaves a half shard behind.

`ShardStream` reads a list of shards as one token stream without loading them (memory-mapped,
sliced across file boundaries): what `lm.data.pipeline` trains on, at any size.
"""
from __future__ import annotations

import bisect
import glob
import json
import os
from typing import Sequence

import numpy as np

INDEX = "index.json"
FORMAT = "lm-token-shards/1"


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2 ** 16 else np.uint32


def save_atomic(path: str, arr: np.ndarray) -> None:
    tmp = f"{path}.tmp{os.getpid()}.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def write_json_atomic(path: str, obj) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def write_index(out_dir: str, *, tokenizer: str, vocab_size: int, bos_id: int, shards: list[dict],
                val: Sequence[dict] = (), **extra) -> dict:
    index = {"format": FORMAT, "tokenizer": tokenizer, "vocab_size": int(vocab_size),
             "bos_id": int(bos_id), "dtype": np.dtype(token_dtype(vocab_size)).name,
             "documents": int(sum(s["docs"] for s in shards)),
             "tokens": int(sum(s["tokens"] for s in shards)), "shards": list(shards),
             "val": list(val),
             "layout": "each document is [bos] + tokens, documents back to back", **extra}
    write_json_atomic(os.path.join(out_dir, INDEX), index)
    return index


def read_index(shards_dir: str) -> dict:
    path = os.path.join(shards_dir, INDEX)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{shards_dir}: no {INDEX} (not a token-shard directory)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class _TokenArray:
    """What numpy asks of a 1-D token array: `size` and `np.asarray(x)` (reads it all)."""

    @property
    def size(self) -> int:
        return len(self)

    def __array__(self, dtype=None, copy=None):
        out = self[0:len(self)]
        return out.astype(dtype) if dtype is not None else out


class ShardStream(_TokenArray):
    """Several 1-D token arrays as one stream: len() and slicing, files memory-mapped."""

    def __init__(self, files: Sequence[str]):
        if not files:
            raise FileNotFoundError("no token shards")
        self.files = list(files)
        self.parts = [np.load(f, mmap_mode="r") for f in self.files]
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).tolist()
        self.dtype = self.parts[0].dtype

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("ShardStream supports contiguous slices only")
            out, pos = [], start
            while pos < stop:
                i = bisect.bisect_right(self.starts, pos) - 1
                lo = pos - self.starts[i]
                take = min(stop - pos, len(self.parts[i]) - lo)
                out.append(np.asarray(self.parts[i][lo:lo + take]))
                pos += take
            return np.concatenate(out) if out else np.zeros(0, self.dtype)
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            i = bisect.bisect_right(self.starts, k) - 1
            return self.parts[i][k - self.starts[i]]
        raise TypeError(f"ShardStream index must be an int or a slice, got {type(key).__name__}")


class StreamView(_TokenArray):
    """tokens[start:stop] of a stream, without copying (a train/val split of a ShardStream)."""

    def __init__(self, stream, start: int, stop: int):
        self.stream, self.start, self.stop = stream, int(start), int(stop)
        self.dtype = stream.dtype

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            k = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= k < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} tokens")
            return self.stream[self.start + k]
        if not isinstance(key, slice):
            raise TypeError(f"StreamView index must be an int or a slice, got {type(key).__name__}")
        a, b, step = key.indices(len(self))
        if step != 1:
            raise ValueError("StreamView supports contiguous slices only")
        return self.stream[self.start + a:self.start + max(a, b)]


def glob_files(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern))
