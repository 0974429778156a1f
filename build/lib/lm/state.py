"""The train state: what a checkpoint holds, how a fresh one is made, and its abstract shape.

`TrainState` is a pytree of (step, params, opt_state, rng); `init_state` makes one from a seed
(pure: jit it with out_shardings to create it sharded); `checkpoint_target` is the abstract state
of a config's checkpoints placed on one device, which `lm.runs` restores parameters onto.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lm import model
from lm.config import Config
from lm.optim import make_optimizer


@struct.dataclass
class TrainState:
    step: jax.Array          # int32 scalar: optimizer steps taken
    params: Any
    opt_state: Any
    rng: jax.Array           # raw uint32[2] key; per-step keys are fold_in(rng, step)


def init_state(cfg: Config, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Pure: a fresh state from a seed."""
    key = jax.random.PRNGKey(seed)
    init_key, state_key = jax.random.split(key)
    params = model.init(cfg.model, init_key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_key)


def abstract_state(cfg: Config, tx: optax.GradientTransformation) -> TrainState:
    """The state's shapes and dtypes (nothing allocated)."""
    return jax.eval_shape(lambda: init_state(cfg, tx, 0))


def checkpoint_target(cfg: Config, sharding=None) -> TrainState:
    """The abstract TrainState a checkpoint of `cfg` holds, placed on `sharding` (default: this
    process's first device)."""
    shapes = abstract_state(cfg, make_optimizer(cfg.optim, cfg.train.steps))
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        shapes)


def reset_schedule_counts(opt_state):
    """An optimizer state kept from a parent run, with its LR schedule restarted (Adam's moments
    and bias-correction count are kept)."""
    def reset(x):
        if isinstance(x, optax.ScaleByScheduleState):
            return x._replace(count=jnp.zeros_like(x.count))
        return x
    return jax.tree.map(reset, opt_state,
                        is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
