"""Batched, jitted likelihood scoring: log p(continuation | context) as lm-evaluation-harness
computes it, and the logits at each prompt's last position (categorical chat grading).

Requests are sorted by length and padded to length buckets (multiples of 64 up to the model's
context), so scoring compiles a handful of shapes, never one per example. A context +
continuation longer than the model's context is cut from the left (the continuation is kept
whole), as lm-eval does.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lm import model, parallel
from lm.config import ModelConfig
from lm.losses import bpb_sums

Array = jax.Array


def length_bucket(n: int, limit: int, step: int = 64) -> int:
    return min(limit, -(-max(n, 1) // step) * step)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _token_logprobs(params, cfg: ModelConfig, tokens_BT: Array):
    """log p(tokens[t+1] | tokens[:t+1]) and whether it is the argmax, [B, T-1] each."""
    logits = model.apply(params, cfg, tokens_BT)[:, :-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tgt = tokens_BT[:, 1:]
    lp = jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return lp, jnp.argmax(logits, axis=-1) == tgt


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_logits(params, cfg: ModelConfig, tokens_BT: Array, lengths_B: Array):
    logits = model.apply(params, cfg, tokens_BT)
    return jnp.take_along_axis(logits, (lengths_B - 1)[:, None, None], axis=1)[:, 0]


def _batches(lengths: Sequence[int], batch_size: int, limit: int):
    """Index groups, longest first, of at most batch_size requests of one length bucket."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups, cur, cur_len = [], [], None
    for i in order:
        L = length_bucket(lengths[i], limit)
        if cur and (L != cur_len or len(cur) == batch_size):
            groups.append((cur, cur_len))
            cur = []
        if not cur:
            cur_len = L
        cur.append(i)
    if cur:
        groups.append((cur, cur_len))
    return groups


def on_mesh(params, mesh):
    """Parameters replicated over `mesh` and a function placing [B, ...] batches row-sharded on
    it (scoring then runs data-parallel, like training); without a mesh, both are the identity."""
    if mesh is None:
        return params, jnp.asarray
    params = jax.device_put(params, parallel.replicated(mesh))
    sh = parallel.batch_sharding(mesh)
    return params, lambda x: jax.device_put(np.asarray(x), sh)


def loglikelihood(params, cfg: ModelConfig, requests: Sequence[tuple[list[int], list[int]]], *,
                  batch_size: int = 32, progress: Optional[Callable[[int], None]] = None,
                  mesh=None) -> list[tuple[float, bool]]:
    """(sum of log p(continuation tokens), all of them greedy) per (context ids, continuation ids)
    request. The context must be non-empty (start documents with BOS / endoftext). With `mesh`,
    batches are split over its devices (batch_size must divide evenly)."""
    params, put = on_mesh(params, mesh)
    limit = cfg.block_size
    seqs, starts = [], []
    for ctx, cont in requests:
        if not cont:
            raise ValueError("loglikelihood: empty continuation")
        if not ctx:
            raise ValueError("loglikelihood: empty context (start with BOS)")
        full = (list(ctx) + list(cont))[-(limit + 1):]    # lm-eval: keep the continuation
        seqs.append(full)
        starts.append(len(full) - len(cont))             # index of the first continuation token
    out: list[Optional[tuple[float, bool]]] = [None] * len(seqs)
    # the model reads tokens[:-1]; pad to bucket + 1
    for idx, L in _batches([len(s) - 1 for s in seqs], batch_size, limit):
        toks = np.zeros((batch_size, L + 1), np.int32)
        for r, i in enumerate(idx):
            toks[r, :len(seqs[i])] = seqs[i]
        lp, greedy = jax.device_get(_token_logprobs(params, cfg, put(toks)))
        for r, i in enumerate(idx):
            a, b = starts[i] - 1, len(seqs[i]) - 1        # positions predicting the continuation
            out[i] = (float(lp[r, a:b].sum()), bool(greedy[r, a:b].all()))
        if progress is not None:
            progress(len(idx))
    return out  # type: ignore[return-value]


def last_logits(params, cfg: ModelConfig, prompts: Sequence[list[int]], *,
                batch_size: int = 32, columns: Optional[Sequence[int]] = None,
                mesh=None) -> np.ndarray:
    """[N, V] (or [N, len(columns)]) logits at each prompt's last token."""
    params, put = on_mesh(params, mesh)
    limit = cfg.block_size
    prompts = [list(p)[-limit:] for p in prompts]
    width = cfg.vocab_size if columns is None else len(columns)
    out = np.zeros((len(prompts), width), np.float32)
    cols = None if columns is None else np.asarray(columns)
    for idx, L in _batches([len(p) for p in prompts], batch_size, limit):
        toks = np.zeros((batch_size, L), np.int32)
        lens = np.ones((batch_size,), np.int32)
        for r, i in enumerate(idx):
            toks[r, :len(prompts[i])] = prompts[i]
            lens[r] = len(prompts[i])
        logits = np.asarray(_last_logits(params, cfg, put(toks), put(lens)))
        for r, i in enumerate(idx):
            out[i] = logits[r] if cols is None else logits[r, cols]
    return out


def text_nats(params, cfg: ModelConfig, stream: np.ndarray, token_bytes: np.ndarray, *,
              batch_size: int = 16, mesh=None) -> tuple[float, float, int]:
    """(sum of nats, sum of bytes, tokens) of a token stream scored in non-overlapping windows of
    the model's context (each window's first token is context only); special-token targets are
    left out (`lm.losses.bpb_sums`)."""
    params, put = on_mesh(params, mesh)
    T = cfg.block_size
    n_win = max(1, (len(stream) - 1) // T)
    tb = np.asarray(token_bytes)
    nats = nbytes = count = 0.0
    for b in range(0, n_win, batch_size):
        toks = np.zeros((batch_size, T + 1), np.int32)
        valid = np.zeros((batch_size, T), np.float32)
        for r, w in enumerate(range(b, min(b + batch_size, n_win))):
            piece = np.asarray(stream[w * T:w * T + T + 1], np.int32)
            toks[r, :len(piece)] = piece
            valid[r, :len(piece) - 1] = 1
        lp, _ = jax.device_get(_token_logprobs(params, cfg, put(toks)))
        a, c, k = bpb_sums(-np.asarray(lp, np.float64), toks[:, 1:], tb, valid)
        nats, nbytes, count = nats + float(a), nbytes + float(c), count + int(k)
    return nats, nbytes, int(count)
