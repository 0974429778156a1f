"""Losses shared by pretraining, SFT and RL: masked cross-entropy, z-loss, per-token log-probs,
and bits per byte (the tokenizer-independent form of the loss)."""
from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from lm import kernels

Array = jax.Array


def token_logprobs(logits_BTV: Array, targets_BT: Array,
                   impl: kernels.Impl = "plain") -> tuple[Array, Array]:
    """(log p(target), logsumexp) per token, in float32."""
    logits_BTV = logits_BTV.astype(jnp.float32)
    lse_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
    return kernels.target_logits(logits_BTV, targets_BT, impl) - lse_BT, lse_BT


def cross_entropy(logits_BTV: Array, targets_BT: Array, weights_BT: Optional[Array] = None,
                  z_loss: float = 0.0, impl: kernels.Impl = "plain") -> tuple[Array, dict]:
    """Mean next-token cross-entropy over tokens with weight > 0 (all tokens if no weights).

    Returns (loss to minimise, metrics) where metrics['loss'] is the plain cross-entropy and
    metrics['tokens'] the (weighted) token count, so sums can be combined across micro-batches.
    """
    logp_BT, lse_BT = token_logprobs(logits_BTV, targets_BT, impl)
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


# ---- bits per byte --------------------------------------------------------------------------------

def bpb_sums(loss_nats, targets, token_bytes, mask=None):
    """(sum of nats, sum of bytes, tokens counted) over the targets that stand for bytes.

    `loss_nats`: per-token cross-entropy, same shape as `targets` (int ids). `token_bytes`:
    `tokenizer.token_bytes()` (a jnp array inside jit). Special tokens (0 bytes) count in none of
    the sums; `mask` (0/1, same shape) drops padding. Numpy or jax arrays; add the sums over
    batches and finish with `bits_per_byte_from_sums`.
    """
    nbytes = token_bytes[targets]
    keep = nbytes > 0
    if mask is not None:
        keep = keep & (mask > 0)
    return (loss_nats * keep).sum(), (nbytes * keep).sum(), keep.sum()


def bits_per_byte_from_sums(total_nats, total_bytes) -> float:
    return float(total_nats) / (math.log(2) * float(total_bytes))


def bits_per_byte(loss_nats, targets, token_bytes, mask=None) -> float:
    """Bits per UTF-8 byte of text: total loss in bits / total bytes. Unlike loss per token it
    does not depend on the tokenizer, so runs with different tokenizers compare fairly."""
    nats, nbytes, _ = bpb_sums(loss_nats, targets, token_bytes, mask)
    return bits_per_byte_from_sums(nats, nbytes)
