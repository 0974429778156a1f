"""Transformer building blocks (Flax Linen): linear, norms, RoPE, attention, MLPs.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, `vocab`, ...); `lm.parallel`
maps them to mesh axes in one place. Parameters are float32; `dtype` is the compute dtype.
Shape suffixes: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head dim, F MLP hidden, V vocab.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
from einops import rearrange

Array = jax.Array


def normal(std: float) -> Callable:
    return nn.initializers.normal(stddev=std)


class Linear(nn.Module):
    """y = x @ W (+ b) with logical axes (in_axis, out_axis) on W."""
    features: int
    axes: tuple[str | None, str | None]
    use_bias: bool = True
    std: float = 0.02
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("kernel", nn.with_logical_partitioning(normal(self.std), self.axes),
                       (x.shape[-1], self.features), jnp.float32)
        y = jnp.dot(x.astype(self.dtype), w.astype(self.dtype))
        if self.use_bias:
            b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                (self.axes[1],)),
                           (self.features,), jnp.float32)
            y = y + b.astype(self.dtype)
        return y


class Norm(nn.Module):
    """LayerNorm (GPT-2) or RMSNorm (modern); statistics in float32, output in the input dtype."""
    kind: str = "layernorm"
    eps: float = 1e-5
    use_bias: bool = True
    use_scale: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        if self.kind == "layernorm":
            x = x - x.mean(-1, keepdims=True)
        x = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
        d = x.shape[-1]
        if self.use_scale:
            x = x * self.param("scale", nn.with_logical_partitioning(nn.initializers.ones,
                                                                     ("norm",)), (d,))
        if self.use_bias and self.kind == "layernorm":
            x = x + self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                    ("norm",)), (d,))
        return x.astype(dtype)


def rope(x_BTNH: Array, positions_BT: Array, theta: float) -> Array:
    """Rotary position embedding (rotate-half form) at absolute `positions`."""
    h = x_BTNH.shape[-1]
    inv_freq = theta ** (-jnp.arange(0, h, 2, dtype=jnp.float32) / h)
    ang_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    cos, sin = jnp.cos(ang_BTh)[:, :, None, :], jnp.sin(ang_BTh)[:, :, None, :]
    x1, x2 = jnp.split(x_BTNH.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x_BTNH.dtype)


def attention_mask(q_pos_BT: Array, k_pos_BS: Array, q_seg_BT: Optional[Array] = None,
                   k_seg_BS: Optional[Array] = None, k_valid_BS: Optional[Array] = None) -> Array:
    """Boolean [B, 1, T, S]: causal by absolute position, within a segment, over valid keys."""
    m = k_pos_BS[:, None, :] <= q_pos_BT[:, :, None]
    if q_seg_BT is not None:
        m &= q_seg_BT[:, :, None] == k_seg_BS[:, None, :]
    if k_valid_BS is not None:
        m &= k_valid_BS[:, None, :]
    return m[:, None]


class Attention(nn.Module):
    n_head: int
    n_kv_head: int
    head_dim: int
    use_bias: bool
    qk_norm: bool
    norm_eps: float
    pos: str
    rope_theta: float
    out_std: float
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x_BTD: Array, positions_BT: Array, mask: Optional[Array],
                 cache: Optional[tuple[Array, Array]] = None, deterministic: bool = True):
        N, K, H = self.n_head, self.n_kv_head, self.head_dim
        D = x_BTD.shape[-1]
        qkv = Linear((N + 2 * K) * H, ("embed", "heads"), self.use_bias, dtype=self.dtype,
                     name="c_attn")(x_BTD)
        q_BTNH = rearrange(qkv[..., :N * H], "b t (n h) -> b t n h", n=N)
        k_BTKH = rearrange(qkv[..., N * H:(N + K) * H], "b t (k h) -> b t k h", k=K)
        v_BTKH = rearrange(qkv[..., (N + K) * H:], "b t (k h) -> b t k h", k=K)
        if self.qk_norm:
            qn = Norm("rmsnorm", self.norm_eps, use_bias=False, use_scale=False)
            q_BTNH, k_BTKH = qn(q_BTNH), qn(k_BTKH)
        if self.pos == "rope":
            q_BTNH = rope(q_BTNH, positions_BT, self.rope_theta)
            k_BTKH = rope(k_BTKH, positions_BT, self.rope_theta)
        new_cache = None
        if cache is not None:
            # Write this call's keys/values at their absolute positions, then attend over the cache.
            k_cache, v_cache = cache
            b_idx = jnp.arange(x_BTD.shape[0])[:, None]
            k_cache = k_cache.at[b_idx, positions_BT].set(k_BTKH.astype(k_cache.dtype), mode="drop")
            v_cache = v_cache.at[b_idx, positions_BT].set(v_BTKH.astype(v_cache.dtype), mode="drop")
            new_cache = (k_cache, v_cache)
            k_BTKH, v_BTKH = k_cache.astype(self.dtype), v_cache.astype(self.dtype)
        is_causal = mask is None
        y_BTNH = jax.nn.dot_product_attention(
            q_BTNH.astype(self.dtype), k_BTKH.astype(self.dtype), v_BTKH.astype(self.dtype),
            mask=mask, is_causal=is_causal, scale=H ** -0.5)
        y_BTD = rearrange(y_BTNH, "b t n h -> b t (n h)")
        y_BTD = Linear(D, ("heads", "embed"), self.use_bias, std=self.out_std, dtype=self.dtype,
                       name="c_proj")(y_BTD)
        y_BTD = nn.Dropout(self.dropout)(y_BTD, deterministic=deterministic)
        return y_BTD, new_cache


class MLP(nn.Module):
    kind: str
    hidden: int
    use_bias: bool
    out_std: float
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x_BTD: Array, deterministic: bool = True) -> Array:
        D = x_BTD.shape[-1]
        if self.kind == "swiglu":
            h = Linear(2 * self.hidden, ("embed", "mlp"), self.use_bias, dtype=self.dtype,
                       name="c_fc")(x_BTD)
            gate, up = jnp.split(h, 2, axis=-1)
            h = jax.nn.silu(gate) * up
        else:
            h = Linear(self.hidden, ("embed", "mlp"), self.use_bias, dtype=self.dtype,
                       name="c_fc")(x_BTD)
            h = jax.nn.gelu(h, approximate=True) if self.kind == "gelu" else jnp.square(jax.nn.relu(h))
        y = Linear(D, ("mlp", "embed"), self.use_bias, std=self.out_std, dtype=self.dtype,
                   name="c_proj")(h)
        return nn.Dropout(self.dropout)(y, deterministic=deterministic)
