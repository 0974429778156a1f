"""Bits per byte on held-out text: tinyshakespeare's validation 10%, WikiText-2 test, and the
FineWeb-Edu sample's held-out documents (none of them in any training corpus of lm).

Documents start with BOS (for tokenizers that have one) and are scored in non-overlapping windows
of the model's context; bits per byte counts every byte of text once, so it compares across
tokenizers (char vs BPE vs GPT-2).
"""
from __future__ import annotations

import numpy as np

from lm.data import corpus, sources
from lm.eval.likelihood import text_nats
from lm.losses import bits_per_byte_from_sums

TEXTS = ("tinyshakespeare_val", "wikitext2_test", "fineweb_edu")


def documents(name: str) -> list[str]:
    if name == "tinyshakespeare_val":
        with open(sources.fetch("tinyshakespeare"), encoding="utf-8") as f:
            text = f.read()
        return [text[int(len(text) * 0.9):]]
    if name == "wikitext2_test":
        with open(sources.fetch("wikitext2_test"), encoding="utf-8") as f:
            return [f.read()]
    if name == "fineweb_edu":
        return corpus.fineweb_split()[1]
    raise KeyError(f"unknown held-out text {name!r}; known: {list(TEXTS)}")


def stream(tok, docs: list[str]) -> np.ndarray:
    head = [] if tok.bos_id is None else [tok.bos_id]
    parts = [head + list(tok.encode(d)) for d in docs]
    return np.concatenate([np.asarray(p, np.int64) for p in parts])


def run(params, cfg, tok, names=TEXTS, *, batch_size: int = 16, limit_tokens: int = 0,
        mesh=None) -> dict:
    """{text: {'bpb', 'nats_per_token', 'tokens', 'bytes'}} (or {'error'} where the tokenizer
    cannot encode the text, e.g. a char vocabulary without its characters)."""
    out = {}
    for name in names:
        try:
            s = stream(tok, documents(name))
        except ValueError as e:
            out[name] = {"error": str(e)}
            continue
        if limit_tokens:
            s = s[:limit_tokens]
        nats, nbytes, count = text_nats(params, cfg, s, tok.token_bytes(), batch_size=batch_size,
                                        mesh=mesh)
        out[name] = {"bpb": bits_per_byte_from_sums(nats, nbytes),
                     "nats_per_token": nats / max(count, 1), "tokens": count,
                     "bytes": int(nbytes)}
    return out
