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


@jax.custom_vjp
def matmul(x_MD: Array, w_DF: Array) -> Array:
    """x @ w whose backward computes the kernel gradient as xᵀ @ g, in w's own [D, F] layout.

    JAX's automatic transpose of a dot emits the kernel gradient as (gᵀ @ x)ᵀ: a [F, D] dot
    and a transpose. XLA:CPU left that transpose inside the AdamW and norm fusions that read
    the gradient, turning them into strided reads: ~150 µs each on the baby config's
    [512, 128] kernels, ~37 µs with this backward. Same arithmetic, so the same losses; baby
    step 6% faster (interleaved A/B, 2 devices). Like `model.tied_logits`, reverse mode only.
    """
    return jnp.dot(x_MD, w_DF)


def _matmul_fwd(x_MD, w_DF):
    return jnp.dot(x_MD, w_DF), (x_MD, w_DF)


def _matmul_bwd(res, g_MF):
    x_MD, w_DF = res
    g_MF = g_MF.astype(x_MD.dtype)
    return jnp.dot(g_MF, w_DF.T), jnp.dot(x_MD.T, g_MF).astype(w_DF.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


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
        # As a 2-D matmul: [B*T, D] @ [D, F] measured ~8% faster per train step on XLA:CPU than
        # the same dot with the batch dims kept (interleaved A/B, baby config).
        y = matmul(x.reshape(-1, x.shape[-1]).astype(self.dtype), w.astype(self.dtype))
        y = y.reshape(*x.shape[:-1], self.features)
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


def cached_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array, positions_BT: Array,
                     mask_B1TS: Array, cache: tuple[Array, Array, Any], scale: float, dtype):
    """Attention through the KV cache of one layer (prefill and decode are the same code).

    `cache` is `(k, v, layer)`: this layer's own `[B, K, S, H]` buffers with `layer=None`, or the
    stacked `[L, B, K, S, H]` buffers and this layer's index. The new keys/values are written at
    each row's absolute `positions_BT` (a position >= S writes nothing: padding / no-op rows), then
    the queries attend over all S slots with `mask_B1TS` (slot <= query position). Per-layer
    buffers are what a decode loop should carry: each is updated in place and read directly by the
    contraction (XLA copies a slice of a loop-carried stacked buffer at every step). With
    (batch, kv-head) leading, both contractions are batched matmuls over the cache as stored (a
    max_len-before-heads layout makes XLA transpose the layer's cache at every decode step).
    Scores and softmax in float32 (as `jax.nn.dot_product_attention`).
    """
    k_buf, v_buf, layer = cache
    B, T, N, H = q_BTNH.shape
    K = k_BTKH.shape[2]
    b_idx = jnp.arange(B)[:, None]
    at = (b_idx, slice(None), positions_BT)
    at = at if layer is None else (layer, *at)
    k_buf = k_buf.at[at].set(k_BTKH.astype(k_buf.dtype), mode="drop")
    v_buf = v_buf.at[at].set(v_BTKH.astype(v_buf.dtype), mode="drop")
    k_BKSH = (k_buf if layer is None else k_buf[layer]).astype(dtype)
    v_BKSH = (v_buf if layer is None else v_buf[layer]).astype(dtype)
    q_BTKGH = q_BTNH.astype(dtype).reshape(B, T, K, N // K, H)
    s_BKGTS = jnp.einsum("bksh,btkgh->bkgts", k_BKSH, q_BTKGH,
                         preferred_element_type=jnp.float32) * scale
    s_BKGTS = jnp.where(mask_B1TS[:, :, None], s_BKGTS, jnp.finfo(jnp.float32).min)
    p_BKGTS = jax.nn.softmax(s_BKGTS, axis=-1).astype(dtype)
    y_BTKGH = jnp.einsum("bkgts,bksh->btkgh", p_BKGTS, v_BKSH)
    return y_BTKGH.reshape(B, T, N, H), (k_buf, v_buf, layer)


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
            y_BTNH, new_cache = cached_attention(q_BTNH, k_BTKH, v_BTKH, positions_BT, mask, cache,
                                                 H ** -0.5, self.dtype)
        else:
            is_causal = mask is None
            # The softmax's custom-JVP rule (JAX's opt-in, "better memory and stability"): its
            # backward is p·(g − Σ g·p). The default rule differentiates exp/Σ, and XLA:CPU runs
            # its Σ(g·e/s²) as a slow YNN reduce (~0.4 ms per layer per device on the baby
            # config; gone with this rule). Baby step, 3 interleaved A/Bs on 2 cores: 37.7 ->
            # 35.7, 38.1 -> 37.2 and 38.8 -> 38.9 ms (the devices then wait longer on the
            # gradient all-reduce).
            with jax.softmax_custom_jvp(True):
                y_BTNH = jax.nn.dot_product_attention(
                    q_BTNH.astype(self.dtype), k_BTKH.astype(self.dtype),
                    v_BTKH.astype(self.dtype), mask=mask, is_causal=is_causal, scale=H ** -0.5)
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
