"""Mesh, logical-axis rules and shardings: the one place that maps model axes to devices.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism with parameters
and optimizer state sharded). Parameters carry logical axis names (see `lm.layers`); `RULES` maps
them to mesh axes. A dimension that the mesh axis does not divide stays replicated.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import warnings
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import flax.linen as nn
from jax._src import xla_bridge
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lm.config import MeshConfig

# logical axis -> mesh axis (or None = replicated)
RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "embed": "fsdp",
    "vocab": None,
    "heads": None,
    "mlp": None,
    "norm": None,
}


# ---- CPU hosts: one XLA device per core ----------------------------------------------------------

def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_cpu_devices(rows: int, cores: int | None = None) -> int:
    """The most devices, up to `cores`, that split `rows` batch rows evenly."""
    cores = host_cores() if cores is None else cores
    return max(d for d in range(1, max(cores, 1) + 1) if rows % d == 0)


def configure_cpu_devices(n: int) -> int:
    """Expose the host CPU as `n` XLA devices, so a data-parallel mesh runs one shard per core.

    Why: XLA:CPU runs one device's step as a chain of small kernels that its intra-op threads
    barely parallelise at small widths; `n` devices run their shards concurrently
    (docs/performance.md). Has no effect on accelerator hosts' default devices. Must run before
    JAX initialises its backends; an explicit `--xla_force_host_platform_device_count` in
    XLA_FLAGS wins. Returns the CPU device count that will be in effect (or already is).
    """
    if n < 1:
        raise ValueError(f"cpu devices must be >= 1, got {n}")
    forced = re.search(r"--xla_force_host_platform_device_count=(\d+)", os.environ.get("XLA_FLAGS", ""))
    if forced:
        return int(forced.group(1))
    try:  # JAX has no public "already started?" query; the config update below also refuses
        started = xla_bridge.backends_are_initialized()
    except AttributeError:
        started = False
    if not started:
        try:
            jax.config.update("jax_num_cpu_devices", n)
            return n
        except RuntimeError:
            pass
    have = len(jax.devices("cpu"))
    if have != n:
        warnings.warn(f"JAX is already initialised with {have} CPU device(s); cannot switch to "
                      f"{n} (call lm.parallel.configure_cpu_devices right after importing jax)")
    return have


# ---- several hosts --------------------------------------------------------------------------------

def init_distributed(coordinator: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """`jax.distributed.initialize` for runs on several hosts (one process each).

    The coordinator address, process count and id come from the arguments, else from
    $LM_COORDINATOR_ADDRESS / $LM_NUM_PROCESSES / $LM_PROCESS_ID; with none of them and
    LM_DISTRIBUTED=1, JAX detects the cluster itself (Cloud TPU, Slurm, ...). CPU processes use
    gloo collectives. Returns whether this is a multi-process run.
    """
    env = os.environ
    coordinator = coordinator or env.get("LM_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("LM_NUM_PROCESSES"):
        num_processes = int(env["LM_NUM_PROCESSES"])
    if process_id is None and env.get("LM_PROCESS_ID"):
        process_id = int(env["LM_PROCESS_ID"])
    given = [x is not None for x in (coordinator, num_processes, process_id)]
    if not any(given):
        if env.get("LM_DISTRIBUTED") == "1":
            jax.distributed.initialize()          # auto-detected cluster
            return True
        return False
    if not all(given):
        raise ValueError("several hosts need all of --coordinator HOST:PORT, --num_processes N "
                         "and --process_id I (or LM_COORDINATOR_ADDRESS, LM_NUM_PROCESSES, "
                         "LM_PROCESS_ID)")
    if not 0 <= process_id < num_processes:
        raise ValueError(f"--process_id {process_id} must be in [0, {num_processes})")
    if env.get("JAX_PLATFORMS", "").startswith("cpu") or cpu_only():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True


def cpu_only() -> bool:
    """No accelerator plugin installed (the CPU jaxlib only): multi-process CPU runs need gloo."""
    return not any(importlib.util.find_spec(m) for m in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                                           "libtpu", "jax_rocm60_plugin"))


def is_main_process() -> bool:
    """Process 0: the one that writes a run's files and logs."""
    return jax.process_index() == 0


def shared_choice(value: int) -> int:
    """Process 0's `value` on every process (e.g. the run directory's timestamp)."""
    if jax.process_count() == 1:
        return value
    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    fsdp = cfg.fsdp
    data = cfg.data if cfg.data > 0 else len(devices) // fsdp
    if data * fsdp > len(devices) or data < 1:
        raise ValueError(f"mesh.data={cfg.data} × mesh.fsdp={cfg.fsdp} needs {max(data, 1) * fsdp} "
                         f"devices; {len(devices)} available")
    grid = np.array(devices[:data * fsdp]).reshape(data, fsdp)
    return Mesh(grid, ("data", "fsdp"))


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def _mesh_axes(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> P:
    out = []
    for name, dim in zip(logical, shape):
        axis = RULES.get(name) if name is not None else None
        if axis is not None:
            size = math.prod(mesh.shape[a] for a in (axis if isinstance(axis, tuple) else (axis,)))
            if size == 1 or dim % size:
                axis = None
        out.append(axis)
    return P(*out)


def param_shardings(boxed_params, mesh: Mesh):
    """NamedSharding per parameter from its logical axes (boxed as `nn.LogicallyPartitioned`)."""
    def one(x):
        if isinstance(x, nn.LogicallyPartitioned):
            return NamedSharding(mesh, _mesh_axes(x.names, x.value.shape, mesh))
        return NamedSharding(mesh, P())
    return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))


def _key_path(path) -> str:
    return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def tree_shardings_like(tree, params_abstract, params_sh, mesh: Mesh):
    """Shardings for a pytree (e.g. optimizer state) whose leaves mirror parameters by dict path.

    Leaves whose dict-key path ends with a parameter's path and shape get that parameter's
    sharding (Adam moments); everything else (counts, scalars) is replicated.
    """
    by_path = {}
    for (path, leaf), sh in zip(jax.tree_util.tree_leaves_with_path(params_abstract),
                                jax.tree.leaves(params_sh)):
        by_path[_key_path(path)] = (leaf.shape, sh)

    def one(path, leaf):
        hit = by_path.get(_key_path(path))
        if hit is not None and hit[0] == getattr(leaf, "shape", None):
            return hit[1]
        return NamedSharding(mesh, P())
    return jax.tree_util.tree_map_with_path(one, tree)


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Rows split over every data-parallel device; the sequence dimension replicated.
    `leading`: unsharded axes before the rows (batches stacked for a scan)."""
    return NamedSharding(mesh, P(*([None] * leading), RULES["batch"]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ---- placing state and batches: jit over the mesh, or pmap ---------------------------------------

def put_global_batch(batch: dict, sharding, row_axis: int = 0) -> dict:
    """Place a global batch (the same numpy arrays on every host) with `sharding`.

    On several hosts each process contributes only its own rows (axis `row_axis`).
    """
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    n, i = jax.process_count(), jax.process_index()

    def one(x):
        rows = x.shape[row_axis] // n
        local = np.take(x, np.arange(i * rows, (i + 1) * rows), axis=row_axis)
        return jax.make_array_from_process_local_data(sharding, local, x.shape)
    return {k: one(v) for k, v in batch.items()}


@dataclasses.dataclass
class JitPlacement:
    """`jax.jit` with explicit shardings over the mesh: the state sharded by its parameters'
    logical axes (`state_sharding`), batches split by rows, the state donated to the step."""
    mesh: Mesh
    state_sharding: Any
    axis_name: Optional[str] = None       # a jitted step needs no collective of its own
    aot: bool = True                      # `--dry_run` can lower and compile it ahead of time
    loss_pieces: int = 1                  # the jitted step's loss sees every row of the batch

    def compile_train(self, step: Callable) -> Callable:
        return jax.jit(step, in_shardings=(self.state_sharding, batch_sharding(self.mesh)),
                       out_shardings=(self.state_sharding, replicated(self.mesh)),
                       donate_argnums=(0,))

    def compile_eval(self, fn: Callable) -> Callable:
        return jax.jit(fn, in_shardings=(self.state_sharding.params,
                                         batch_sharding(self.mesh, leading=1),
                                         replicated(self.mesh)),
                       out_shardings=replicated(self.mesh))

    def put_batch(self, batch: dict) -> dict:
        return put_global_batch(batch, batch_sharding(self.mesh))

    def put_batches(self, stacked: dict) -> dict:
        """Batches stacked on a leading axis (an eval scan)."""
        return put_global_batch(stacked, batch_sharding(self.mesh, leading=1), row_axis=1)

    def init(self, make_state: Callable):
        return jax.jit(make_state, out_shardings=self.state_sharding)()

    def to_device(self, host_state):
        return jax.device_put(host_state, self.state_sharding)

    def to_host(self, state):
        return state

    def fetch(self, tree):
        return jax.device_get(tree)

    def restore_target(self, abstract_state):
        """Abstract state with the shardings a checkpoint restore should produce."""
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            abstract_state, self.state_sharding)


PMAP_AXIS = "batch"


@dataclasses.dataclass
class PmapPlacement:
    """The classic data-parallel path: `jax.pmap` over the mesh's devices, one replica of the
    state per device (a leading axis), each device's rows split off the global batch, gradients
    averaged with `lax.pmean` over `axis_name` inside the step."""
    mesh: Mesh
    axis_name: str = PMAP_AXIS
    aot: bool = False

    @property
    def devices(self) -> list:
        return list(self.mesh.devices.flat)

    @property
    def loss_pieces(self) -> int:
        """How many pieces of the batch a step's loss is computed on and averaged over (`pmean`):
        one per device."""
        return len(self.devices)

    def compile_train(self, step: Callable) -> Callable:
        return jax.pmap(step, axis_name=self.axis_name, donate_argnums=(0,),
                        devices=self.devices)

    def compile_eval(self, fn: Callable) -> Callable:
        return jax.pmap(fn, axis_name=self.axis_name, in_axes=(0, 0, None), devices=self.devices)

    def put_batch(self, batch: dict) -> dict:
        return pmap_split_batch(batch, len(self.devices))

    def put_batches(self, stacked: dict) -> dict:
        return pmap_split_batch(stacked, len(self.devices), axis=1)

    def init(self, make_state: Callable):
        return self.to_device(jax.jit(make_state)())

    def to_device(self, host_state):
        return pmap_replicate(host_state, self.devices)

    def to_host(self, state):
        return pmap_unreplicate(state)

    def fetch(self, tree):
        return pmap_unreplicate(jax.device_get(tree))

    def restore_target(self, abstract_state):
        dev = jax.sharding.SingleDeviceSharding(self.devices[0])
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                            abstract_state)


def per_device_programs(mesh_cfg) -> bool:
    """Whether a config's steps run as one program per device (pmap): a custom call that jit's
    partitioner cannot split (the oneDNN kernels) is then each device's own."""
    return mesh_cfg.parallelism == "pmap"


def placement(parallelism: str, mesh: Mesh, state_sharding: Callable[[], Any]):
    """The adapter for `mesh.parallelism` (`state_sharding()` builds the jit path's shardings;
    an undecided "auto", a config that skipped lm.process, is jit)."""
    if parallelism == "pmap":
        if mesh.shape["fsdp"] != 1:
            raise ValueError("mesh.parallelism=pmap is pure data parallelism: set mesh.fsdp=1")
        return PmapPlacement(mesh)
    return JitPlacement(mesh, state_sharding())


def pmap_replicate(tree, devices):
    """One copy of every leaf per device, stacked on a leading axis (pmap's layout)."""
    devices = list(devices)
    sh = NamedSharding(Mesh(np.array(devices), ("replica",)), P("replica"))
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x)[None], (len(devices),) + x.shape),
                                 sh), tree)


def pmap_split_batch(batch: dict, n: int, axis: int = 0) -> dict:
    """Numpy arrays with rows on `axis` -> a leading device axis of n: [B, ...] -> [n, B/n, ...]
    (axis 0), or [G, B, ...] -> [n, G, B/n, ...] (axis 1, batches stacked for a scan)."""
    def split(x):
        rows = x.shape[axis]
        if rows % n:
            raise ValueError(f"batch of {rows} rows does not split over {n} devices")
        x = x.reshape(*x.shape[:axis], n, rows // n, *x.shape[axis + 1:])
        return np.moveaxis(x, axis, 0)
    return {k: split(v) for k, v in batch.items()}


def pmap_unreplicate(tree):
    return jax.tree.map(lambda x: x[0], tree)
