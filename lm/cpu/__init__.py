"""The CPU custom calls of onednn_matmul.cc (oneDNN's matmul, the few-row packed matmul, decode
attention): built on first use, cached, registered with JAX's FFI. `lm.kernels` is their only
user.

The library is compiled with the system C++ compiler against jaxlib's FFI headers and the
`onednn-cpu-gomp` / `onednn-devel-cpu-gomp` wheels (requirements.txt), into
`lm.paths.machine_cache_dir("cpu")` (shared by every work folder), keyed by the source, the
jaxlib version and the environment it links against. Where anything is
missing (no compiler, no wheel), `load()` returns None with the reason in `load_error()`, and the
kernels fall back to XLA's own dot.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import sys
import threading
from typing import Optional

import jax
import jaxlib

from lm import paths

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "onednn_matmul.cc")
TARGET = "lm_onednn_matmul"
PACKED_TARGET = "lm_packed_matmul"   # few-row bf16 matmul, weights packed (lm.kernels.pack)
ATTENTION_TARGET = "lm_decode_attention"   # one query per row over its cache's filled prefix
_lock = threading.Lock()
_state: dict = {}


# What each XLA ISA cap (--xla_cpu_max_isa=...) leaves out of the CPU's flags: a capped process
# (tools.bench_host's --isa, an AVX2-only host emulated from a bigger one) must pick the dtype and
# kernels that host would, not those of the CPU underneath.
_ISA_DROPS = {
    "SSE4_2": ("avx", "fma", "f16c", "avx512", "amx"), "AVX": ("avx2", "fma", "avx512", "amx"),
    "AVX2": ("avx512", "amx"), "AVX512": ("avx512_vnni", "avx512_bf16", "amx"),
    "AVX512_VNNI": ("avx512_bf16", "amx"), "AVX512_BF16": ("amx",),
}


def isa_cap(xla_flags: Optional[str] = None) -> Optional[str]:
    """The ISA cap in XLA_FLAGS (`--xla_cpu_max_isa=AVX2`), upper-cased; None without one."""
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    caps = [f.split("=", 1)[1].upper() for f in flags.split() if f.startswith("--xla_cpu_max_isa=")]
    return caps[-1] if caps else None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo; empty where it cannot be read), less what the ISA
    cap in XLA_FLAGS excludes."""
    return capped(_proc_flags(), isa_cap())


@functools.lru_cache(maxsize=1)
def _proc_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((ln for ln in f if ln.startswith("flags")), "").split())
    except OSError:
        return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; '' where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("model name")), "")
    except OSError:
        return ""
    return line.split(":", 1)[1].strip() if ":" in line else ""


def capped(flags: frozenset[str], cap: Optional[str]) -> frozenset[str]:
    """`flags` as a CPU capped at `cap` shows them (an unknown cap drops nothing: XLA rejects it)."""
    drops = _ISA_DROPS.get(cap or "", ())
    return frozenset(f for f in flags if not f.startswith(drops))


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix hardware oneDNN uses (AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_avx512_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 (the few-row decode kernel's instructions)."""
    return "avx512_bf16" in cpu_flags()


def onednn_prefix() -> Optional[str]:
    for root in {sys.prefix, sys.base_prefix}:
        if os.path.exists(os.path.join(root, "include", "dnnl.hpp")) and \
                os.path.exists(os.path.join(root, "lib", "libdnnl.so.3")):
            return root
    return None


def build() -> str:
    """Compile the library if needed; its path (RuntimeError naming what is missing)."""
    prefix = onednn_prefix()
    if prefix is None:
        raise RuntimeError("oneDNN headers/library not found in this environment (pip install "
                           "onednn-cpu-gomp onednn-devel-cpu-gomp: requirements.txt)")
    src = open(SOURCE, "rb").read()
    flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp"]  # omp_*: threads per call
    key = hashlib.sha256(src + jaxlib.__version__.encode() + " ".join(flags).encode()
                         + prefix.encode() + jax.ffi.include_dir().encode()).hexdigest()[:12]
    out = os.path.join(paths.machine_cache_dir("cpu"), f"liblm_onednn-{key}.so")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cxx = os.environ.get("CXX", "g++")
    tmp = f"{out}.tmp{os.getpid()}"
    cmd = [cxx, *flags, "-I", jax.ffi.include_dir(), "-I",
           os.path.join(prefix, "include"), SOURCE, "-L", os.path.join(prefix, "lib"), "-ldnnl",
           f"-Wl,-rpath,{os.path.join(prefix, 'lib')}", "-o", tmp]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise RuntimeError(f"no C++ compiler ({cxx}) to build the oneDNN kernel") from None
    if r.returncode != 0:
        raise RuntimeError(f"building the oneDNN kernel failed:\n{r.stderr[-2000:]}")
    os.replace(tmp, out)
    return out


def load() -> Optional[ctypes.CDLL]:
    """The registered library, or None (see `load_error`)."""
    with _lock:
        if "lib" in _state or "error" in _state:
            return _state.get("lib")
        try:
            lib = ctypes.cdll.LoadLibrary(build())
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.LmOnednnMatmul),
                                        platform="cpu")
            jax.ffi.register_ffi_target(PACKED_TARGET, jax.ffi.pycapsule(lib.LmPackedMatmul),
                                        platform="cpu")
            jax.ffi.register_ffi_target(ATTENTION_TARGET,
                                        jax.ffi.pycapsule(lib.LmDecodeAttention), platform="cpu")
            _state["lib"] = lib
        except Exception as e:  # noqa: BLE001 - any failure means: use XLA's dot
            _state["error"] = f"{type(e).__name__}: {e}"
        return _state.get("lib")


def load_error() -> Optional[str]:
    return _state.get("error")


def isa() -> Optional[int]:
    """oneDNN's effective ISA on this CPU (dnnl_cpu_isa_t), or None."""
    lib = load()
    return None if lib is None else int(lib.lm_onednn_isa())
