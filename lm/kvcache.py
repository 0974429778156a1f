"""The explicit KV cache: one pytree, created from the model config, passed to and returned by the
jitted prefill/decode functions (which donate it, so XLA updates it in place).

    k, v     tuples over layers of [batch, kv_heads, max_len, head_dim]   (`storage_dtype`)
    lengths  [batch] int32   tokens held by each row (= the next write position)

GQA-aware: the cache holds `cfg.kv_heads` heads, not `n_head`. Row `b` holds valid keys/values in
slots `[0, lengths[b])`; later slots may hold stale data (a previous, longer sequence, or nothing):
the attention mask (slot <= query position) never lets a query see them, and they are overwritten
in order as the row grows, so rows of different lengths share one cache exactly.

Layout: kv_heads before max_len, so a decode step reads each (row, head) block as one contiguous
`[S, H]` matrix; one buffer per layer, so a decode loop updates each in place (a stacked
`[L, ...]` buffer was copied at every step). `stacked(cache)` gives the single-array view.
Measurements: docs/performance.md ("KV cache layout").
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import struct

from lm import kernels
from lm.config import ModelConfig

Array = jax.Array


@struct.dataclass
class KVCache:
    k: tuple          # L x [B, K, S, H]
    v: tuple          # L x [B, K, S, H]
    lengths: Array    # [B] int32

    @property
    def batch(self) -> int:
        return self.k[0].shape[0]

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def n_layer(self) -> int:
        return len(self.k)

    def model_cache(self) -> dict:
        """The `{'k', 'v'}` dict `lm.model.apply(..., cache=)` takes and returns."""
        return {"k": self.k, "v": self.v}


def storage_dtype(cfg: ModelConfig):
    """The cache's element type: the compute dtype, except bf16 compute on XLA's CPU path, where
    the cache holds the bf16-rounded keys and values as float32 (the same numbers). XLA:CPU runs a
    bf16 dot by converting both operands to float32, which converted every layer's whole cache at
    every decode step: 8.3 of 10.5 ms per step at 16 rows of chat_tiny (docs/performance.md).
    Where decode attends through `kernels.decode_attention` (it reads bf16 as stored), bf16."""
    dt = jnp.dtype(cfg.compute_dtype)
    impl = kernels.resolve_for(cfg)
    if dt == jnp.bfloat16 and kernels.decode_attention_ok(impl, cfg.head_dim):
        return dt
    if dt == jnp.bfloat16 and impl in ("xla_cpu", "onednn"):
        return jnp.dtype(jnp.float32)
    return dt


def init(cfg: ModelConfig, batch: int, max_len: Optional[int] = None, dtype=None) -> KVCache:
    """An empty cache for `batch` rows of up to `max_len` tokens (default: the model's block size).

    Learned position embeddings stop at `block_size`, so `max_len` may not exceed it for GPT-2
    configs; RoPE configs may go further.
    """
    max_len = cfg.block_size if max_len is None else int(max_len)
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    if cfg.pos == "learned" and max_len > cfg.block_size:
        raise ValueError(f"max_len {max_len} exceeds block_size {cfg.block_size} (learned "
                         f"position embeddings)")
    shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
    dtype = dtype or storage_dtype(cfg)
    zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layer))
    return KVCache(k=zeros(), v=zeros(), lengths=jnp.zeros((batch,), jnp.int32))


def abstract(cfg: ModelConfig, batch: int, max_len: Optional[int] = None, dtype=None) -> KVCache:
    """Shapes/dtypes only (for AOT compilation or sharding specs), nothing allocated."""
    return jax.eval_shape(lambda: init(cfg, batch, max_len, dtype))


def nbytes(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> int:
    itemsize = jnp.dtype(dtype or storage_dtype(cfg)).itemsize
    return 2 * cfg.n_layer * batch * cfg.kv_heads * max_len * cfg.head_dim * itemsize


def repeat_rows(cache: KVCache, n: int) -> KVCache:
    """Each row repeated `n` times (row r -> rows r*n .. r*n+n-1): `n` samples share one prefill."""
    if n == 1:
        return cache
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), cache)


def take_rows(cache: KVCache, rows_B: Array, lengths_B: Array) -> KVCache:
    """Rows `rows_B` of `cache` (a copy), each keeping its first `lengths_B` tokens: a new request
    whose prompt starts with what a row already holds reuses those keys/values (prefix caching);
    the slots past `lengths_B` are stale, hence masked and overwritten."""
    pick = lambda x: jnp.take(x, rows_B, axis=0)
    return KVCache(k=tuple(map(pick, cache.k)), v=tuple(map(pick, cache.v)),
                   lengths=jnp.asarray(lengths_B, jnp.int32))


def grow(cache: KVCache, max_len: int) -> KVCache:
    """The same rows with room for `max_len` tokens (new slots zero; rows' contents unchanged).

    Decode attends over every slot of the buffer, so a buffer sized to what the rows hold now,
    grown as they lengthen, costs less per step than one sized for the final length.
    """
    S = cache.max_len
    if max_len < S:
        raise ValueError(f"grow: max_len {max_len} is below the current {S}")
    pad = ((0, 0), (0, 0), (0, max_len - S), (0, 0))
    return cache.replace(k=tuple(jnp.pad(x, pad) for x in cache.k),
                         v=tuple(jnp.pad(x, pad) for x in cache.v))


def reset(cache: KVCache) -> KVCache:
    """Empty every row (stale slots need no clearing: they are masked and overwritten)."""
    return cache.replace(lengths=jnp.zeros_like(cache.lengths))


def stacked(cache: KVCache) -> tuple[Array, Array]:
    """(k, v) as single [layers, batch, max_len, kv_heads, head_dim] arrays (a copy; for inspection
    or export)."""
    return (jnp.swapaxes(jnp.stack(cache.k), 2, 3), jnp.swapaxes(jnp.stack(cache.v), 2, 3))


def shardings(cache_like: KVCache, mesh: jax.sharding.Mesh, batch_axes=("data",)) -> KVCache:
    """NamedShardings splitting the batch dimension over `batch_axes` (rows are independent)."""
    P = jax.sharding.PartitionSpec
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    spec = axes if len(axes) != 1 else axes[0]
    rows = jax.sharding.NamedSharding(mesh, P(spec or None))
    return jax.tree.map(lambda _: rows, cache_like)
