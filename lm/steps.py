"""The compiled steps: the pure `train_step` / `eval_step`, built from a pluggable loss, compiled
once over the mesh (`lm.parallel`'s jit or pmap placement), validation over stacked batches, and
what a step costs (FLOPs, memory, MFU).

The step is built from a loss closure (`loss_fn(params, batch, rng) -> (loss, metrics)`), so SFT
and RL objectives reuse the same step, sharding and checkpointing.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lm import kernels, losses, model, parallel
from lm.config import Config
from lm.optim import make_optimizer, schedule as make_schedule
from lm.state import TrainState, abstract_state, init_state

Batch = dict[str, Any]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict]]


def lm_loss(cfg: Config) -> LossFn:
    """Next-token cross-entropy (with optional z-loss and per-token weights) of the model."""
    mcfg, z = cfg.model, cfg.optim.z_loss

    def loss_fn(params, batch, rng):
        logits = model.apply(params, mcfg, batch["inputs"],
                             positions_BT=batch.get("positions"),
                             segment_ids_BT=batch.get("segment_ids"),
                             dropout_rng=rng if mcfg.dropout > 0 else None)
        return losses.cross_entropy(logits, batch["targets"], batch.get("weights"), z,
                                    kernels.resolve_for(mcfg))
    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg",))
def sequence_logprobs(params, cfg, inputs, targets):
    """log p(target) per position, outside any gradient: a frozen or sampling policy's log-probs
    (GRPO's old_logp and ref_logp, a preference stage's reference)."""
    logits = model.apply(params, cfg, inputs)
    return losses.token_logprobs(logits, targets, kernels.resolve_for(cfg))[0]


def lm_eval_sums(cfg: Config):
    """`fn(params, batch, token_bytes_V) -> {'nats', 'bytes', 'tokens'}`: sums over the targets
    that stand for bytes (special tokens and zero-weight targets left out), so batches combine
    exactly into val loss (nats / tokens) and bits per byte (`losses.bits_per_byte_from_sums`)."""
    mcfg = cfg.model

    def fn(params, batch, token_bytes_V):
        logits = model.apply(params, mcfg, batch["inputs"], positions_BT=batch.get("positions"),
                             segment_ids_BT=batch.get("segment_ids"))
        logp, _ = losses.token_logprobs(logits, batch["targets"], kernels.resolve_for(mcfg))
        nats, nbytes, count = losses.bpb_sums(-logp, batch["targets"], token_bytes_V,
                                              batch.get("weights"))
        return {"nats": nats, "bytes": nbytes.astype(jnp.float32),
                "tokens": count.astype(jnp.float32)}
    return fn


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, *, grad_accum: int = 1,
                    axis_name: Optional[str] = None, lr_schedule=None):
    """`train_step(state, batch) -> (state, metrics)`: pure, for jit or pmap (`axis_name`)."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch):
        rng = jax.random.fold_in(state.rng, state.step)
        if grad_accum == 1:
            (_, metrics), grads = grad_fn(state.params, batch, rng)
        else:
            # Micro-batch k takes rows k, k+A, k+2A, ...: keeps each device's rows on that device.
            micro = jax.tree.map(lambda x: jnp.swapaxes(
                x.reshape(x.shape[0] // grad_accum, grad_accum, *x.shape[1:]), 0, 1), batch)

            def grads_of(mb, i):
                (_, m), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
                return g, m

            def body(carry, xs):
                return jax.tree.map(jnp.add, carry, grads_of(*xs)), None

            first = jax.tree.map(lambda x: x[0], micro)
            zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grads_of, first, 0))
            (grads, metrics), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum)))
            grads = jax.tree.map(lambda g: g / grad_accum, grads)
            metrics = {k: (v if k == "tokens" else v / grad_accum) for k, v in metrics.items()}
        if axis_name is not None:
            grads = jax.lax.pmean(grads, axis_name)
            metrics = jax.lax.pmean(metrics, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads))
        if lr_schedule is not None:
            metrics["lr"] = lr_schedule(state.step)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics
    return train_step


def make_eval_step(sums_fn, axis_name: Optional[str] = None):
    """`eval_step(params, batches, token_bytes) -> sums per batch`: `batches` carry a leading
    [n] axis and are scanned in one device call (`sums_fn` is e.g. `lm_eval_sums`); the sums come
    back per batch, [n] each, so the host adds them in float64. Summed over pmap's devices when
    `axis_name` is given."""
    def eval_step(params, batches, token_bytes_V):
        _, out = jax.lax.scan(lambda _, b: (None, sums_fn(params, b, token_bytes_V)), None,
                              batches)
        if axis_name is not None:
            out = jax.lax.psum(out, axis_name)
        return out
    return eval_step


@dataclasses.dataclass
class Compiled:
    """A run's compiled functions and its placement (how state and batches reach the devices)."""
    cfg: Config
    mesh: Any
    place: Any                          # lm.parallel.JitPlacement or PmapPlacement
    train_step: Callable
    eval_step: Callable
    abstract_state: Any
    tx: optax.GradientTransformation

    def init_state(self, seed: int) -> TrainState:
        return self.place.init(lambda: init_state(self.cfg, self.tx, seed))

    def host_state(self, state: TrainState) -> TrainState:
        """The state as a checkpoint holds it (pmap's replica axis removed)."""
        return self.place.to_host(state)

    def device_state(self, host_state: TrainState) -> TrainState:
        return self.place.to_device(host_state)

    def put_batch(self, batch: Batch) -> Batch:
        """A host batch (numpy, global rows) placed as the step reads it."""
        return self.place.put_batch(batch)

    def checkpoint_target(self):
        """Abstract state with the shardings a restore should produce."""
        return self.place.restore_target(self.abstract_state)

    def host_params(self, state: TrainState):
        """The parameters on this process's first device (for the sampling engine)."""
        params = self.host_state(state).params
        if jax.process_count() == 1:
            params = jax.device_put(params, self.mesh.devices.flat[0])
        return params


def compile_steps(cfg: Config, loss_fn: LossFn, *, devices: Optional[list] = None) -> Compiled:
    """The optimizer, mesh, placement and the (lazily) compiled train/eval steps of `cfg` with
    the stage's objective `loss_fn` (`lm.stages.loss_fn(cfg)`)."""
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    mesh = parallel.make_mesh(cfg.mesh, devices)
    n_dp = parallel.data_parallel_size(mesh)
    if cfg.data.batch_size % (n_dp * cfg.train.grad_accum):
        raise ValueError(f"data.batch_size ({cfg.data.batch_size}) must divide evenly over "
                         f"{n_dp} data-parallel devices × train.grad_accum ({cfg.train.grad_accum})")
    if (kernels.resolve_for(cfg.model) == "onednn" and mesh.devices.size > 1
            and not parallel.per_device_programs(cfg.mesh)):
        raise ValueError(f"model.kernels=onednn runs on one CPU device under jit and this mesh "
                         f"has {mesh.devices.size}: set mesh.cpu_devices=1, mesh.parallelism=pmap "
                         f"or model.kernels=auto")
    abstract = abstract_state(cfg, tx)

    def state_sharding():
        boxed = jax.eval_shape(lambda: model.init_boxed(cfg.model, jax.random.key(0)))
        p_sh = parallel.param_shardings(boxed, mesh)
        opt_sh = parallel.tree_shardings_like(abstract.opt_state, abstract.params, p_sh, mesh)
        return TrainState(step=parallel.replicated(mesh), params=p_sh, opt_state=opt_sh,
                          rng=parallel.replicated(mesh))

    place = parallel.placement(cfg.mesh.parallelism, mesh, state_sharding)
    lr = make_schedule(cfg.optim, cfg.train.steps)
    step = place.compile_train(make_train_step(loss_fn, tx, grad_accum=cfg.train.grad_accum,
                                               axis_name=place.axis_name, lr_schedule=lr))
    ev = place.compile_eval(make_eval_step(lm_eval_sums(cfg), place.axis_name))
    return Compiled(cfg, mesh, place, step, ev, abstract, tx)


def stack_batches(batches, micro: int = 1) -> list[Batch]:
    """Batches with the same shapes stacked on a leading axis, in groups of at most
    EVAL_GROUP (one `eval_step` call each); `micro` > 1 first splits each batch into that many
    micro-batches (as training's `grad_accum`: evaluation holds no more at once than a step)."""
    batches = list(batches)
    if micro > 1:
        batches = [{k: v[j::micro] for k, v in b.items()} for b in batches for j in range(micro)]
    return [{k: np.stack([b[k] for b in batches[i:i + EVAL_GROUP]]) for k in batches[0]}
            for i in range(0, len(batches), EVAL_GROUP)]


EVAL_GROUP = 64


def evaluate(c: Compiled, params, val_groups: list[Batch], token_bytes: np.ndarray) -> dict:
    """Validation loss (nats/token) and bits per byte over `stack_batches` groups, counting the
    targets that stand for bytes (special tokens such as BOS are left out of both, so `val_bpb`
    compares across tokenizers)."""
    if not val_groups:
        raise ValueError("evaluate: no validation batches")
    tb = jnp.asarray(token_bytes, jnp.int32)
    parts = c.place.fetch([c.eval_step(params, c.place.put_batches(g), tb) for g in val_groups])
    # sums per batch, added in float64 on the host
    sums = {k: float(sum(np.asarray(p[k], np.float64).sum() for p in parts)) for k in parts[0]}
    out = {"val_loss": sums["nats"] / max(sums["tokens"], 1.0)}
    if float(sums["bytes"]) > 0:
        out["val_bpb"] = losses.bits_per_byte_from_sums(sums["nats"], sums["bytes"])
    return out


def aot_report(c: Compiled, abstract_batch: Batch) -> dict:
    """Compile the train step ahead of time on abstract shapes (the stage's `abstract_batch`);
    memory and FLOPs, no allocation."""
    if not c.place.aot:
        raise ValueError("--dry_run memory report needs mesh.parallelism=jit")
    t0 = time.perf_counter()
    lowered = c.train_step.lower(c.abstract_state, abstract_batch)
    exe = lowered.compile()
    out = {"compile_s": time.perf_counter() - t0}
    mem = exe.memory_analysis()
    if mem is not None:
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                  "generated_code_size_in_bytes", "alias_size_in_bytes"):
            out[k] = int(getattr(mem, k, 0) or 0)
        out["peak_estimate_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                                      + out["temp_size_in_bytes"] - out["alias_size_in_bytes"])
    cost = exe.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    if cost and "flops" in cost:
        out["xla_flops_per_step"] = float(cost["flops"])
    return out


# ---- peak FLOP/s for MFU --------------------------------------------------------------------------

_PEAK_BF16 = {  # per chip, dense
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def measure_matmul_flops(n: int = 1024, reps: int = 5, dtype=jnp.float32, fn=None) -> float:
    """Measured FLOP/s of one jitted n×n matmul (`fn(a, b)`, default `a @ b`) on the default
    device (the best of reps: the machine's capability, so a noisy moment does not inflate MFU)."""
    a = jnp.ones((n, n), dtype)
    f = jax.jit(fn or (lambda x, y: x @ y))
    f(a, a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a, a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.min(times))


def measure_onednn_flops(n: int = 1024, reps: int = 5) -> float:
    """`measure_matmul_flops` of the oneDNN bf16 custom call (`kernels.matmul(..., "onednn")`)."""
    return measure_matmul_flops(n, reps, dtype=jnp.bfloat16,
                                fn=lambda x, y: kernels.matmul(x, y, "onednn"))


def peak_flops(cfg: Config) -> float:
    """Peak FLOP/s of all devices in use: a table for accelerators, a measurement on CPU."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        # the probe at the scale of the run's products: a 1024² product runs below the rate of
        # the chain's (8,192 rows by a 4,096 head), whose MFU then read above 1 (104% in SFT)
        rows = cfg.data.batch_size * cfg.data.seq_len
        n = 2048 if kernels.largest_product_macs(cfg.model, rows) > 1024 ** 3 else 1024
        if kernels.resolve_for(cfg.model) == "onednn" and cfg.model.compute_dtype == jnp.bfloat16:
            # the rate of the kernel the run multiplies with (oneDNN's bf16, AMX where present):
            # against XLA's fp32 dot, a bf16 run on an AMX host showed an MFU above 1
            return measure_onednn_flops(n)
        return measure_matmul_flops(n)
    kind = dev.device_kind
    for name, f in _PEAK_BF16.items():
        if kind.startswith(name):
            scale = 1.0 if cfg.model.dtype == "bfloat16" else 0.5
            return f * scale * jax.device_count()
    return float("nan")
