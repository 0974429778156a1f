"""Sampling throughput: our KV-cache engine vs no cache vs the PyTorch peer's `generate`.

The `small` config (GPT-2 family: 6 layers, 6 heads, 384 wide, vocab 8192, block 512, random
init), a 16-token random prompt, 256 new tokens forced (greedy, no stop token), at batch 1 and 8:

- ours: `lm.sampling.Engine` — one prefill call, then the `lax.while_loop` decode in 4 device
  calls of 64 steps each (timed separately: ms per decode step over the first and the last 64
  new tokens). new tokens/s = batch * 256 / (prefill + decode wall time).
- ours without the cache: greedy decoding that re-runs the jitted full forward pass over the whole
  sequence for every new token (window padded to a multiple of 32, so 9 shapes compile). Its
  per-step time is measured for each window size, and the 256 steps' times are summed (running it
  end to end at batch 8 takes minutes on 2 cores; `--nocache_direct` also runs batch 1 end to end
  to check the sum).
- peer: `../shared/bench/torch_peer.py --only gen` (HF `GPT2LMHeadModel.generate`, greedy,
  `use_cache=True`, same shapes), run as a subprocess (needs requirements-bench.txt).

- bf16: the same engine with `weights="bfloat16"` (a bfloat16 copy of the weights; on a CPU with
  lm's bf16 kernels they are packed for the few-row AVX512-BF16 matmul and activations and cache
  stay float32, see `lm.kernels.lowp_weights_config`), against the peer's model cast to bfloat16
  (`torch_peer.py --dtype bfloat16`). `speedup_vs_fp32` = our best of the
  two / our fp32 engine; `ratio_bf16` = our best / the bf16 peer.

Ours and the peer alternate in rounds (the CPU is shared: both see the same background load);
every figure is the median over rounds.

  python -m tools.bench_sample            # table
  python -m tools.bench_sample --json     # one JSON object
  python -m tools.bench_sample --rounds 1 --batches 1
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_sample.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import subprocess
import time

from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "torch_peer.py"))
SMALL = dict(n_layer=6, n_head=6, n_embd=384, block_size=512, vocab_size=8192)
PROMPT, NEW, CHUNK = 16, 256, 64


class Ours:
    def __init__(self, weights=None, params=None):
        import jax
        import jax.numpy as jnp
        import numpy as np
        from lm import model, sampling
        from lm.config import ModelConfig
        self.jax, self.jnp, self.np, self.model, self.sampling = jax, jnp, np, model, sampling
        self.cfg = ModelConfig(**SMALL)
        self.params = params if params is not None else \
            jax.jit(model.init, static_argnums=0)(self.cfg, jax.random.PRNGKey(0))
        self.engine = sampling.Engine(self.params, self.cfg,
                                      settings=sampling.EngineSettings(weights=weights))
        self.rng = np.random.default_rng(0)
        self.compile_s: dict = {}

    def prompts(self, batch: int):
        return self.rng.integers(0, self.cfg.vocab_size, (batch, PROMPT)).tolist()

    def cached(self, batch: int) -> dict:
        """One greedy generation of NEW tokens per row: prefill + NEW/CHUNK decode calls."""
        eng, jax = self.engine, self.jax
        t0 = time.perf_counter()
        st = eng.start(self.prompts(batch), max_new_tokens=NEW, temperature=0.0)
        jax.block_until_ready(st.pending)
        t_prefill = time.perf_counter() - t0
        chunks = []
        for _ in range(NEW // CHUNK):
            t = time.perf_counter()
            st = eng.decode(st, CHUNK)
            jax.block_until_ready(st.n_gen)
            chunks.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
        out = eng.result(st)
        assert (out.lengths == NEW).all(), out.lengths
        return {"total_s": total, "prefill_s": t_prefill, "chunk_s": chunks}

    def warm(self, batch: int) -> None:
        t = time.perf_counter()
        self.cached(batch)
        self.compile_s[batch] = time.perf_counter() - t

    # -- no cache --------------------------------------------------------------------------------
    def _forward(self):
        if not hasattr(self, "_fwd"):
            jax, jnp, model, cfg = self.jax, self.jnp, self.model, self.cfg

            @jax.jit
            def next_token(params, window_BT, length):
                logits = model.apply(params, cfg, window_BT)
                return jnp.argmax(logits[:, length - 1], axis=-1).astype(jnp.int32)
            self._fwd = next_token
        return self._fwd

    def windows(self):
        """Window (padded sequence length) of each of the NEW steps: multiples of 32."""
        return [min(self.cfg.block_size, -(-(PROMPT + i) // 32) * 32) for i in range(NEW)]

    def nocache_step_s(self, batch: int, reps: int = 3) -> dict:
        """Median seconds of one no-cache step (full forward + argmax + host sync) per window."""
        jnp, fwd = self.jnp, self._forward()
        out = {}
        for w in sorted(set(self.windows())):
            x = jnp.asarray(self.rng.integers(0, self.cfg.vocab_size, (batch, w)), jnp.int32)
            int(fwd(self.params, x, w - 1)[0])               # compile / warm up
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                int(fwd(self.params, x, w - 1)[0])
                ts.append(time.perf_counter() - t)
            out[w] = statistics.median(ts)
        return out

    def nocache_direct(self, batch: int) -> float:
        """The no-cache loop end to end (host loop, one jitted forward per new token)."""
        np, jnp, fwd = self.np, self.jnp, self._forward()
        seq = np.zeros((batch, self.cfg.block_size), np.int32)
        seq[:, :PROMPT] = self.rng.integers(0, self.cfg.vocab_size, (batch, PROMPT))
        t0 = time.perf_counter()
        for i, w in enumerate(self.windows()):
            n = PROMPT + i
            seq[:, n] = np.asarray(fwd(self.params, jnp.asarray(seq[:, :w]), n))
        return time.perf_counter() - t0


def peer(batches: list[int], dtype: str = "float32") -> dict:
    if not os.path.exists(PEER):
        raise SystemExit(f"peer script not found at {PEER} (../shared/bench/torch_peer.py)")
    args = [sys.executable, PEER, "--only", "gen", "--n_layer", str(SMALL["n_layer"]),
            "--n_head", str(SMALL["n_head"]), "--n_embd", str(SMALL["n_embd"]),
            "--block_size", str(SMALL["block_size"]), "--vocab_size", str(SMALL["vocab_size"]),
            "--new_tokens", str(NEW), "--gen_batch", ",".join(map(str, batches)),
            "--gen_runs", "1", "--name", "small", "--dtype", dtype]
    out = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"peer failed (pip install -r requirements-bench.txt?):\n"
                         f"{out.stderr[-2000:]}")
    rows = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
    return {r["batch"]: r for r in rows if r.get("what") == "gen"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--rounds", type=int, default=3, help="alternating ours/peer rounds")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--reps", type=int, default=2, help="our timed generations per round")
    p.add_argument("--nocache_direct", action="store_true",
                   help="also run the no-cache loop end to end at batch 1 (slow)")
    p.add_argument("--fp32_only", action="store_true", help="skip the bf16 side (ours and peer)")
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else \
        (lambda *x: print(*x, flush=True))

    load0 = [round(x, 2) for x in os.getloadavg()]
    ours = Ours()
    dtypes = ["float32"] if a.fp32_only else ["float32", "bfloat16"]
    engines = {"float32": ours}
    if not a.fp32_only:       # the same model decoding with bfloat16 weights and cache
        engines["bfloat16"] = Ours(weights="bfloat16", params=ours.params)
    for dt, e in engines.items():
        for b in batches:
            e.warm(b)
            log(f"compiled + first run, {dt} batch {b}: {e.compile_s[b]:.1f} s")
    mine = {(dt, b): [] for dt in dtypes for b in batches}
    theirs = {(dt, b): [] for dt in dtypes for b in batches}
    for r in range(a.rounds):
        for dt in dtypes:                                  # ours fp32, ours bf16, peer fp32, bf16
            e = engines[dt]
            for b in batches:
                e.cached(b)                                # warm-up after the peer had the cores
                runs = [e.cached(b) for _ in range(a.reps)]
                mine[(dt, b)] += runs
                med = statistics.median(x["total_s"] for x in runs)
                log(f"round {r + 1} ours {dt} batch {b}: {b * NEW / med:8.1f} new tok/s")
        for dt in dtypes:
            rows = peer(batches, dt)
            for b in batches:
                theirs[(dt, b)].append(rows[b])
                log(f"round {r + 1} peer {dt} batch {b}: {rows[b]['new_tokens_per_s']:8.1f} new "
                    f"tok/s ({rows[b]['ms_per_token_step']:.1f} ms/step)")

    result: dict = {"config": dict(SMALL, name="small", prompt_len=PROMPT, new_tokens=NEW),
                    "rounds": a.rounds, "cpu_count": os.cpu_count(), "loadavg_start": load0,
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    for b in batches:
        nc = ours.nocache_step_s(b)
        nocache_s = sum(nc[w] for w in ours.windows())
        tps = statistics.median(b * NEW / x["total_s"] for x in mine[("float32", b)])
        peer_tps = statistics.median(x["new_tokens_per_s"] for x in theirs[("float32", b)])
        first = statistics.median(x["chunk_s"][0] / CHUNK for x in mine[("float32", b)])
        last = statistics.median(x["chunk_s"][-1] / CHUNK for x in mine[("float32", b)])
        row = {"tokens_per_s": round(tps, 1),
               "nocache_tokens_per_s": round(b * NEW / nocache_s, 1),
               "peer_tokens_per_s": round(peer_tps, 1),
               "ratio": round(tps / peer_tps, 2),
               "ms_per_token_first64": round(first * 1e3, 3),
               "ms_per_token_last64": round(last * 1e3, 3),
               "prefill_ms": round(statistics.median(x["prefill_s"]
                                                     for x in mine[("float32", b)]) * 1e3, 2),
               "peer_ms_per_token_step": round(statistics.median(
                   x["ms_per_token_step"] for x in theirs[("float32", b)]), 2),
               "cache_speedup_vs_nocache": round(tps * nocache_s / (b * NEW), 1),
               "compile_and_first_run_s": round(ours.compile_s[b], 2),
               "timed_runs": len(mine[("float32", b)]),
               "peer_timed_runs": len(theirs[("float32", b)])}
        if not a.fp32_only:
            b16 = statistics.median(b * NEW / x["total_s"] for x in mine[("bfloat16", b)])
            peer16 = statistics.median(x["new_tokens_per_s"] for x in theirs[("bfloat16", b)])
            best = max(tps, b16)
            row.update({"bf16_tokens_per_s": round(b16, 1),
                        "bf16_impl": engines["bfloat16"].engine.impl,
                        "peer_bf16_tokens_per_s": round(peer16, 1),
                        "ratio_bf16": round(best / peer16, 2),
                        "speedup_vs_fp32": round(best / tps, 2)})
        if a.nocache_direct and b == 1:
            row["nocache_direct_tokens_per_s"] = round(b * NEW / ours.nocache_direct(b), 1)
        result[f"batch_{b}"] = row
        log(f"no cache, batch {b}: {row['nocache_tokens_per_s']:.1f} new tok/s")

    if a.json:
        result["host_isa"] = bench_host.host_isa()
        print(json.dumps(result))
        return
    print(f"\n{'batch':>5s} {'tok/s':>9s} {'nocache':>9s} {'peer':>9s} {'ratio':>6s} "
          f"{'ms/tok first64':>14s} {'last64':>8s} {'peer ms/step':>12s}")
    for b in batches:
        r = result[f"batch_{b}"]
        print(f"{b:5d} {r['tokens_per_s']:9.1f} {r['nocache_tokens_per_s']:9.1f} "
              f"{r['peer_tokens_per_s']:9.1f} {r['ratio']:6.2f} {r['ms_per_token_first64']:14.2f} "
              f"{r['ms_per_token_last64']:8.2f} {r['peer_ms_per_token_step']:12.2f}")
        if "bf16_tokens_per_s" in r:
            print(f"{'bf16':>5s} {r['bf16_tokens_per_s']:9.1f} {'':9s} "
                  f"{r['peer_bf16_tokens_per_s']:9.1f} {r['ratio_bf16']:6.2f}   "
                  f"speed-up vs our fp32 {r['speedup_vs_fp32']:.2f}x ({r['bf16_impl']})")


if __name__ == "__main__":
    main()
