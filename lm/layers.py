"""Transformer building blocks (Flax Linen): linear, norms, RoPE, attention, MLPs.

Every parameter carries logical axis names (`embed`, `heads`, `mlp`, `vocab`, ...); `lm.parallel`
maps them to mesh axes in one place. Parameters are float32; activations are computed in
`cfg.compute_dtype`. Matmuls go through `lm.kernels` (the backend seam).
Shape suffixes: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head dim, F MLP hidden, V vocab.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import flax.linen as nn
from einops import rearrange

from lm import kernels
from lm.config import ModelConfig

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
    impl: kernels.Impl = "plain"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        init = nn.with_logical_partitioning(normal(self.std), self.axes)
        w = kernels.weight(self, "kernel", init, (x.shape[-1], self.features))
        b = None
        if self.use_bias:
            b = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                (self.axes[1],)),
                           (self.features,), jnp.float32)
        return kernels.dense(x, w, b, self.dtype, self.impl, self.features)


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


def cached_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array, positions_BT: Array,
                     mask_B1TS: Array, cache: tuple[Array, Array], scale: float, dtype,
                     impl: kernels.Impl = "plain"):
    """Attention through one layer's KV cache (prefill and decode are the same code).

    `cache` is this layer's `(k, v)` buffers, each `[B, K, S, H]` (layout: see `lm.kvcache`).
    The new keys/values are written at each row's absolute `positions_BT` (a position >= S writes
    nothing: padding / no-op rows), then the queries attend over all S slots with `mask_B1TS`
    (slot <= query position). Scores and softmax in float32 (as `jax.nn.dot_product_attention`).
    A decode step (T = 1) on the CPU kernels writes and attends in one custom call that reads
    only the filled slots (`kernels.decode_attention`; the mask is then slot <= position, as
    `lm.model` builds it).
    """
    k_buf, v_buf = cache
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    at = (jnp.arange(B)[:, None], slice(None), positions_BT)
    if T == 1 and kernels.decode_attention_ok(impl, H):
        q_BKGH = q_BTNH.astype(dtype).reshape(B, K, N // K, H)
        y_BKGH, k_buf, v_buf = kernels.decode_attention(
            q_BKGH, k_BTKH[:, 0].astype(dtype), v_BTKH[:, 0].astype(dtype), k_buf, v_buf,
            positions_BT[:, 0], scale)
        return y_BKGH.astype(dtype).reshape(B, 1, N, H), (k_buf, v_buf)
    # values rounded to the compute dtype, stored as the cache's (float32 for bf16 on XLA's CPU
    # path: `kvcache.storage_dtype`) and read as stored: no convert of the whole buffer per step
    k_buf = k_buf.at[at].set(k_BTKH.astype(dtype).astype(k_buf.dtype), mode="drop")
    v_buf = v_buf.at[at].set(v_BTKH.astype(dtype).astype(v_buf.dtype), mode="drop")
    k_BKSH, v_BKSH = k_buf, v_buf
    q_BTKGH = q_BTNH.astype(dtype).reshape(B, T, K, N // K, H)
    s_BKGTS = jnp.einsum("bksh,btkgh->bkgts", k_BKSH, q_BTKGH,
                         preferred_element_type=jnp.float32) * scale
    s_BKGTS = jnp.where(mask_B1TS[:, :, None], s_BKGTS, jnp.finfo(jnp.float32).min)
    p_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1).astype(dtype)
    y_BTKGH = jnp.einsum("bkgts,bksh->btkgh", p_BKGTS, v_BKSH).astype(dtype)
    return y_BTKGH.reshape(B, T, N, H), (k_buf, v_buf)


def norm(cfg: ModelConfig, name: str) -> "Norm":
    """The model's block norm (LayerNorm or RMSNorm, with or without bias)."""
    return Norm(cfg.norm, cfg.norm_eps, use_bias=cfg.bias, name=name)


def residual_std(cfg: ModelConfig) -> float:
    """GPT-2's init for projections into the residual stream: std / sqrt(2 * n_layer)."""
    return cfg.init_std / math.sqrt(2 * cfg.n_layer)


class Attention(nn.Module):
    """Causal self-attention: fused QKV (GQA-aware), optional QK-norm and RoPE, output proj."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD: Array, positions_BT: Array, mask: Optional[Array],
                 cache: Optional[tuple[Array, Array]] = None, deterministic: bool = True):
        c = self.cfg
        N, K, H, D, dt = c.n_head, c.kv_heads, c.head_dim, c.n_embd, c.compute_dtype
        impl = kernels.resolve_for(c)
        qkv = Linear((N + 2 * K) * H, ("embed", "heads"), c.bias, c.init_std, dt, impl,
                     name="c_attn")(x_BTD)
        q_BTNH = rearrange(qkv[..., :N * H], "b t (n h) -> b t n h", n=N)
        k_BTKH = rearrange(qkv[..., N * H:(N + K) * H], "b t (k h) -> b t k h", k=K)
        v_BTKH = rearrange(qkv[..., (N + K) * H:], "b t (k h) -> b t k h", k=K)
        if c.qk_norm:
            q_BTNH = Norm("rmsnorm", c.norm_eps, use_bias=False, use_scale=c.qk_norm_scale,
                          name="q_norm")(q_BTNH)
            k_BTKH = Norm("rmsnorm", c.norm_eps, use_bias=False, use_scale=c.qk_norm_scale,
                          name="k_norm")(k_BTKH)
        if c.pos == "rope":
            q_BTNH = rope(q_BTNH, positions_BT, c.rope_theta)
            k_BTKH = rope(k_BTKH, positions_BT, c.rope_theta)
        new_cache = None
        if cache is not None:
            y_BTNH, new_cache = cached_attention(q_BTNH, k_BTKH, v_BTKH, positions_BT, mask,
                                                 cache, H ** -0.5, dt, impl)
        else:               # causal (mask None), or within packed documents
            y_BTNH = kernels.causal_attention(q_BTNH.astype(dt), k_BTKH.astype(dt),
                                              v_BTKH.astype(dt), H ** -0.5, impl, mask)
        y_BTD = rearrange(y_BTNH, "b t n h -> b t (n h)")
        y_BTD = Linear(D, ("heads", "embed"), c.bias, residual_std(c), dt, impl,
                       name="c_proj")(y_BTD)
        return nn.Dropout(c.dropout)(y_BTD, deterministic=deterministic), new_cache


def activation(kind: str, h_BTF: Array) -> Array:
    """The MLP's nonlinearity: GELU (tanh form, GPT-2's), ReLU², or SwiGLU (h = [gate, up])."""
    if kind == "swiglu":
        gate, up = jnp.split(h_BTF, 2, axis=-1)
        return jax.nn.silu(gate) * up
    if kind == "gelu":
        return jax.nn.gelu(h_BTF, approximate=True)
    return jnp.square(jax.nn.relu(h_BTF))


class MLP(nn.Module):
    """GELU (GPT-2), ReLU² or SwiGLU feed-forward."""
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BTD: Array, deterministic: bool = True) -> Array:
        c = self.cfg
        dt, impl = c.compute_dtype, kernels.resolve_for(c)
        width = 2 * c.hidden if c.mlp == "swiglu" else c.hidden
        h_BTF = Linear(width, ("embed", "mlp"), c.bias, c.init_std, dt, impl, name="c_fc")(x_BTD)
        h_BTF = kernels.elementwise(functools.partial(activation, c.mlp), h_BTF, impl)
        y_BTD = Linear(c.n_embd, ("mlp", "embed"), c.bias, residual_std(c), dt, impl,
                       name="c_proj")(h_BTF)
        return nn.Dropout(c.dropout)(y_BTD, deterministic=deterministic)
