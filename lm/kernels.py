"""The one seam for backend-specific kernels: each fast path beside its plain-JAX meaning.

`model.py`, `layers.py`, `losses.py` and `sampling.py` call these functions with an `impl` name
and otherwise read as architecture: the model's CPU layouts live here too (a Linear's weight and
2-D product, the MLP's nonlinearity in fp32, the tied head's [D, V] copy and packed bf16 decode
weights, both carried in the parameters a decode reads). `ModelConfig.kernels` picks `impl`:

- `plain`: straight JAX (`jnp.dot`, `x @ wteᵀ`, `take_along_axis`, `jnp.argmax`). Every transform
  works, `jax.jvp` / `jax.jacfwd` included. What accelerators get by default.
- `xla_cpu`: the same arithmetic laid out for XLA:CPU (hand-written backward passes that keep
  gradients in the weights' own layout, a one-hot target select, a two-reduction argmax, a [D, V]
  copy of the tied head for batched decode). Reverse-mode only where a custom VJP is used.
- `onednn`: `xla_cpu`, with the bf16 matmuls run through JAX FFI custom calls (`lm/cpu`), where
  XLA:CPU's bf16 dot is slower than its fp32 one: the Linear layers and the tied head (forward and
  backward) and causal attention's batched matmuls by oneDNN, which uses the CPU's bf16 hardware
  (AVX512-BF16, AMX); decoding with bf16 weights (a bf16 model's, or `weights="bfloat16"`'s)
  reads them `pack`ed through a few-row AVX512-BF16 kernel of ours, and a decode step writes the
  cache and attends over each row's filled slots in one call of ours (`decode_attention`). Needs
  one CPU device (the custom calls are not partitioned over a mesh).
- `auto` (default): on the CPU, `onednn` for bf16 compute on a CPU with bf16 hardware (when the
  kernel builds) in a one-device process, else `xla_cpu`; `plain` on accelerators.

Why each one exists, with the measurements: docs/performance.md ("The kernel seam").
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Literal, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lm import cpu, parallel

Array = jax.Array
Impl = Literal["plain", "xla_cpu", "onednn"]
CHOICES = ("auto", "plain", "xla_cpu", "onednn")


_PER_DEVICE_PROGRAMS = [False]   # set by lm.process for a pmap run: each program sees one device


def set_per_device_programs(on: bool) -> None:
    """Say that this process's steps run as pmap, one program per device: the oneDNN custom
    calls, which a jit mesh of several devices cannot partition, are then each device's own."""
    _PER_DEVICE_PROGRAMS[0] = bool(on)


def resolve(choice: str, dtype: str = "float32") -> Impl:
    """The implementation a config's `kernels` choice (with its compute `dtype`) means in this
    process: `auto` is `plain` off the CPU, `onednn` for bf16 on a CPU with bf16 hardware and the
    built kernel whose programs each run on one device (one device, or pmap: lm.process decides
    both), else `xla_cpu`."""
    if choice not in CHOICES:
        raise ValueError(f"kernels: {choice!r} is not one of {list(CHOICES)}")
    if choice == "auto":
        if jax.default_backend() != "cpu":
            return "plain"
        one_device = jax.device_count() == 1 or _PER_DEVICE_PROGRAMS[0]
        return "onednn" if dtype == "bfloat16" and one_device and onednn_available() else "xla_cpu"
    if choice == "onednn" and not onednn_available():
        raise RuntimeError(f"kernels=onednn: the oneDNN kernel is unavailable ({cpu.load_error()})")
    return choice  # type: ignore[return-value]


def resolve_for(cfg) -> Impl:
    """`resolve` of a ModelConfig."""
    return resolve(cfg.kernels, cfg.dtype)


def onednn_available() -> bool:
    """A CPU with bf16 hardware and the oneDNN custom call built and registered."""
    return cpu.cpu_has_bf16() and cpu.load() is not None


def bf16_kernels_expected() -> bool:
    """Whether this host will run bf16 through the onednn path: a CPU-only JAX, bf16 hardware
    and the oneDNN wheel (checked before JAX starts: no backend query, no build)."""
    if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] not in ("", "cpu"):
        return False
    return parallel.cpu_only() and cpu.cpu_has_bf16() and cpu.onednn_prefix() is not None


def needs_single_device(cfg) -> bool:
    """Whether a config runs the oneDNN custom calls, which a CPU mesh of several devices cannot
    partition (checked before JAX starts)."""
    if cfg.dtype != "bfloat16" or cfg.kernels not in ("auto", "onednn"):
        return False
    return bf16_kernels_expected()


def serial_macs() -> int:
    """Products below this many multiply-adds run on the calling thread alone in the oneDNN
    kernel (lm/cpu/onednn_matmul.cc's SerialMacs; LM_ONEDNN_SERIAL_MACS overrides both)."""
    return int(os.environ.get("LM_ONEDNN_SERIAL_MACS", 1 << 26))


def largest_product_macs(cfg, rows: int) -> int:
    """Multiply-adds of a step's largest weight product at `rows` token rows (the MLP's, the
    fused QKV's or the head's)."""
    return rows * cfg.n_embd * max(cfg.hidden, 3 * cfg.n_embd, cfg.vocab_size)


# ---- the model's layouts: a Linear's weight and product, the MLP's nonlinearity, the tied head ----

def weight(module: nn.Module, name: str, init, shape) -> Array:
    """A Linear's kernel: the packed decode layout when the parameters hold one
    (`decode_weights`, stored as `<name>_packed`), else its float32 parameter."""
    packed = f"{name}_packed"
    if module.has_variable("params", packed):
        return module.get_variable("params", packed)
    return module.param(name, init, shape, jnp.float32)


def dense(x: Array, w: Array, b, dtype, impl: Impl, features: int) -> Array:
    """x @ w (+ b) over x's last axis in `dtype`, computed as one 2-D matmul [rows, D] @ [D, F]
    (faster on XLA:CPU than keeping the batch dims)."""
    y = matmul(x.reshape(-1, x.shape[-1]).astype(dtype), w, impl, n=features)
    if b is not None:
        y = add_bias(y, b, impl)
    return y.reshape(*x.shape[:-1], features)


def elementwise(fn, x: Array, impl: Impl) -> Array:
    """fn(x) in x's dtype; on XLA:CPU computed in float32 and cast back (its bf16 elementwise
    code is several times slower than its fp32 code, docs/performance.md)."""
    if impl in ("xla_cpu", "onednn"):
        return fn(x.astype(jnp.float32)).astype(x.dtype)
    return fn(x)


HEAD = "head_DV"    # a [D, V] copy of the tied head in decode parameters (`with_head_copy`)


def tied_head(module: nn.Module, x_ND: Array, wte_VD: Array, dtype, impl: Impl) -> Array:
    """x @ wteᵀ in `dtype`, through the [D, V] copy when the parameters hold one (inference only:
    no gradient reaches wte through it)."""
    if module.has_variable("params", HEAD):
        return matmul(x_ND, module.get_variable("params", HEAD), impl, n=wte_VD.shape[0])
    return tied_logits(x_ND, wte_VD.astype(dtype), impl)


def with_head_copy(params, impl: Impl, dtype=None):
    """Decode parameters that read the tied head through `head_copy` (see `head_copy_rows`);
    `dtype`: the model's compute dtype, bf16 making a bf16 copy (the values the head computes
    with: `tied_head` casts wte to it), `pack`ed on the onednn path."""
    wte = params["wte"]
    if dtype is not None and jnp.dtype(dtype) == jnp.bfloat16:
        wte = wte.astype(jnp.bfloat16)
    return {**params, HEAD: head_copy(wte, impl)}


def decode_config(cfg, weights: str | None):
    """The model config a decode computes with: `weights` None keeps it; "float32" / "bfloat16"
    set the compute dtype, bfloat16 weights on a CPU with the bf16 kernels computing in float32
    with the matmuls reading bf16 weights (XLA:CPU's elementwise and attention work is slower in
    bf16 than in fp32)."""
    if weights not in (None, "float32", "bfloat16"):
        raise ValueError(f"weights: {weights!r} is not one of None, 'float32', 'bfloat16'")
    if weights == "bfloat16":
        return lowp_weights_config(cfg)
    return cfg if weights is None else dataclasses.replace(cfg, dtype=weights)


# ---- matmul of a Linear layer: [M, D] @ [D, F] ---------------------------------------------------

@jax.custom_vjp
def _matmul_cpu(x_MD: Array, w_DF: Array) -> Array:
    return jnp.dot(x_MD, w_DF)


def _matmul_cpu_fwd(x_MD, w_DF):
    return jnp.dot(x_MD, w_DF), (x_MD, w_DF)


def _matmul_cpu_bwd(res, g_MF):
    # dW as xᵀ·g, in W's own [D, F] layout (autodiff emits (gᵀ·x)ᵀ, a transpose XLA:CPU fuses
    # into the optimizer's reads of the gradient, making them strided).
    x_MD, w_DF = res
    g_MF = g_MF.astype(x_MD.dtype)
    return jnp.dot(g_MF, w_DF.T), jnp.dot(x_MD.T, g_MF).astype(w_DF.dtype)


_matmul_cpu.defvjp(_matmul_cpu_fwd, _matmul_cpu_bwd)


def _view(shape, perm) -> tuple[np.ndarray, np.ndarray]:
    """Logical dims and element strides of a row-major array of `shape` read through `perm`."""
    strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
    return (np.array([shape[p] for p in perm], np.int64),
            np.array([strides[p] for p in perm], np.int64))


def onednn_mm(a: Array, b: Array, a_perm, b_perm, out_shape, out_perm=None,
              out_dtype=None) -> Array:
    """oneDNN's (batched) matmul of strided views, no copies: the array of `out_shape` whose
    `out_perm` view is (`a` viewed through `a_perm`) @ (`b` viewed through `b_perm`). Views are
    `[..., M, K]`, `[..., K, N]`, `[..., M, N]` with the same leading (batch) dims."""
    if cpu.load() is None:
        raise RuntimeError(f"the oneDNN kernel is unavailable: {cpu.load_error()}")
    out_perm = tuple(range(len(out_shape))) if out_perm is None else out_perm
    ad, as_ = _view(a.shape, a_perm)
    bd, bs = _view(b.shape, b_perm)
    cd, cs = _view(out_shape, out_perm)
    out = jax.ShapeDtypeStruct(tuple(out_shape), out_dtype or a.dtype)
    return jax.ffi.ffi_call("lm_onednn_matmul", out)(
        a, b, a_dims=ad, a_strides=as_, b_dims=bd, b_strides=bs, c_dims=cd, c_strides=cs)


def _onednn(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False,
            out_dtype=None) -> Array:
    """op(a) @ op(b) of 2-D arrays, a transposed operand read in place."""
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    return onednn_mm(a, b, (1, 0) if trans_a else (0, 1), (1, 0) if trans_b else (0, 1), (M, N),
                     out_dtype=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _matmul_onednn(x_MD: Array, w_DF: Array, out_dtype) -> Array:
    return _onednn(x_MD, w_DF, out_dtype=out_dtype)


def _matmul_onednn_fwd(x_MD, w_DF, out_dtype):
    return _onednn(x_MD, w_DF, out_dtype=out_dtype), (x_MD, w_DF)


def _matmul_onednn_bwd(out_dtype, res, g_MF):
    x_MD, w_DF = res
    g_MF = g_MF.astype(x_MD.dtype)
    # dx = g·Wᵀ and dW = xᵀ·g (W's own layout), transposes read in place by oneDNN
    return _onednn(g_MF, w_DF, trans_b=True), _onednn(x_MD, g_MF, trans_a=True).astype(w_DF.dtype)


_matmul_onednn.defvjp(_matmul_onednn_fwd, _matmul_onednn_bwd)


def matmul(x_MD: Array, w_DF: Array, impl: Impl = "plain", n: int | None = None) -> Array:
    """x @ w in x's dtype (w cast to it). On the onednn path a bfloat16 w is read as stored: with
    bfloat16 x (bf16 training) and with float32 x (x rounded to bf16 for the product, the output
    float32). A 3-D w is `pack`ed (decode only): `n` is then its true width (packing pads to
    32-column groups)."""
    bf16 = jnp.bfloat16
    if w_DF.ndim == 3:                          # packed by `decode_weights` (onednn path only)
        y = _packed_matmul(x_MD, w_DF, x_MD.dtype)
        return y if n is None else y[:, :n]
    if impl == "onednn" and x_MD.dtype == bf16:
        return _matmul_onednn(x_MD, w_DF.astype(bf16), bf16)
    if impl == "onednn" and x_MD.dtype == jnp.float32 and w_DF.dtype == bf16:
        return _matmul_onednn(x_MD.astype(bf16), w_DF, jnp.float32)
    w_DF = w_DF.astype(x_MD.dtype)
    if impl in ("xla_cpu", "onednn"):
        return _matmul_cpu(x_MD, w_DF)
    return jnp.dot(x_MD, w_DF)


def pack(w_KN: Array) -> Array:
    """A [K, N] weight as the few-row decode kernel reads it: bf16 [ceil(N/32), ceil(K/2), 64],
    each 32-column group's (row 2k, row 2k+1) pairs contiguous (zero-padded to whole groups)."""
    K, N = w_KN.shape
    K2, G = -(-K // 2), -(-N // 32)
    w = jnp.pad(w_KN.astype(jnp.bfloat16), ((0, 2 * K2 - K), (0, 32 * G - N)))
    w = w.reshape(K2, 2, G, 32)
    return jnp.transpose(w, (2, 0, 3, 1)).reshape(G, K2, 64)


def packable(w: Array, impl: Impl) -> bool:
    """Whether decode with bf16 weights packs this 2-D weight (`pack`) on this CPU."""
    return impl == "onednn" and w.ndim == 2 and cpu.cpu_has_avx512_bf16()


PACKED = "kernel_packed"    # a Linear's packed kernel, in place of its "kernel" (`weight`)


def decode_weights(params, impl: Impl, cast: bool = True):
    """The parameters a decode with bf16 weights reads: every leaf in bf16 (`cast`; else as it
    is), and on the onednn path each Linear's "kernel" packed for the few-row kernel (`pack`),
    stored as `PACKED` (`layers.Linear` reads it; `matmul` takes it as it is). Inference only: no
    gradient. With `cast=False` a bf16-compute model decodes with the numbers it computes with
    anyway (its matmuls read its kernels rounded to bf16), once per params object instead of a
    rounding and a oneDNN repacking of every weight at every step (`packs_decode`)."""
    def walk(tree):
        if not isinstance(tree, dict):
            return jnp.asarray(tree).astype(jnp.bfloat16) if cast else tree
        out = {}
        for k, v in tree.items():
            if k == "kernel" and not isinstance(v, dict) and packable(v, impl):
                out[PACKED] = pack(v)
            else:
                out[k] = walk(v)
        return out
    return walk(params)


def packs_decode(cfg, impl: Impl) -> bool:
    """Whether decode reads a bf16-compute model's Linear kernels and tied head `pack`ed
    (`decode_weights(..., cast=False)`, `with_head_copy`): the onednn path with AVX512-BF16."""
    return jnp.dtype(cfg.compute_dtype) == jnp.bfloat16 and impl == "onednn" and \
        cpu.cpu_has_avx512_bf16()


def _packed_matmul(x_MK: Array, wp: Array, out_dtype) -> Array:
    out = jax.ShapeDtypeStruct((x_MK.shape[0], wp.shape[0] * 32), jnp.float32)
    return jax.ffi.ffi_call("lm_packed_matmul", out)(x_MK.astype(jnp.bfloat16), wp).astype(
        out_dtype)


@jax.custom_vjp
def _bias_onednn(y_MF: Array, b_F: Array) -> Array:
    return y_MF + b_F.astype(y_MF.dtype)


def _bias_onednn_fwd(y_MF, b_F):
    return _bias_onednn(y_MF, b_F), b_F


def _bias_onednn_bwd(b_F, g_MF):
    # Σ over rows as ones·g through oneDNN (f32 sums of the bf16 gradient): XLA:CPU's own
    # reduction, next to the custom calls, runs as a slow reduce-window tree (docs/performance.md)
    g_MF = g_MF.astype(jnp.bfloat16)
    ones_1M = jnp.ones((1, g_MF.shape[0]), jnp.bfloat16)
    db = _onednn(ones_1M, g_MF, out_dtype=jnp.float32)
    return g_MF, db[0].astype(b_F.dtype)


_bias_onednn.defvjp(_bias_onednn_fwd, _bias_onednn_bwd)


def add_bias(y_MF: Array, b_F: Array, impl: Impl = "plain") -> Array:
    """y + b (b cast to y's dtype) for a Linear's [rows, F] output."""
    if impl == "onednn" and y_MF.dtype == jnp.bfloat16:
        return _bias_onednn(y_MF, b_F)
    return y_MF + b_F.astype(y_MF.dtype)


def lowp_weights_config(cfg):
    """The config a decode with bfloat16 weights computes with: on a CPU with the bf16 kernels,
    float32 activations and cache with the matmuls reading bf16 weights (XLA:CPU's elementwise
    and attention work is slower in bf16 than in fp32); elsewhere bfloat16 compute."""
    if cfg.kernels in ("auto", "onednn") and jax.default_backend() == "cpu" and \
            onednn_available():
        return dataclasses.replace(cfg, dtype="float32", kernels="onednn")
    return dataclasses.replace(cfg, dtype="bfloat16")


# ---- the tied output head: [N, D] @ wteᵀ ---------------------------------------------------------

def _contract_last(x_ND, wte_VD):
    return jax.lax.dot_general(x_ND, wte_VD, (((1,), (1,)), ((), ())))


@jax.custom_vjp
def _tied_cpu(x_ND: Array, wte_VD: Array) -> Array:
    return _contract_last(x_ND, wte_VD)


def _tied_cpu_fwd(x_ND, wte_VD):
    return _contract_last(x_ND, wte_VD), (x_ND, wte_VD)


def _tied_cpu_bwd(res, g_NV):
    # d(wte) as (xᵀ·g)ᵀ: transposes the [D, V] result, not the [tokens, V] gradient.
    x_ND, wte_VD = res
    g_NV = g_NV.astype(x_ND.dtype)
    return jnp.dot(g_NV, wte_VD), jnp.dot(x_ND.T, g_NV).T.astype(wte_VD.dtype)


_tied_cpu.defvjp(_tied_cpu_fwd, _tied_cpu_bwd)


@jax.custom_vjp
def _tied_onednn(x_ND: Array, wte_VD: Array) -> Array:
    return _onednn(x_ND, wte_VD, trans_b=True)


def _tied_onednn_fwd(x_ND, wte_VD):
    return _onednn(x_ND, wte_VD, trans_b=True), (x_ND, wte_VD)


def _tied_onednn_bwd(res, g_NV):
    x_ND, wte_VD = res
    g_NV = g_NV.astype(x_ND.dtype)
    return _onednn(g_NV, wte_VD), _onednn(g_NV, x_ND, trans_a=True).astype(wte_VD.dtype)


_tied_onednn.defvjp(_tied_onednn_fwd, _tied_onednn_bwd)


def tied_logits(x_ND: Array, wte_VD: Array, impl: Impl = "plain") -> Array:
    """x @ wteᵀ."""
    if impl == "onednn" and x_ND.dtype == jnp.bfloat16 and wte_VD.dtype == jnp.bfloat16:
        return _tied_onednn(x_ND, wte_VD)
    if impl in ("xla_cpu", "onednn"):
        return _tied_cpu(x_ND, wte_VD)
    return jnp.dot(x_ND, wte_VD.T)


def head_copy(wte_VD: Array, impl: Impl = "plain") -> Array:
    """The tied head as a [D, V] array (a copy of wteᵀ); `pack`ed where `decode_weights` packs
    (a bf16 wte on the onednn path)."""
    w = jnp.asarray(wte_VD).T
    return pack(w) if wte_VD.dtype == jnp.bfloat16 and packable(w, impl) else w


def head_copy_rows(impl: Impl) -> int:
    """Decode batches of at least this many rows read the tied head through `head_copy` (0:
    never): XLA:CPU's batched (M >= 2) matmul is faster on the [D, V] layout; on the onednn path
    every batch size reads it (`pack`ed when the weights are bf16)."""
    return {"xla_cpu": 2, "onednn": 1}.get(impl, 0)


# ---- log-softmax target pick and argmax ----------------------------------------------------------

def target_logits(logits_BTV: Array, targets_BT: Array, impl: Impl = "plain") -> Array:
    """logits[..., target] per position."""
    if impl in ("xla_cpu", "onednn"):
        # A one-hot select fuses into the reduction, and its gradient is elementwise instead of
        # a scatter (slow on XLA:CPU).
        hit = targets_BT[..., None] == jnp.arange(logits_BTV.shape[-1], dtype=targets_BT.dtype)
        return jnp.sum(jnp.where(hit, logits_BTV, 0.0), axis=-1)
    return jnp.take_along_axis(logits_BTV, targets_BT[..., None].astype(jnp.int32), axis=-1)[..., 0]


def argmax(x: Array, impl: Impl = "plain") -> Array:
    """First index of the maximum along the last axis (int32), as `jnp.argmax` for finite x."""
    if impl not in ("xla_cpu", "onednn"):
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    # Two plain reductions: XLA:CPU's variadic (value, index) reduce is several times slower.
    V = x.shape[-1]
    m = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(x == m, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(idx, V - 1)      # all-NaN row: no element equals the max


# ---- causal self-attention (training and full-sequence forward) ----------------------------------

def causal_attention(q_BTNH: Array, k_BTKH: Array, v_BTKH: Array, scale: float,
                     impl: Impl = "plain", mask_B1TS: Optional[Array] = None) -> Array:
    """softmax(q kᵀ · scale) v per head over the keys `mask_B1TS` allows (default: causal),
    softmax in float32. On the onednn path, bf16 multi-head attention runs its four batched
    matmuls (and the backward's) through oneDNN, reading the [B, T, heads, H] activations in
    place; else `jax.nn.dot_product_attention`. A mask (packed documents) keeps the onednn path."""
    if impl == "onednn" and q_BTNH.dtype == jnp.bfloat16 and \
            q_BTNH.shape[2] == k_BTKH.shape[2] and k_BTKH.dtype == v_BTKH.dtype == jnp.bfloat16:
        T = q_BTNH.shape[1]
        if mask_B1TS is None:
            mask_B1TS = jnp.tril(jnp.ones((T, T), bool))[None, None]
        return _attention_onednn(q_BTNH, k_BTKH, v_BTKH, mask_B1TS, scale)
    # JAX's opt-in softmax rule (backward p·(g − Σ g·p)): better memory and stability, and no
    # slow reduce on XLA:CPU (docs/performance.md).
    with jax.softmax_custom_jvp(True):
        if mask_B1TS is None:
            return jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, is_causal=True,
                                                scale=scale)
        return jax.nn.dot_product_attention(q_BTNH, k_BTKH, v_BTKH, mask=mask_B1TS, scale=scale)


def decode_attention_ok(impl: Impl, head_dim: int) -> bool:
    """Whether a one-token decode step attends through `decode_attention`: the onednn path on a
    CPU with AVX-512 (the packed decode weights' condition), head_dim a multiple of 16 to 256."""
    return impl == "onednn" and head_dim % 16 == 0 and head_dim <= 256 and \
        cpu.cpu_has_avx512_bf16()


def decode_attention(q_BKGH: Array, k_new_BKH: Array, v_new_BKH: Array, k_BKSH: Array,
                     v_BKSH: Array, pos_B: Array, scale: float) -> tuple[Array, Array, Array]:
    """One decode step's attention through a layer's cache, in place: the new key and value
    written at slot pos[b] of each row (none at a position past the buffer: a no-op row), then
    softmax(scale · q kᵀ) v over the slots j <= pos[b] (every slot for a no-op row); (y float32
    [B, K, G, H], k, v). The same as `lm.layers.cached_attention` at T = 1, but it reads only a
    row's filled slots, from a bf16 or float32 cache as stored, where XLA reads (and at one row
    transposes) the whole buffer and scatters into a bf16 one through float32 copies of it.
    Inference only (no gradient)."""
    outs = (jax.ShapeDtypeStruct(q_BKGH.shape, jnp.float32),
            jax.ShapeDtypeStruct(k_BKSH.shape, k_BKSH.dtype),
            jax.ShapeDtypeStruct(v_BKSH.shape, v_BKSH.dtype))
    call = jax.ffi.ffi_call(cpu.ATTENTION_TARGET, outs, input_output_aliases={3: 1, 4: 2})
    return call(q_BKGH.astype(jnp.float32), k_new_BKH.astype(k_BKSH.dtype),
                v_new_BKH.astype(v_BKSH.dtype), k_BKSH, v_BKSH, pos_B.astype(jnp.int32),
                scale=np.float32(scale))


_HEADS = (0, 2, 1, 3)      # [B, T, N, H] read as [B, N, T, H]


def _scores(a_BTNH, b_BTNH):
    """a bᵀ per (batch, head): [B, N, T, T] in float32."""
    B, T, N, _ = a_BTNH.shape
    return onednn_mm(a_BTNH, b_BTNH, _HEADS, (0, 2, 3, 1), (B, N, T, b_BTNH.shape[1]),
                     out_dtype=jnp.float32)


def _apply(p_BNTS, v_BSNH, transpose_p=False):
    """p v per (batch, head) (pᵀ v with `transpose_p`), written as [B, T, N, H]."""
    B, S, N, H = v_BSNH.shape
    T = p_BNTS.shape[3] if transpose_p else p_BNTS.shape[2]
    return onednn_mm(p_BNTS, v_BSNH, (0, 1, 3, 2) if transpose_p else (0, 1, 2, 3), _HEADS,
                     (B, T, N, H), out_perm=_HEADS)


def _attention_onednn_fwd(q, k, v, mask_B1TS, scale):
    s_BNTS = _scores(q, k) * scale
    s_BNTS = jnp.where(mask_B1TS, s_BNTS, jnp.finfo(jnp.float32).min)
    p_BNTS = jax.nn.softmax(s_BNTS, axis=-1).astype(jnp.bfloat16)
    o = _apply(p_BNTS, v)
    return o, (q, k, v, mask_B1TS, p_BNTS, o)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention_onednn(q, k, v, mask_B1TS, scale):
    return _attention_onednn_fwd(q, k, v, mask_B1TS, scale)[0]


def _attention_onednn_bwd(scale, res, do):
    q, k, v, mask_B1TS, p_BNTS, o = res
    do = do.astype(q.dtype)
    dv = _apply(p_BNTS, do, transpose_p=True)
    dp_BNTS = _scores(do, v)
    delta_BNT1 = jnp.einsum("btnh,btnh->bnt", do.astype(jnp.float32),
                            o.astype(jnp.float32))[..., None]
    ds_BNTS = (p_BNTS.astype(jnp.float32) * (dp_BNTS - delta_BNT1) * scale).astype(q.dtype)
    dq = _apply(ds_BNTS, k)
    dk = _apply(ds_BNTS, q, transpose_p=True)
    return dq, dk, dv, None


_attention_onednn.defvjp(_attention_onednn_fwd, _attention_onednn_bwd)
