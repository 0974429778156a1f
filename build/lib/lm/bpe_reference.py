"""Byte-level BPE in plain Python: the executable specification of `lm.tokenizer`'s fast path.

This is the algorithm as the "Tokenization / Byte Pair Encoding" chapter explains it, written to be
read, not to be fast (it recounts every pair after every merge: use it on kilobytes, not megabytes).
The fast path (`rustbpe` to train, `tiktoken` to encode) must give the same merges and the same ids;
`tests/test_tokenizer.py` checks that on small corpora.

Training
  1. Cut each document to at most `max_doc_chars` characters (if given).
  2. Split each document into chunks with the split regex (GPT-4's pattern by default). Merges never
     cross a chunk boundary, so "dog." and "dog!" share the token "dog".
  3. Count how often each distinct chunk occurs; write each chunk as its UTF-8 bytes, ids 0..255.
  4. Repeat until the vocabulary has `vocab_size` tokens (the 256 bytes count):
       count every adjacent pair of ids over all chunks (weighted by the chunk's count; overlapping
       pairs count, so "aaa" holds (a, a) twice), take the most frequent pair, breaking ties by the
       smallest pair (a, b), give it the next id, and replace its occurrences in every chunk, left to
       right, without overlap. Stop early if no pair is left.

Encoding
  Split the text with the same regex. In each chunk, start from its bytes and repeatedly merge the
  adjacent pair that was learned earliest (lowest new id), all its occurrences at once, until no
  adjacent pair is a learned merge.

Decoding
  Concatenate the bytes of each id and decode as UTF-8 (invalid bytes become U+FFFD).

The reference splits with Python's `regex` module, the fast path with Rust's regex engine. For code
points that one engine's Unicode tables know and the other's do not (letters assigned very recently,
e.g. U+3D000 is a letter to `regex` 2026.11 but unassigned to Rust), `\p{L}` can differ and so can the
chunks; on assigned characters the two agree.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

import regex

Pair = tuple[int, int]


def pair_counts(words: dict[tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair occurs, over all words weighted by their counts."""
    counts: Counter = Counter()
    for word, n in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += n
    return counts


def merge(ids: tuple[int, ...] | list[int], pair: Pair, new_id: int) -> tuple[int, ...]:
    """Replace each occurrence of `pair` in `ids` by `new_id`, scanning left to right."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def train(texts: Iterable[str], vocab_size: int, pattern: str,
          max_doc_chars: int | None = None) -> dict[Pair, int]:
    """Learn merges {(a, b): new_id}, in the order learned (new ids 256, 257, ...)."""
    if vocab_size < 256:
        raise ValueError("vocab_size counts the 256 byte tokens, so it must be >= 256")
    compiled = regex.compile(pattern)
    chunk_counts: Counter = Counter()
    for text in texts:
        if max_doc_chars is not None:
            text = text[:max_doc_chars]
        chunk_counts.update(compiled.findall(text))
    words = {}
    for chunk, n in chunk_counts.items():
        word = tuple(chunk.encode("utf-8"))
        words[word] = words.get(word, 0) + n

    merges: dict[Pair, int] = {}
    for new_id in range(256, vocab_size):
        counts = pair_counts(words)
        if not counts:
            break  # every chunk is a single token: nothing left to merge
        # Most frequent pair; on a tie, the smallest pair (a, b).
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges[best] = new_id
        merged: dict[tuple[int, ...], int] = {}
        for word, n in words.items():
            w = merge(word, best, new_id)
            merged[w] = merged.get(w, 0) + n
        words = merged
    return merges


def vocab(merges: dict[Pair, int]) -> dict[int, bytes]:
    """The bytes each id stands for."""
    out = {i: bytes([i]) for i in range(256)}
    for (a, b), new_id in sorted(merges.items(), key=lambda kv: kv[1]):
        out[new_id] = out[a] + out[b]
    return out


def encode_chunk(data: bytes, merges: dict[Pair, int]) -> list[int]:
    ids = tuple(data)
    while len(ids) >= 2:
        # The adjacent pair learned earliest; pairs never learned rank last.
        pair = min(zip(ids, ids[1:]), key=lambda p: merges.get(p, float("inf")))
        if pair not in merges:
            break
        ids = merge(ids, pair, merges[pair])
    return list(ids)


def encode(text: str, merges: dict[Pair, int], pattern: str) -> list[int]:
    ids: list[int] = []
    for chunk in regex.findall(pattern, text):
        ids.extend(encode_chunk(chunk.encode("utf-8"), merges))
    return ids


def decode(ids: Iterable[int], merges: dict[Pair, int]) -> str:
    table = vocab(merges)
    return b"".join(table[i] for i in ids).decode("utf-8", errors="replace")
