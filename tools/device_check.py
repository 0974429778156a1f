"""Timings for the prepared accelerator check (tools/device_check.sh): steps per second, tokens/s
and MFU against the chip's bf16 peak, written as JSON.

  python -m tools.device_check --out device_check.json              # on a GPU / TPU host
  python -m tools.device_check --smoke --out /tmp/x.json            # tiny configs (CPU, tests)

Measured: `shakespeare_char` (nanoGPT's GPU config, 6L/384, block 256, batch 64, dropout 0.2)
and a `gpt2_124m` optimizer step at full size (bf16 compute, 0.5M tokens, grad_accum 8,
attention through `jax.nn.dot_product_attention`, which takes cuDNN's flash kernel where
eligible) on synthetic token batches: compile time, median step time over the timed steps,
tokens/s, MFU.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/device_check.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import time

SMOKE = {"shakespeare_char": ["model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                              "data.seq_len=32", "model.block_size=32", "data.batch_size=4"],
         "gpt2_124m": ["model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                       "data.seq_len=32", "model.block_size=32", "data.batch_size=8",
                       "train.grad_accum=2", "model.vocab_size=512"]}


def time_steps(name: str, overrides: list[str], steps: int) -> dict:
    import jax
    import numpy as np
    import experiments
    from lm import model, process, stages
    from lm import steps as lm_steps
    from lm.config import apply_overrides
    cfg = process.resolve(apply_overrides(experiments.get(name), overrides))
    c = lm_steps.compile_steps(cfg, stages.loss_fn(cfg))
    state = c.init_state(0)
    rng = np.random.default_rng(0)
    B, T, V = cfg.data.batch_size, cfg.data.seq_len, cfg.model.vocab_size

    def batch():
        x = rng.integers(0, V, (B, T + 1)).astype(np.int32)
        b = {"inputs": x[:, :-1], "targets": x[:, 1:]}
        if cfg.data.segment_on_bos:
            b["segment_ids"] = np.zeros((B, T), np.int32)
        return c.put_batch(b)

    t0 = time.perf_counter()
    state, m = c.train_step(state, batch())
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        b = batch()
        t = time.perf_counter()
        state, m = c.train_step(state, b)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t)
    step = statistics.median(times)
    tps = B * T / step
    peak = lm_steps.peak_flops(cfg)
    fpt = model.flops_per_token(cfg.model, T)
    return {"config": name, "devices": c.mesh.devices.size,
            "device_kind": jax.devices()[0].device_kind, "compile_s": round(compile_s, 2),
            "step_s": round(step, 4), "tokens_per_step": B * T, "tokens_per_s": round(tps, 1),
            "mfu": round(tps * fpt / peak, 4) if peak == peak else None,
            "peak_flops": peak, "loss": float(c.place.fetch(m)["loss"]), "timed_steps": steps,
            "dtype": cfg.model.dtype}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny configs (a test of this script)")
    p.add_argument("--steps", type=int, default=10)
    a = p.parse_args(argv)
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "results": []}
    for name in ("shakespeare_char", "gpt2_124m"):
        overrides = SMOKE[name] if a.smoke else []
        r = time_steps(name, overrides, a.steps if not a.smoke else 2)
        print(json.dumps(r), flush=True)
        out["results"].append(r)
    import jax
    out["jax"] = jax.__version__
    out["backend"] = jax.default_backend()
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
