"""Decisions made once per process, at the entry points (the CLIs, `lm.train`): the compute dtype
a config's `model.dtype="auto"` means on this host, and how many XLA devices the CPU is split
into. Everything below the entry points reads the decided values.

    cfg = process.configure(cfg)        # a CLI, before JAX starts: resolve + devices for cfg
    process.configure_devices(rows=32)  # a CLI without a training config (eval, serve, chat)
    cfg = process.resolve(cfg)          # pure: model.dtype "auto" decided for this host
"""
from __future__ import annotations

import dataclasses

from lm import kernels, parallel
from lm.config import Config


def resolve(cfg: Config) -> Config:
    """A copy of `cfg` whose `model.dtype` "auto" is decided: bfloat16 where lm's bf16 CPU kernels
    run (faster than fp32 there, docs/performance.md), float32 elsewhere."""
    if cfg.model.dtype != "auto":
        return cfg
    dtype = "bfloat16" if kernels.bf16_kernels_expected() else "float32"
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype=dtype))


def configure(cfg: Config) -> Config:
    """`resolve(cfg)`, and the CPU split into XLA devices for it (before JAX starts):
    `mesh.cpu_devices` if set; else one device for the oneDNN path (its custom calls are not
    partitioned; it uses every core), else the most devices up to the core count that divide a
    step's rows. With several devices, `model.kernels=auto` then takes XLA's own dot."""
    cfg = resolve(cfg)
    if cfg.mesh.cpu_devices:
        n = cfg.mesh.cpu_devices
    elif kernels.needs_single_device(cfg.model):
        n = 1
    else:
        n = parallel.auto_cpu_devices(max(cfg.data.batch_size // cfg.train.grad_accum, 1))
    parallel.configure_cpu_devices(n)
    return cfg


def configure_devices(*, rows: int = 1) -> int:
    """The CPU split for a command without a training config: the most devices that divide
    `rows` (1: one device using every core, as the server's engine wants)."""
    return parallel.configure_cpu_devices(parallel.auto_cpu_devices(max(rows, 1)))
