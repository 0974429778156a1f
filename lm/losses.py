"""Losses shared by pretraining, SFT and RL: masked cross-entropy, z-loss, per-token log-probs."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

Array = jax.Array


def token_logprobs(logits_BTV: Array, targets_BT: Array) -> tuple[Array, Array]:
    """(log p(target), logsumexp) per token, in float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    # Select the target logit with a one-hot mask rather than a gather: XLA fuses it into the
    # reduction, and its gradient is elementwise instead of a scatter (slow on CPU).
    hit_BTV = targets_BT[..., None] == jnp.arange(logits_BTV.shape[-1], dtype=targets_BT.dtype)
    tgt_BT = jnp.sum(jnp.where(hit_BTV, logits_BTV, 0.0), axis=-1)
    return tgt_BT - lse_BT, lse_BT


def cross_entropy(logits_BTV: Array, targets_BT: Array, weights_BT: Optional[Array] = None,
                  z_loss: float = 0.0) -> tuple[Array, dict]:
    """Mean next-token cross-entropy over tokens with weight > 0 (all tokens if no weights).

    Returns (loss to minimise, metrics) where metrics['loss'] is the plain cross-entropy and
    metrics['tokens'] the (weighted) token count, so sums can be combined across micro-batches.
    """
    logp_BT, lse_BT = token_logprobs(logits_BTV, targets_BT)
    w_BT = jnp.ones_like(logp_BT) if weights_BT is None else weights_BT.astype(jnp.float32)
    denom = jnp.maximum(w_BT.sum(), 1.0)
    ce = -(logp_BT * w_BT).sum() / denom
    total = ce
    metrics = {"loss": ce, "tokens": w_BT.sum()}
    if z_loss:
        zl = z_loss * (jnp.square(lse_BT) * w_BT).sum() / denom
        total = total + zl
        metrics["z_loss"] = zl
    return total, metrics
