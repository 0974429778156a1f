"""The one seam for backend-specific kernels: each fast path beside its plain-JAX meaning.

`model.py`, `layers.py`, `losses.py` and `sampling.py` call these functions with an `impl` name
and otherwise read as architecture. `ModelConfig.kernels` picks it:

- `plain`: straight JAX (`jnp.dot`, `x @ wteᵀ`, `take_along_axis`, `jnp.argmax`). Every transform
  works, `jax.jvp` / `jax.jacfwd` included. What accelerators get by default.
- `xla_cpu`: the same arithmetic laid out for XLA:CPU (hand-written backward passes that keep
  gradients in the weights' own layout, a one-hot target select, a two-reduction argmax, a [D, V]
  copy of the tied head for batched decode). Reverse-mode only where a custom VJP is used.
- `onednn`: `xla_cpu`, with the Linear layers' bf16 matmuls (forward and backward) run by oneDNN
  through a JAX FFI custom call (`lm/cpu`): on CPUs with bf16 hardware (AVX512-BF16, AMX) oneDNN
  uses it, where XLA:CPU's bf16 dot is slower than its fp32 one. Needs one CPU device (the custom
  call is not partitioned over a mesh).
- `auto` (default): on the CPU, `onednn` for bf16 compute on a CPU with bf16 hardware (when the
  kernel builds), else `xla_cpu`; `plain` on accelerators.

Why each one exists, with the measurements: docs/performance.md ("The kernel seam").
"""
from __future__ import annotations

import os
from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
Impl = Literal["plain", "xla_cpu", "onednn"]
CHOICES = ("auto", "plain", "xla_cpu", "onednn")


def resolve(choice: str, dtype: str = "float32") -> Impl:
    """The implementation a config's `kernels` choice (with its compute `dtype`) means on this
    process's default backend."""
    if choice not in CHOICES:
        raise ValueError(f"kernels: {choice!r} is not one of {list(CHOICES)}")
    if choice == "auto":
        if jax.default_backend() != "cpu":
            return "plain"
        return "onednn" if dtype == "bfloat16" and onednn_available() else "xla_cpu"
    if choice == "onednn" and not onednn_available():
        from lm import cpu
        raise RuntimeError(f"kernels=onednn: the oneDNN kernel is unavailable ({cpu.load_error()})")
    return choice  # type: ignore[return-value]


def resolve_for(cfg) -> Impl:
    """`resolve` of a ModelConfig."""
    return resolve(cfg.kernels, cfg.dtype)


def onednn_available() -> bool:
    """A CPU with bf16 hardware and the oneDNN custom call built and registered."""
    from lm import cpu
    return cpu.cpu_has_bf16() and cpu.load() is not None


def needs_single_device(cfg) -> bool:
    """Whether a config runs the oneDNN custom call, which a CPU mesh of several devices cannot
    partition (checked before JAX starts: no backend query)."""
    from lm import cpu
    if cfg.dtype != "bfloat16" or cfg.kernels not in ("auto", "onednn"):
        return False
    if os.environ.get("JAX_PLATFORMS", "cpu").split(",")[0] not in ("", "cpu"):
        return False
    from lm.parallel import _cpu_only
    return _cpu_only() and cpu.cpu_has_bf16() and cpu._onednn_prefix() is not None


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


def _onednn(a: Array, b: Array, trans_a: bool = False, trans_b: bool = False) -> Array:
    from lm import cpu
    if cpu.load() is None:
        raise RuntimeError(f"the oneDNN kernel is unavailable: {cpu.load_error()}")
    M = a.shape[1] if trans_a else a.shape[0]
    N = b.shape[0] if trans_b else b.shape[1]
    return jax.ffi.ffi_call("lm_onednn_matmul", jax.ShapeDtypeStruct((M, N), a.dtype))(
        a, b, trans_a=trans_a, trans_b=trans_b)


@jax.custom_vjp
def _matmul_onednn(x_MD: Array, w_DF: Array) -> Array:
    return _onednn(x_MD, w_DF)


def _matmul_onednn_fwd(x_MD, w_DF):
    return _onednn(x_MD, w_DF), (x_MD, w_DF)


def _matmul_onednn_bwd(res, g_MF):
    x_MD, w_DF = res
    g_MF = g_MF.astype(x_MD.dtype)
    # dx = g·Wᵀ and dW = xᵀ·g (W's own layout), transposes read in place by oneDNN
    return _onednn(g_MF, w_DF, trans_b=True), _onednn(x_MD, g_MF, trans_a=True).astype(w_DF.dtype)


_matmul_onednn.defvjp(_matmul_onednn_fwd, _matmul_onednn_bwd)


def matmul(x_MD: Array, w_DF: Array, impl: Impl = "plain") -> Array:
    """x @ w."""
    if impl == "onednn" and x_MD.dtype == jnp.bfloat16 and w_DF.dtype == jnp.bfloat16:
        return _matmul_onednn(x_MD, w_DF)
    if impl in ("xla_cpu", "onednn"):
        return _matmul_cpu(x_MD, w_DF)
    return jnp.dot(x_MD, w_DF)


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


def tied_logits(x_ND: Array, wte_VD: Array, impl: Impl = "plain",
                head_DV: Array | None = None) -> Array:
    """x @ wteᵀ. `head_DV`, if given, is `head_copy(wte)` (inference only: no gradient reaches
    wte through it)."""
    if head_DV is not None:
        return jnp.dot(x_ND, head_DV.astype(x_ND.dtype))
    if impl == "onednn" and x_ND.dtype == jnp.bfloat16 and wte_VD.dtype == jnp.bfloat16:
        return _tied_onednn(x_ND, wte_VD)
    if impl in ("xla_cpu", "onednn"):
        return _tied_cpu(x_ND, wte_VD)
    return jnp.dot(x_ND, wte_VD.T)


def head_copy(wte_VD: Array) -> Array:
    """The tied head as a [D, V] array (a copy of wteᵀ)."""
    return jnp.asarray(wte_VD).T


def head_copy_rows(impl: Impl) -> int:
    """Decode batches of at least this many rows read the tied head through `head_copy` (0:
    never): XLA:CPU's batched (M >= 2) matmul is faster on the [D, V] layout."""
    return 2 if impl in ("xla_cpu", "onednn") else 0


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
