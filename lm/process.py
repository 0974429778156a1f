"""Decisions made once per process, at the entry points (the CLIs, `lm.train`): the compute dtype
a config's `model.dtype="auto"` means on this host, and how many XLA devices the CPU is split
into. Everything below the entry points reads the decided values.

    cfg = process.configure(cfg)        # a CLI, before JAX starts: resolve + devices for cfg
    process.configure_devices(rows=32)  # a CLI without a training config (eval, serve, chat)
    cfg = process.resolve(cfg)          # pure: model.dtype "auto" decided for this host

Both `configure` calls also keep XLA's compiled programs across processes (`compile_cache`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Optional

import jax

from lm import cpu, kernels, parallel, paths
from lm.config import Config


def resolve(cfg: Config) -> Config:
    """A copy of `cfg` whose "auto" choices are decided for this host: `model.dtype` bfloat16
    where lm's bf16 CPU kernels run (faster than fp32 there, docs/performance.md), float32
    elsewhere; `mesh.parallelism` (`per_core_pmap`)."""
    if cfg.model.dtype == "auto":
        dtype = "bfloat16" if kernels.bf16_kernels_expected() else "float32"
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))
    if cfg.mesh.parallelism == "auto":
        how = "pmap" if per_core_pmap(cfg) else "jit"
        cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, parallelism=how))
    return cfg


def per_core_pmap(cfg: Config) -> bool:
    """Whether `mesh.parallelism=auto` means pmap over the cores: a bf16 step through the oneDNN
    custom calls (which a jit mesh of several devices cannot partition) whose products are all
    small enough that oneDNN runs them on one thread. One device then leaves the other cores
    idle; one pmap program per core runs its share of the rows beside the others (the main job:
    28 -> 22 ms a step on 2 cores, docs/performance.md). Data parallelism only (mesh.fsdp 1)."""
    if cfg.model.dtype != "bfloat16" or not kernels.needs_single_device(cfg.model):
        return False
    if cfg.mesh.fsdp != 1 or cfg.mesh.cpu_devices == 1:
        return False
    n = cfg.mesh.cpu_devices or parallel.auto_cpu_devices(step_rows(cfg))
    tokens = step_rows(cfg) * cfg.data.seq_len
    return n > 1 and kernels.largest_product_macs(cfg.model, tokens) < kernels.serial_macs()


def step_rows(cfg: Config) -> int:
    """Batch rows in one forward of a training step (a micro-batch under grad_accum)."""
    return max(cfg.data.batch_size // cfg.train.grad_accum, 1)


def configure(cfg: Config) -> Config:
    """`resolve(cfg)`, and the CPU split into XLA devices for it (before JAX starts):
    `mesh.cpu_devices` if set; else one device for the oneDNN path under jit (its custom calls
    are not partitioned; it uses every core), else the most devices up to the core count that
    divide a step's rows. With several devices under jit, `model.kernels=auto` then takes XLA's
    own dot; under pmap each device's program keeps the oneDNN calls."""
    cfg = resolve(cfg)
    pmap = parallel.per_device_programs(cfg.mesh)
    if cfg.mesh.cpu_devices:
        n = cfg.mesh.cpu_devices
    elif kernels.needs_single_device(cfg.model) and not pmap:
        n = 1
    else:
        n = parallel.auto_cpu_devices(step_rows(cfg))
    parallel.configure_cpu_devices(n)
    kernels.set_per_device_programs(pmap)
    compile_cache()
    return cfg


def configure_devices(*, rows: int = 1) -> int:
    """The CPU split for a command without a training config: the most devices that divide
    `rows` (1: one device using every core, as the server's engine wants)."""
    n = parallel.configure_cpu_devices(parallel.auto_cpu_devices(max(rows, 1)))
    compile_cache()
    return n


def compile_cache() -> Optional[str]:
    """Turn on JAX's persistent compilation cache: a program compiled once (a train step, an
    evaluation, the sampler's prefill and decode) is loaded, not recompiled, by every later
    process with the same program, flags and versions (the main job compiles for ~5 s of its
    minute). One folder per CPU model and feature set under `paths.machine_cache_dir("xla")`
    (XLA:CPU compiles for the CPU it runs on; JAX's own key does not name it). A folder the user
    set (`jax_compilation_cache_dir`) is kept; `LM_COMPILE_CACHE=0` turns it off. Returns the
    folder in use (None: off)."""
    if os.environ.get("LM_COMPILE_CACHE", "1") == "0":
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    host = cpu.cpu_model() + "|" + " ".join(sorted(cpu.cpu_flags()))
    d = paths.machine_cache_dir("xla", hashlib.sha256(host.encode()).hexdigest()[:12])
    jax.config.update("jax_compilation_cache_dir", d)
    # the small programs (a cast, a slice) compile in milliseconds: not worth a file each
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return d
