"""The GPT transformer, used only through pure functions: `init`, `apply`, `param_count`,
`flops_per_token`.

One `ModelConfig` covers GPT-2 exactly (learned positions, pre-LayerNorm with bias, GELU-tanh MLP,
tied embeddings, GPT-2 init) and the modern family (RoPE, RMSNorm, QK-norm, ReLU²/SwiGLU, GQA,
untied embeddings, no biases, logit soft-cap).

`apply(params, cfg, tokens_BT)` returns float32 logits [B, T, V]. With `cache=` (an explicit
`{'k': ..., 'v': ...}` pytree, see `lm.kvcache`: per key/value either one `[L,B,K,S,H]` array or a
tuple of L `[B,K,S,H]` arrays, returned in the same form) it also returns the updated cache, so
prefill and decode are the same function. Under a cache, a position >= S (the cache length) marks
a padding / no-op token: it writes nothing and its logits are meaningless.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from lm.config import ModelConfig
from lm.layers import MLP, Attention, Linear, Norm, attention_mask, normal

Array = jax.Array
Params = Any


def compute_dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.dtype == "bfloat16" else jnp.float32


@jax.custom_vjp
def tied_logits(x_ND: Array, wte_VD: Array) -> Array:
    """x @ wteᵀ for the tied output head, with a hand-written backward.

    XLA:CPU computes the embedding gradient dlogitsᵀ @ x by first transposing the whole
    [tokens, vocab] gradient (134 MB on the `small` config); computing (xᵀ @ dlogits)ᵀ instead
    transposes only the [D, V] result. The forward contracts wte's last axis directly: written
    as `x @ wte.T`, XLA:CPU materialises wteᵀ for a single-row matvec (every decode step).
    """
    return _x_wteT(x_ND, wte_VD)


def _x_wteT(x_ND, wte_VD):
    return jax.lax.dot_general(x_ND, wte_VD, (((1,), (1,)), ((), ())))


def _tied_fwd(x_ND, wte_VD):
    return _x_wteT(x_ND, wte_VD), (x_ND, wte_VD)


def _tied_bwd(res, g_NV):
    x_ND, wte_VD = res
    g_NV = g_NV.astype(x_ND.dtype)
    return jnp.dot(g_NV, wte_VD), jnp.dot(x_ND.T, g_NV).T.astype(wte_VD.dtype)


tied_logits.defvjp(_tied_fwd, _tied_bwd)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, mask, cache=None, deterministic=True):
        c = self.cfg
        dt = compute_dtype(c)
        out_std = c.init_std / math.sqrt(2 * c.n_layer)
        norm = lambda name: Norm(c.norm, c.norm_eps, use_bias=c.bias, name=name)
        y, new_cache = Attention(c.n_head, c.kv_heads, c.head_dim, c.bias, c.qk_norm, c.norm_eps,
                                 c.pos, c.rope_theta, out_std, c.dropout, dt, name="attn")(
            norm("ln_1")(x_BTD), positions_BT, mask, cache, deterministic)
        x_BTD = x_BTD + y
        x_BTD = x_BTD + MLP(c.mlp, c.hidden, c.bias, out_std, c.dropout, dt, name="mlp")(
            norm("ln_2")(x_BTD), deterministic)
        return x_BTD, new_cache


class Transformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, cache=None,
                 deterministic=True, head_DV=None):
        c = self.cfg
        dt = compute_dtype(c)
        B, T = tokens_BT.shape
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        wte = self.param("wte", nn.with_logical_partitioning(normal(c.init_std), ("vocab", "embed")),
                         (c.vocab_size, c.n_embd), jnp.float32)
        x_BTD = jnp.take(wte, tokens_BT, axis=0).astype(dt)
        if c.pos == "learned":
            wpe = self.param("wpe", nn.with_logical_partitioning(normal(c.init_std),
                                                                 (None, "embed")),
                             (c.block_size, c.n_embd), jnp.float32)
            # Under a cache, no-op rows carry position S (may be block_size): clip the lookup.
            emb_pos = positions_BT if cache is None else jnp.minimum(positions_BT, c.block_size - 1)
            x_BTD = x_BTD + jnp.take(wpe, emb_pos, axis=0).astype(dt)
        x_BTD = nn.Dropout(c.dropout)(x_BTD, deterministic=deterministic)

        if cache is not None:
            per_layer = isinstance(cache["k"], (tuple, list))
            S = cache["k"][0].shape[2] if per_layer else cache["k"].shape[3]
            k_pos_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
            mask = attention_mask(positions_BT, k_pos_BS)
        elif segment_ids_BT is not None:
            mask = attention_mask(positions_BT, positions_BT, segment_ids_BT, segment_ids_BT)
        else:
            mask = None  # plain causal: lets the attention kernel use its causal fast path

        block = nn.remat(Block, static_argnums=(5,)) if c.remat else Block
        # Per-layer buffers: layer i gets its own pair. A stacked [L,...] buffer goes through
        # every layer whole, and layer i updates its slice in place.
        kv = None if cache is None else (cache["k"], cache["v"])
        new_k, new_v = [], []
        for i in range(c.n_layer):
            if kv is None:
                layer_cache = None
            elif per_layer:
                layer_cache = (kv[0][i], kv[1][i], None)
            else:
                layer_cache = (*kv, i)
            x_BTD, lc = block(c, name=f"h_{i}")(x_BTD, positions_BT, mask, layer_cache,
                                                deterministic)
            if lc is not None and per_layer:
                new_k.append(lc[0])
                new_v.append(lc[1])
            elif lc is not None:
                kv = lc[:2]
        x_BTD = Norm(c.norm, c.norm_eps, use_bias=c.bias, name="ln_f")(x_BTD)
        if c.tie_embeddings and head_DV is not None:
            logits_BTV = jnp.dot(x_BTD.reshape(B * T, -1), head_DV.astype(dt)).reshape(B, T, -1)
        elif c.tie_embeddings:
            logits_BTV = tied_logits(x_BTD.reshape(B * T, -1), wte.astype(dt)).reshape(B, T, -1)
        else:
            logits_BTV = Linear(c.vocab_size, ("embed", "vocab"), use_bias=False, dtype=dt,
                                name="lm_head")(x_BTD)
        logits_BTV = logits_BTV.astype(jnp.float32)
        if c.logit_softcap > 0:
            logits_BTV = c.logit_softcap * jnp.tanh(logits_BTV / c.logit_softcap)
        if cache is not None:
            if per_layer:
                return logits_BTV, {"k": tuple(new_k), "v": tuple(new_v)}
            return logits_BTV, {"k": kv[0], "v": kv[1]}
        return logits_BTV


def init_boxed(cfg: ModelConfig, rng: Array) -> Params:
    """Parameters still wrapped in their logical-axis boxes (for sharding rules)."""
    tokens = jnp.zeros((1, min(8, cfg.block_size)), jnp.int32)
    return Transformer(cfg).init(rng, tokens)["params"]


def init(cfg: ModelConfig, rng: Array) -> Params:
    """Float32 parameter pytree."""
    return nn.unbox(init_boxed(cfg, rng))


def apply(params: Params, cfg: ModelConfig, tokens_BT: Array, *, positions_BT=None,
          segment_ids_BT=None, cache=None, dropout_rng: Optional[Array] = None,
          head_DV: Optional[Array] = None):
    """Logits [B, T, V] (float32); with `cache`, (logits, new_cache). Dropout iff `dropout_rng`.

    `head_DV`: `tied_head_DV(params)`, a [D, V] copy of the tied head, for inference only (no
    gradient flows to wte through it). XLA:CPU's batched decode matmul reads it faster than wte
    itself (see `lm.sampling.Engine`).
    """
    deterministic = dropout_rng is None or cfg.dropout == 0.0
    rngs = None if deterministic else {"dropout": dropout_rng}
    return Transformer(cfg).apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT,
                                  cache, deterministic, head_DV, rngs=rngs)


def tied_head_DV(params: Params) -> Array:
    """The tied output head as a [D, V] array (a copy of wteᵀ), for `apply(..., head_DV=)`."""
    return jnp.asarray(params["wte"]).T


def param_count(cfg: ModelConfig, *, non_embedding: bool = False) -> int:
    """Exact parameter count from the abstract init (no allocation)."""
    shapes = jax.eval_shape(lambda: init(cfg, jax.random.key(0)))
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))
    if non_embedding:
        n -= cfg.vocab_size * cfg.n_embd if cfg.tie_embeddings else 0
        n -= cfg.block_size * cfg.n_embd if cfg.pos == "learned" else 0
    return n


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (excludes lookups, norms, biases)."""
    D, H, F = cfg.n_embd, cfg.head_dim, cfg.hidden
    attn = D * (cfg.n_head + 2 * cfg.kv_heads) * H + cfg.n_head * H * D
    mlp = D * F * (3 if cfg.mlp == "swiglu" else 2)
    return cfg.n_layer * (attn + mlp) + D * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Training FLOPs per token: 6 × matmul params + causal attention (scores and values).

    Attention: per layer and token, QKᵀ and AV cost 2·2·t·D forward for a query at position t;
    averaged over a causal sequence of length T that is 2·(T+1)·D, ×3 for forward + backward.
    """
    T = seq_len or cfg.block_size
    attn = cfg.n_layer * 3 * 2 * (T + 1) * cfg.n_head * cfg.head_dim
    return 6 * matmul_params(cfg) + attn
