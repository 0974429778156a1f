"""The GPT transformer, used only through pure functions: `init`, `apply`, `param_count`,
`flops_per_token`.

One `ModelConfig` covers GPT-2 exactly (learned positions, pre-LayerNorm with bias, GELU-tanh MLP,
tied embeddings, GPT-2 init) and the modern family (RoPE, RMSNorm, QK-norm, ReLU²/SwiGLU, GQA,
untied embeddings, no biases, logit soft-cap).

`apply(params, cfg, tokens_BT)` returns float32 logits [B, T, V]. With `cache=` (the
`{'k': (L × [B, K, S, H]), 'v': ...}` dict of `lm.kvcache.KVCache.model_cache()`) it also returns
the updated cache, so prefill and decode are the same function. Under a cache, a position >= S
(the cache length) marks a padding / no-op token: it writes nothing and its logits are meaningless.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn

from lm import kernels
from lm.config import ModelConfig
from lm.layers import Attention, Linear, MLP, attention_mask, norm, normal

Array = jax.Array
Params = Any


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD, positions_BT, mask, cache=None, deterministic=True):
        y_BTD, cache = Attention(self.cfg, name="attn")(norm(self.cfg, "ln_1")(x_BTD),
                                                        positions_BT, mask, cache, deterministic)
        x_BTD = x_BTD + y_BTD
        x_BTD = x_BTD + MLP(self.cfg, name="mlp")(norm(self.cfg, "ln_2")(x_BTD), deterministic)
        return x_BTD, cache


class Transformer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT, positions_BT=None, segment_ids_BT=None, cache=None,
                 deterministic=True, logits_at_B=None):
        c = self.cfg
        dt = c.compute_dtype
        B, T = tokens_BT.shape
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))

        wte = self.param("wte", nn.with_logical_partitioning(normal(c.init_std),
                                                             ("vocab", "embed")),
                         (c.vocab_size, c.n_embd), jnp.float32)
        x_BTD = jnp.take(wte, tokens_BT, axis=0).astype(dt)
        if c.pos == "learned":
            wpe = self.param("wpe", nn.with_logical_partitioning(normal(c.init_std),
                                                                 (None, "embed")),
                             (c.block_size, c.n_embd), jnp.float32)
            # under a cache, no-op rows carry position S (may be block_size): clip the lookup
            x_BTD = x_BTD + jnp.take(wpe, jnp.minimum(positions_BT, c.block_size - 1),
                                     axis=0).astype(dt)
        x_BTD = nn.Dropout(c.dropout)(x_BTD, deterministic=deterministic)

        if cache is not None:        # attend over every cache slot up to the query's position
            S = cache["k"][0].shape[2]
            mask = attention_mask(positions_BT, jnp.broadcast_to(jnp.arange(S), (B, S)))
        elif segment_ids_BT is not None:
            mask = attention_mask(positions_BT, positions_BT, segment_ids_BT, segment_ids_BT)
        else:
            mask = None              # plain causal: the attention kernel's causal fast path

        block = nn.remat(Block, static_argnums=(5,)) if c.remat else Block
        new_k, new_v = [], []
        for i in range(c.n_layer):
            layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
            x_BTD, layer_cache = block(c, name=f"h_{i}")(x_BTD, positions_BT, mask, layer_cache,
                                                         deterministic)
            if layer_cache is not None:
                new_k.append(layer_cache[0])
                new_v.append(layer_cache[1])
        x_BTD = norm(c, "ln_f")(x_BTD)
        if c.head == "score":       # a reward model: one scalar per position, float32 [B, T]
            if cache is not None or logits_at_B is not None:
                raise ValueError("a model with head='score' has no cache or logits")
            score = self.param("score", nn.with_logical_partitioning(normal(c.init_std),
                                                                     ("embed", None)),
                               (c.n_embd, 1), jnp.float32)
            return (x_BTD @ score.astype(dt))[..., 0].astype(jnp.float32)
        if logits_at_B is not None:  # the head at one position per row only (a prefill's last)
            x_BTD = jnp.take_along_axis(x_BTD, logits_at_B[:, None, None], axis=1)
            T = 1

        x_ND = x_BTD.reshape(B * T, -1)
        if c.tie_embeddings:
            logits_NV = kernels.tied_head(self, x_ND, wte, dt, kernels.resolve_for(c))
        else:
            logits_NV = Linear(c.vocab_size, ("embed", "vocab"), use_bias=False, std=c.init_std,
                               dtype=dt, impl=kernels.resolve_for(c), name="lm_head")(x_ND)
        logits_BTV = logits_NV.reshape(B, T, -1).astype(jnp.float32)
        if c.logit_softcap > 0:
            logits_BTV = c.logit_softcap * jnp.tanh(logits_BTV / c.logit_softcap)
        if cache is not None:
            return logits_BTV, {"k": tuple(new_k), "v": tuple(new_v)}
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
          logits_at_B: Optional[Array] = None):
    """Logits [B, T, V] (float32); with `cache`, (logits, new_cache). Dropout iff `dropout_rng`.
    With `cfg.head == "score"`: one scalar per position, [B, T] (a reward model).
    `logits_at_B`: one position per row whose logits alone are computed ([B, 1, V]).
    `params` may hold the inference layouts of `lm.kernels` (packed weights, a head copy)."""
    deterministic = dropout_rng is None or cfg.dropout == 0.0
    rngs = None if deterministic else {"dropout": dropout_rng}
    return Transformer(cfg).apply({"params": params}, tokens_BT, positions_BT, segment_ids_BT,
                                  cache, deterministic, logits_at_B, rngs=rngs)


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
    return cfg.n_layer * (attn + mlp) + D * (cfg.vocab_size if cfg.head == "lm" else 1)


def flops_per_token(cfg: ModelConfig, seq_len: Optional[int] = None) -> float:
    """Training FLOPs per token: 6 × matmul params + causal attention (scores and values).

    Attention: per layer and token, QKᵀ and AV cost 2·2·t·D forward for a query at position t;
    averaged over a causal sequence of length T that is 2·(T+1)·D, ×3 for forward + backward.
    """
    T = seq_len or cfg.block_size
    attn = cfg.n_layer * 3 * 2 * (T + 1) * cfg.n_head * cfg.head_dim
    return 6 * matmul_params(cfg) + attn
