"""Can this architecture learn induction at all, and how fast? A model trained only on
sequences written twice (random tokens, uniform or Zipf-distributed); the loss on the second
copy falls towards 0 once a head finds the earlier occurrence and copies what followed it
(Olsson et al. 2022). The first copy is unpredictable (ln V) and is the baseline.

    python -m tools.induction_toy                                  # chat_tiny's family, 2L/128
    python -m tools.induction_toy --set model.qk_norm=false --loss all --vocab 4096
    python -m tools.induction_toy --set model.qk_norm_scale=true --dist zipf

Findings (docs/context.md): the tiny chain's architecture learns it in ~100 steps when only the
second copy is scored, ~200 when every position is; QK-norm, with or without a gain, does not
change that.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/induction_toy.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import optax

from lm import model
from lm.config import Config, ConfigError, DataConfig, apply_overrides, modern


def batch(key, batch_size: int, length: int, vocab: int, dist: str):
    """[a, a]: `length` random tokens written twice."""
    if dist == "zipf":
        a = jax.random.categorical(key, -1.1 * jnp.log(jnp.arange(1, vocab + 1.0)),
                                   shape=(batch_size, length))
    else:
        a = jax.random.randint(key, (batch_size, length), 0, vocab)
    return jnp.concatenate([a, a], 1)


def run(cfg, steps: int, length: int, dist: str, loss_on: str, batch_size: int, lr: float,
        seed: int, every: int, log=print) -> list[dict]:
    """Train from scratch; rows of {step, first, second} (mean next-token loss, nats)."""
    m = cfg.model
    params = model.init(m, jax.random.key(seed))
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps), steps,
                                                         lr / 10), weight_decay=0.1)
    opt_state = opt.init(params)

    def loss_fn(p, x_BT):
        logits = model.apply(p, m, x_BT[:, :-1]).astype(jnp.float32)
        nll_BT = -jnp.take_along_axis(jax.nn.log_softmax(logits), x_BT[:, 1:, None], -1)[..., 0]
        first, second = nll_BT[:, :length - 1].mean(), nll_BT[:, length:].mean()
        return (second if loss_on == "second" else nll_BT.mean()), (first, second)

    @jax.jit
    def step(p, s, key):
        x_BT = batch(key, batch_size, length, m.vocab_size, dist)
        (_, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, x_BT)
        u, s = opt.update(g, s, p)
        return optax.apply_updates(p, u), s, aux

    key, rows, t0 = jax.random.key(seed + 1), [], time.time()
    for i in range(1, steps + 1):
        key, k = jax.random.split(key)
        params, opt_state, (first, second) = step(params, opt_state, k)
        if i % every == 0 or i == steps:
            rows.append({"step": i, "first": float(first), "second": float(second)})
            log(f"step {i:5d}: first copy {float(first):.3f}  second copy {float(second):.3f}  "
                f"({time.time() - t0:.0f} s)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="model overrides, e.g. model.qk_norm=false (default: the modern family, "
                         "2 layers, width 128, 2 heads)")
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--length", type=int, default=32, help="tokens per copy")
    ap.add_argument("--dist", choices=["uniform", "zipf"], default="uniform")
    ap.add_argument("--loss", choices=["second", "all"], default="second",
                    help="score only the second copy, or every position (as pretraining does)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON at the end")
    a = ap.parse_args(argv)
    for name in ("length", "steps", "batch_size", "every"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1")
    if a.vocab < 2:
        ap.error("--vocab must be >= 2")
    base = Config(model=modern(vocab_size=a.vocab, block_size=2 * a.length, n_layer=2, n_head=2,
                               n_embd=128), data=DataConfig(seq_len=2 * a.length))
    try:
        cfg = apply_overrides(base, a.set)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if cfg.model.block_size < 2 * a.length:
        print(f"error: model.block_size ({cfg.model.block_size}) < 2 x --length", file=sys.stderr)
        return 2
    print(f"chance on the first copy: ln V = {math.log(a.vocab):.3f} nats")
    rows = run(cfg, a.steps, a.length, a.dist, a.loss, a.batch_size, a.lr, a.seed, a.every)
    if a.json:
        print(json.dumps({"args": vars(a), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
