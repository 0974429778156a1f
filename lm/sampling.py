"""Sampling from a trained model.

`generate_text` is the trainer's end-of-run sample. (The KV-cache engine — prefill/decode,
ragged batches, top-k/top-p, streaming, tool calls — builds on `lm.model.apply(..., cache=...)`.)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lm import model
from lm.config import ModelConfig


@functools.partial(jax.jit, static_argnames=("cfg", "top_k"))
def _next_token(params, cfg: ModelConfig, window_1T, length, key, temperature, top_k):
    logits = model.apply(params, cfg, window_1T)[0, length - 1]
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][-1]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits / jnp.maximum(temperature, 1e-6))


def generate_text(params, cfg: ModelConfig, tokenizer, prompt: str, max_new_tokens: int, *,
                  temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> str:
    """Sample a continuation of `prompt` without a cache (a fixed [1, block_size] window)."""
    ids = list(tokenizer.encode(prompt)) or [0]
    T = cfg.block_size
    key = jax.random.PRNGKey(seed)
    out = []
    for i in range(max_new_tokens):
        ctx = (ids + out)[-T:]
        window = np.zeros((1, T), np.int32)
        window[0, :len(ctx)] = ctx
        tok = _next_token(params, cfg, jnp.asarray(window), len(ctx), jax.random.fold_in(key, i),
                          temperature, top_k)
        out.append(int(tok))
    return tokenizer.decode(out)
