"""Training: `TrainState`, the pure `train_step`/`eval_step`, and the loop around them.

The step is built from a pluggable loss closure (`loss_fn(params, batch, rng) -> (loss, metrics)`),
so SFT and RL objectives reuse the same step, sharding and checkpointing. The loop compiles the
step once — `jax.jit` with explicit `NamedSharding`s over the mesh and a donated state, or
`jax.pmap` with `lax.pmean` of gradients (`mesh.parallelism=pmap`) — and keeps side effects
(logging, evaluation, checkpoints, Ctrl-C) at its edges.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from lm import kernels, losses, model, parallel
from lm.config import Config
from lm.optim import make_optimizer, schedule as make_schedule

Batch = dict[str, Any]
LossFn = Callable[[Any, Batch, jax.Array], tuple[jax.Array, dict]]


@struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array           # raw uint32[2] key; per-step keys are fold_in(rng, step)


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


def init_state(cfg: Config, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Pure: a fresh state from a seed (jit it with out_shardings to create it sharded)."""
    key = jax.random.PRNGKey(seed)
    init_key, state_key = jax.random.split(key)
    params = model.init(cfg.model, init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_key)


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


# ---- compiled steps over a mesh or with pmap ---------------------------------------------------

@dataclasses.dataclass
class Compiled:
    """A run's compiled functions plus how to move state and batches onto devices."""
    cfg: Config
    mesh: Any
    parallelism: str
    train_step: Callable
    eval_step: Callable
    state_sharding: Any
    put_batch: Callable[[Batch], Batch]
    put_batches: Callable[[Batch], Batch]     # batches stacked on a leading axis (eval_step)
    abstract_state: Any
    tx: optax.GradientTransformation

    def init_state(self, seed: int) -> TrainState:
        fn = lambda: init_state(self.cfg, self.tx, seed)
        if self.parallelism == "pmap":
            return parallel.pmap_replicate(jax.jit(fn)(), self.mesh.devices.flatten().tolist())
        return jax.jit(fn, out_shardings=self.state_sharding)()

    def host_state(self, state: TrainState) -> TrainState:
        """The state as the checkpoint sees it (pmap's replica axis removed)."""
        return parallel.pmap_unreplicate(state) if self.parallelism == "pmap" else state

    def device_state(self, state: TrainState) -> TrainState:
        if self.parallelism == "pmap":
            return parallel.pmap_replicate(state, self.mesh.devices.flatten().tolist())
        return state

    def checkpoint_target(self):
        """Abstract state with the shardings a restore should produce."""
        if self.parallelism == "pmap":
            dev = jax.sharding.SingleDeviceSharding(self.mesh.devices.flat[0])
            return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev),
                                self.abstract_state)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_sharding)

    def eval_params(self, state: TrainState):
        return state.params

    def params_for_host(self, state: TrainState):
        return self.host_state(state).params


def compile_steps(cfg: Config, loss_fn: Optional[LossFn] = None, *,
                  devices: Optional[list] = None) -> Compiled:
    """Build the optimizer, mesh, shardings and the (lazily) compiled train/eval steps
    (`loss_fn` defaults to the stage's objective)."""
    if loss_fn is None:
        from lm import stages
        loss_fn = stages.loss_fn(cfg)
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    lr = make_schedule(cfg.optim, cfg.train.steps)
    mesh = parallel.make_mesh(cfg.mesh, devices)
    n_dp = parallel.data_parallel_size(mesh)
    if cfg.data.batch_size % (n_dp * cfg.train.grad_accum):
        raise ValueError(f"data.batch_size ({cfg.data.batch_size}) must divide evenly over "
                         f"{n_dp} data-parallel devices × train.grad_accum ({cfg.train.grad_accum})")
    abstract_state = jax.eval_shape(lambda: init_state(cfg, tx, 0))

    if cfg.mesh.parallelism == "pmap":
        if cfg.mesh.fsdp != 1:
            raise ValueError("mesh.parallelism=pmap is pure data parallelism: set mesh.fsdp=1")
        axis = parallel.PMAP_AXIS
        step = jax.pmap(make_train_step(loss_fn, tx, grad_accum=cfg.train.grad_accum,
                                        axis_name=axis, lr_schedule=lr),
                        axis_name=axis, donate_argnums=(0,), devices=list(mesh.devices.flat))
        ev = jax.pmap(make_eval_step(lm_eval_sums(cfg), axis), axis_name=axis,
                      in_axes=(0, 0, None), devices=list(mesh.devices.flat))
        put = lambda b: parallel.pmap_split_batch(b, n_dp)
        put_many = lambda b: parallel.pmap_split_batch(b, n_dp, axis=1)
        return Compiled(cfg, mesh, "pmap", step, ev, None, put, put_many, abstract_state, tx)

    boxed = jax.eval_shape(lambda: model.init_boxed(cfg.model, jax.random.key(0)))
    p_sh = parallel.param_shardings(boxed, mesh)
    state_sh = TrainState(
        step=parallel.replicated(mesh), params=p_sh,
        opt_state=parallel.tree_shardings_like(abstract_state.opt_state, abstract_state.params,
                                               p_sh, mesh),
        rng=parallel.replicated(mesh))
    b_sh = parallel.batch_sharding(mesh)
    step = jax.jit(make_train_step(loss_fn, tx, grad_accum=cfg.train.grad_accum, lr_schedule=lr),
                   in_shardings=(state_sh, b_sh), out_shardings=(state_sh, parallel.replicated(mesh)),
                   donate_argnums=(0,))
    bs_sh = parallel.batch_sharding(mesh, leading=1)
    ev = jax.jit(make_eval_step(lm_eval_sums(cfg)),
                 in_shardings=(p_sh, bs_sh, parallel.replicated(mesh)),
                 out_shardings=parallel.replicated(mesh))
    put = lambda b: put_global_batch(b, b_sh)
    put_many = lambda b: put_global_batch(b, bs_sh, row_axis=1)
    return Compiled(cfg, mesh, "jit", step, ev, state_sh, put, put_many, abstract_state, tx)


def put_global_batch(batch: Batch, sharding, row_axis: int = 0) -> Batch:
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


def aot_report(cfg: Config, compiled: Optional[Compiled] = None) -> dict:
    """Compile the train step ahead of time on abstract shapes; memory and FLOPs, no allocation."""
    c = compiled or compile_steps(cfg)
    if c.parallelism == "pmap":
        raise ValueError("--dry_run memory report needs mesh.parallelism=jit")
    t0 = time.perf_counter()
    from lm import stages
    lowered = c.train_step.lower(c.abstract_state, stages.abstract_batch(cfg))
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


def peak_flops(cfg: Config) -> float:
    """Peak FLOP/s of all devices in use: a table for accelerators, a measurement on CPU."""
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        return measure_matmul_flops()
    kind = dev.device_kind
    for name, f in _PEAK_BF16.items():
        if kind.startswith(name):
            scale = 1.0 if cfg.model.dtype == "bfloat16" else 0.5
            return f * scale * jax.device_count()
    return float("nan")


# ---- the loop --------------------------------------------------------------------------------------

def _main_thread() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()


def new_run_dir(cfg: Config, workdir: Optional[str], resume: bool) -> str:
    """runs/<experiment>/<timestamp>/ (under `workdir`, default the current directory).

    With `resume`, the latest run of this experiment that holds a checkpoint is reused.
    """
    root = os.path.join(workdir or ".", "runs", cfg.name)
    if resume and os.path.isdir(root):
        from lm.checkpoint import has_checkpoint
        from lm.runs import checkpoint_dir
        runs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                      and has_checkpoint(checkpoint_dir(os.path.join(root, d), cfg)))
        if runs:   # several processes: process 0's choice, so they cannot disagree
            pick = parallel.shared_choice(len(runs) - 1)
            return os.path.join(root, runs[pick])
    # decided once, by process 0, and shared: a start straddling a second gives one directory
    stamp = parallel.shared_choice(int(time.time()))
    return os.path.join(root, time.strftime("%Y%m%d-%H%M%S", time.localtime(stamp)))


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
    parts = [c.eval_step(params, c.put_batches(g), tb) for g in val_groups]
    if c.parallelism == "pmap":
        parts = parallel.pmap_unreplicate(parts)
    parts = jax.device_get(parts)      # sums per batch, added in float64 on the host
    sums = {k: float(sum(np.asarray(p[k], np.float64).sum() for p in parts)) for k in parts[0]}
    out = {"val_loss": sums["nats"] / max(sums["tokens"], 1.0)}
    if float(sums["bytes"]) > 0:
        out["val_bpb"] = losses.bits_per_byte_from_sums(sums["nats"], sums["bytes"])
    return out


@dataclasses.dataclass
class Loop:
    """What a stage sees of the running loop (see `lm.stages`)."""
    cfg: Config
    compiled: Compiled
    run_dir: str
    writer: Any
    progress: bool
    final_step: int = 0

    @staticmethod
    def due(step: int, every: int) -> bool:
        return every > 0 and step % every == 0

    def host_params(self, state: TrainState):
        """The parameters on this process's first device (for the sampling engine)."""
        params = self.compiled.params_for_host(state)
        if jax.process_count() == 1:
            params = jax.device_put(params, self.compiled.mesh.devices.flat[0])
        return params


def _reset_schedule_counts(opt_state):
    """An optimizer state kept from a parent run, with its LR schedule restarted (Adam's moments
    and bias-correction count are kept)."""
    def reset(x):
        if isinstance(x, optax.ScaleByScheduleState):
            return x._replace(count=jnp.zeros_like(x.count))
        return x
    return jax.tree.map(reset, opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))


def single_device_kernels(cfg: Config) -> Config:
    """The oneDNN custom call is not partitioned over a mesh: on a mesh of several devices the
    step uses XLA's dot instead (`mesh.cpu_devices=1` keeps oneDNN, as lm.main's auto does)."""
    n = parallel.make_mesh(cfg.mesh).devices.size
    if n > 1 and kernels.resolve_for(cfg.model) == "onednn":
        print(f"model.kernels: the oneDNN bf16 kernel runs on one CPU device; this mesh has {n}, "
              f"so the step uses XLA's dot (set mesh.cpu_devices=1 for oneDNN)")
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kernels="xla_cpu"))
    return cfg


def _load_parent(cfg: Config, workdir: Optional[str]):
    """(parent Run, its tokenizer) for `cfg.init_from`, checked against `cfg`."""
    from lm import runs
    parent = runs.load(cfg.init_from, workdir=workdir)
    runs.check_compatible(parent, cfg)
    want = cfg.data.tokenizer
    if want not in ("", "parent"):
        from lm.data import pipeline
        mine = pipeline.build_tokenizer(cfg.data)
        if not runs.same_tokenizer(mine, parent.tokenizer):
            raise runs.RunError(f"init_from {parent.run_dir}: data.tokenizer={want!r} is not the "
                                f"parent's tokenizer (set data.tokenizer=parent, or leave it empty)")
    if parent.tokenizer.vocab_size > cfg.model.vocab_size:
        raise runs.RunError(f"init_from {parent.run_dir}: its tokenizer has "
                            f"{parent.tokenizer.vocab_size} tokens, more than model.vocab_size")
    return parent


def run(cfg: Config, *, run_dir: Optional[str] = None, workdir: Optional[str] = None,
        resume: bool = False, progress: bool = True, stop_after: Optional[int] = None,
        loss_fn: Optional[LossFn] = None) -> dict:
    """Train `cfg` (any stage); returns a summary. `stop_after` ends the loop early (as if
    interrupted)."""
    from tqdm.auto import tqdm
    from lm import runs, stages
    from lm.checkpoint import CheckpointManager
    from lm.logs import MetricsWriter

    cfg.validate()
    cfg = single_device_kernels(cfg)
    # Everything that can fail on bad input (parent run, data, tokenizer, compilation) comes
    # before the run directory exists, so a failed start leaves nothing behind.
    run_dir = run_dir or new_run_dir(cfg, workdir, resume)
    resuming = resume and _has_ckpt(run_dir, cfg)
    parent = None
    if cfg.init_from:
        if resuming and os.path.exists(os.path.join(run_dir, "lineage.json")):
            # the parent this run started from, not whatever is the latest run of it now
            with open(os.path.join(run_dir, "lineage.json")) as f:
                p = json.load(f)["parent"]
            parent = runs.load(p["run_dir"], step=p["step"], workdir=workdir)
        else:
            parent = _load_parent(cfg, workdir)
    tokenizer = parent.tokenizer if parent is not None else None
    if tokenizer is None and resuming and os.path.exists(os.path.join(run_dir, "tokenizer.json")):
        from lm.tokenizer import load_tokenizer
        tokenizer = load_tokenizer(os.path.join(run_dir, "tokenizer.json"))
    stage = stages.build(cfg, tokenizer=tokenizer, parent=parent)
    c = compile_steps(cfg, loss_fn or stages.loss_fn(cfg))

    main = jax.process_index() == 0       # several processes: one writes the run's files
    os.makedirs(run_dir, exist_ok=True)
    if main:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            f.write(cfg.to_json())
        stage.tokenizer.save(os.path.join(run_dir, "tokenizer.json"))
        runs.write_lineage(run_dir, parent)
    devices = (f"{c.mesh.devices.size} {c.mesh.devices.flat[0].platform} device(s), "
               f"{c.parallelism} mesh {dict(c.mesh.shape)}")
    if progress:
        print(f"{cfg.name} ({cfg.stage}): {devices}" +
              (f", from {parent.run_dir} step {parent.step}" if parent is not None else ""))
    ckpt = CheckpointManager(runs.checkpoint_dir(run_dir, cfg), every=cfg.checkpoint.every,
                             keep=cfg.checkpoint.keep)
    state, start = None, 0
    if resume:
        restored = ckpt.restore(c.checkpoint_target())
        if restored is not None:
            start, host_state, extra = restored
            state = c.device_state(host_state)
            stage.set_data_state(extra["data"])
            print(f"resumed from {run_dir} at step {start}")
    if state is None:
        state = c.init_state(cfg.train.seed)
        if parent is not None:
            host = c.host_state(state)
            if cfg.stage == "sft" and cfg.sft.keep_optimizer:
                _, pstate, _ = runs.restore_state(parent.ref, runs.train_state_target(cfg))
                host = host.replace(params=pstate.params,
                                    opt_state=_reset_schedule_counts(pstate.opt_state))
            else:
                host = host.replace(params=parent.params)
            state = c.device_state(jax.tree.map(jnp.asarray, host)) if c.parallelism == "pmap" \
                else jax.device_put(host, c.state_sharding)

    writer = MetricsWriter(run_dir) if main else NullWriter()
    progress = progress and main
    loop = Loop(cfg, c, run_dir, writer, progress)
    fpt = model.flops_per_token(cfg.model, cfg.data.seq_len)
    peak = peak_flops(cfg)
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    steps = cfg.train.steps
    end = steps if stop_after is None else min(steps, stop_after)
    summary: dict = {"run_dir": run_dir, "stage": cfg.stage, "start_step": start,
                     "devices": devices}
    if parent is not None:
        summary["parent"] = {"run_dir": parent.run_dir, "step": parent.step}

    def save(step, force=False):
        if ckpt.should_save(step) or force:
            ckpt.save(step, c.host_state(state), {"data": stage.data_state()}, force=force)

    # Ctrl-C sets a flag that the loop checks between steps, so the state is never caught
    # half-donated; a second Ctrl-C raises as usual.
    interrupted = False
    stop = {"flag": False}

    def on_sigint(signum, frame):
        if stop["flag"]:
            raise KeyboardInterrupt
        stop["flag"] = True

    prev = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    bar = tqdm(total=steps, initial=start, disable=not progress, dynamic_ncols=True,
               desc=cfg.name)
    t_start = time.perf_counter()
    t_last, step_last = t_start, start
    last_train = None
    out_of_time = False
    try:
        for step in range(start, end):
            batch = c.put_batch(stage.next_batch(loop, state))
            state, metrics = c.train_step(state, batch)
            done = step + 1
            if done % cfg.train.log_every == 0 or done == end:
                m = jax.device_get(metrics)
                if c.parallelism == "pmap":
                    m = parallel.pmap_unreplicate(m)
                now = time.perf_counter()
                tps = (done - step_last) * tokens_per_step / max(now - t_last, 1e-9)
                t_last, step_last = now, done
                extra = {k: v for k, v in m.items() if k not in ("loss", "lr", "grad_norm")}
                last_train = writer.write(done, loss=m["loss"], lr=m["lr"], grad_norm=m["grad_norm"],
                                          tokens_per_s=tps, mfu=tps * fpt / peak,
                                          elapsed_s=now - t_start, **extra,
                                          **stage.log_metrics())
                bar.set_postfix(loss=f"{float(m['loss']):.4f}", lr=f"{float(m['lr']):.2e}",
                                tok_s=f"{tps:,.0f}", mfu=f"{100 * tps * fpt / peak:.1f}%")
            if done < steps:
                ev = stage.evaluate(loop, state, done, final=False)
                if ev:
                    writer.write(done, **ev)
                    summary.update(ev)
                    bar.write(f"step {done}: " + _fmt(ev))
                    t_last = time.perf_counter()  # don't count evaluation time as training time
            save(done)
            bar.update(1)
            if stop["flag"]:
                interrupted = True
                bar.write(f"interrupted at step {done}: saving a checkpoint, then exiting")
                break
            limit = cfg.train.time_limit_s
            if limit and done < steps:     # process 0's clock decides for every process
                over = parallel.shared_choice(int(time.perf_counter() - t_start >= limit))
                if over:
                    out_of_time = True
                    bar.write(f"train.time_limit_s ({limit:g} s) reached at step {done}")
                    break
    finally:
        bar.close()
        if prev is not None:
            signal.signal(signal.SIGINT, prev)
    final_step = int(jax.device_get(c.host_state(state).step))
    loop.final_step = final_step
    save(final_step, force=True)
    ckpt.wait()
    ckpt.close()
    summary.update(final_step=final_step, interrupted=interrupted, train=last_train,
                   out_of_time=out_of_time)
    complete = (final_step == steps or out_of_time) and not interrupted
    if complete:
        ev = stage.evaluate(loop, state, final_step, final=True)
        if ev:
            writer.write(final_step, final=True, **ev)
            summary.update(ev)
            if progress:
                print(f"final (step {final_step}): " + _fmt(ev))
        if main:
            summary.update(stage.finish(loop, state))
        summary["wall_s"] = time.perf_counter() - t_start
    writer.close()
    if main:
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "sample"}, f, indent=2,
                      default=str)
    if complete and main:
        try:
            from lm import report
            summary["report"] = report.write(run_dir)
        except ImportError as e:   # matplotlib missing: the run itself is complete
            print(f"(no report card: {e})")
    return summary


class NullWriter:
    """The metrics writer of processes other than 0 (they log nothing)."""

    def write(self, step, **metrics):
        return {"step": int(step), **metrics}

    def write_text(self, *a, **k):
        pass

    def close(self):
        pass


def _fmt(ev: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in ev.items() if not k.endswith("_n"))


def _has_ckpt(run_dir: str, cfg: Config) -> bool:
    from lm.checkpoint import has_checkpoint
    from lm.runs import checkpoint_dir
    return has_checkpoint(checkpoint_dir(run_dir, cfg))
