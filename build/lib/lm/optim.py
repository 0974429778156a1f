"""Optimizer: AdamW with a weight-decay mask, LR schedules, global-norm clipping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lm.config import OptimConfig


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Warmup then cosine to min_lr, warmup-stable-decay (linear decay at the end), or constant."""
    warm = max(cfg.warmup_steps, 0)
    if cfg.schedule == "cosine":
        # nanoGPT's get_lr: linear warmup over `warm` steps, cosine from lr to min_lr after.
        def fn(step):
            step = jnp.asarray(step, jnp.float32)
            warm_lr = cfg.lr * (step + 1) / (warm + 1)
            ratio = jnp.clip((step - warm) / max(total_steps - warm, 1), 0.0, 1.0)
            cos_lr = cfg.min_lr + 0.5 * (1 + jnp.cos(jnp.pi * ratio)) * (cfg.lr - cfg.min_lr)
            return jnp.where(step < warm, warm_lr, cos_lr)
        return fn
    if cfg.schedule == "wsd":
        decay = cfg.decay_steps or max(int(0.2 * total_steps), 1)
        def fn(step):
            step = jnp.asarray(step, jnp.float32)
            warm_lr = cfg.lr * (step + 1) / max(warm, 1)
            frac = jnp.clip((step - (total_steps - decay)) / decay, 0.0, 1.0)
            stable_lr = cfg.lr + frac * (cfg.min_lr - cfg.lr)
            return jnp.where(step < warm, warm_lr, stable_lr)
        return fn
    return lambda step: jnp.where(jnp.asarray(step) < warm,
                                  cfg.lr * (jnp.asarray(step, jnp.float32) + 1) / max(warm, 1),
                                  cfg.lr)


def decay_mask(params, decay_embeddings: bool = False):
    """True where weight decay applies: matrices (2-D kernels), not norms, biases or embeddings."""
    def keep(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if leaf.ndim < 2:
            return False  # norm scales, biases
        if name.endswith("wte") or name.endswith("wpe"):
            return decay_embeddings
        return True
    return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    chain = []
    if cfg.grad_clip > 0:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    chain.append(optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay,
                             mask=lambda p: decay_mask(p, cfg.decay_embeddings)))
    return optax.chain(*chain)
