"""Training throughput: our jitted train step vs the PyTorch peer (HF GPT-2), same configs, same run.

For each config (`baby`: nanoGPT's CPU baby GPT; `small`: 6L/6H/384, block 256, batch 16,
vocab 8192) it measures, in interleaved rounds (ours, peer, ours, peer, ...), the median ms/step
over >= 20 steps after compilation, tokens/s, our compile time, and MFU against the best fp32
matmul rate measured in the same run (the largest of JAX's, at the start and at the end, and
torch's). The peer is
`../shared/bench/torch_peer.py` run as a subprocess (needs requirements-bench.txt).

Ours runs as `python -m lm.main` runs it: the host's cores exposed as XLA devices and the batch
split data-parallel over them (`mesh.cpu_devices`, auto by default; `--cpu_devices 1` measures
the single-device step).

  python -m tools.bench_train            # table
  python -m tools.bench_train --json     # one JSON object
  python -m tools.bench_train --configs baby --rounds 2
  python -m tools.bench_train --cpu_devices 1
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_train.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import subprocess
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "torch_peer.py"))

CONFIGS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, vocab_size=8192),
}
# steps per round (after warm-up) and default rounds: >= 20 timed steps per side in total
STEPS = {"baby": 40, "small": 10}


def our_config(c: dict):
    from lm.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
    return Config(
        model=ModelConfig(vocab_size=c["vocab_size"], block_size=c["block_size"],
                          n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"]),
        data=DataConfig(seq_len=c["block_size"], batch_size=c["batch_size"]),
        optim=OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.01,
                          grad_clip=0.0, b2=0.999),   # the peer: torch AdamW(lr=1e-3) defaults
        train=TrainConfig(steps=10_000), mesh=MeshConfig(data=-1, fsdp=1)).validate()


class Ours:
    """Our compiled step on `cpu_devices` devices (0: as lm.main picks), with random token batches
    like the peer's."""

    def __init__(self, name: str, cpu_devices: int = 0):
        import jax
        import numpy as np
        from lm import model, parallel, train
        self.jax, self.np = jax, np
        c = CONFIGS[name]
        self.cfg = our_config(c)
        n = cpu_devices or parallel.auto_cpu_devices(c["batch_size"], len(jax.devices()))
        self.devices = n
        self.compiled = train.compile_steps(self.cfg, devices=jax.devices()[:n])
        self.state = self.compiled.init_state(0)
        self.rng = np.random.default_rng(0)
        self.tokens = c["batch_size"] * c["block_size"]
        self.fpt = model.flops_per_token(self.cfg.model, c["block_size"])
        t0 = time.perf_counter()
        self.step()
        self.compile_s = time.perf_counter() - t0

    def batch(self):
        c = self.cfg
        x = self.rng.integers(0, c.model.vocab_size, (c.data.batch_size, c.data.seq_len + 1),
                              dtype=self.np.int32)
        return self.compiled.put_batch({"inputs": x[:, :-1], "targets": x[:, 1:]})

    def step(self) -> float:
        b = self.batch()
        t0 = time.perf_counter()
        self.state, m = self.compiled.train_step(self.state, b)
        self.jax.block_until_ready(m["loss"])
        return time.perf_counter() - t0

    def run(self, n: int) -> list[float]:
        self.step()  # warm-up after the peer had the cores
        return [self.step() for _ in range(n)]


def peer(name: str, steps: int, only: str = "train") -> list[dict]:
    if not os.path.exists(PEER):
        raise SystemExit(f"peer script not found at {PEER} (../shared/bench/torch_peer.py)")
    c = CONFIGS[name]
    args = [sys.executable, PEER, "--only", only, "--train_steps", str(steps), "--name", name]
    for k, v in c.items():
        args += [f"--{k}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise SystemExit(f"peer failed (pip install -r requirements-bench.txt?):\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def jax_matmul_gflops(n: int = 2048) -> float:
    from lm.train import measure_matmul_flops
    return measure_matmul_flops(n, reps=10) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="baby,small")
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds (0: 3 baby, 2 small)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cpu_devices", type=int, default=0,
                   help="XLA devices to split the CPU into (0: auto, as lm.main; 1: one device)")
    a = p.parse_args(argv)
    names = [n for n in a.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown config {n!r}; known: {sorted(CONFIGS)}")

    from lm import parallel
    avail = parallel.configure_cpu_devices(max(a.cpu_devices, parallel.host_cores()))
    if a.cpu_devices > avail:
        p.error(f"--cpu_devices {a.cpu_devices}: only {avail} CPU devices available")
    gf_jax = jax_matmul_gflops()
    gf_torch = next(r["gflops"] for r in peer("baby", 1, only="matmul") if r.get("lib") == "torch")
    best = max(gf_jax, gf_torch)
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    log(f"fp32 matmul: jax {gf_jax:.1f} GFLOP/s, torch {gf_torch:.1f} GFLOP/s -> MFU denominator "
        f"{best:.1f}")
    result = {"matmul_gflops": {"jax": round(gf_jax, 1), "torch": round(gf_torch, 1)}}
    for name in names:
        ours = Ours(name, a.cpu_devices)
        rounds = a.rounds or (3 if name == "baby" else 2)
        mine, theirs, peer_rows = [], [], []
        for r in range(rounds):
            mine += ours.run(STEPS[name])
            rows = [x for x in peer(name, STEPS[name]) if x["what"] == "train"]
            peer_rows += rows
            theirs.append(rows[0]["ms_per_step"] / 1e3)
            log(f"  {name} round {r + 1}/{rounds}: ours {1e3 * statistics.median(mine[-STEPS[name]:]):.1f} "
                f"ms/step, peer {rows[0]['ms_per_step']:.1f} ms/step")
        ms = statistics.median(mine) * 1e3
        peer_ms = statistics.median(theirs) * 1e3
        tps, peer_tps = ours.tokens / (ms / 1e3), ours.tokens / (peer_ms / 1e3)
        mfu = tps * ours.fpt / (best * 1e9)
        peer_mfu = peer_tps * peer_rows[0]["flops_per_token"] / (best * 1e9)
        result[name] = {"tokens_per_s": round(tps, 1), "peer_tokens_per_s": round(peer_tps, 1),
                        "ratio": round(tps / peer_tps, 3), "mfu": round(mfu, 4),
                        "peer_mfu": round(peer_mfu, 4), "ms_per_step": round(ms, 2),
                        "peer_ms_per_step": round(peer_ms, 2), "compile_s": round(ours.compile_s, 2), "devices": ours.devices,
                        "timed_steps": len(mine), "peer_timed_steps": len(theirs) * STEPS[name]}
        del ours
    # the MFU denominator is the best matmul rate seen in the run (measured again at the end,
    # so a noisy first measurement cannot inflate MFU)
    gf_jax_end = jax_matmul_gflops()
    if gf_jax_end > best:
        for name in names:
            result[name]["mfu"] = round(result[name]["mfu"] * best / gf_jax_end, 4)
            result[name]["peer_mfu"] = round(result[name]["peer_mfu"] * best / gf_jax_end, 4)
        best = gf_jax_end
    result["matmul_gflops"]["jax_end"] = round(gf_jax_end, 1)
    result["mfu_denominator_gflops"] = round(best, 1)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"\nMFU against {best:.1f} GFLOP/s (best fp32 matmul of the run: jax {gf_jax:.1f} at the "
          f"start, {gf_jax_end:.1f} at the end; torch {gf_torch:.1f})")
    print(f"{'config':8s} {'devices':>7s} {'ms/step':>9s} {'peer ms':>9s} {'tok/s':>9s} {'peer tok/s':>10s} "
          f"{'ratio':>6s} {'MFU':>6s} {'peer MFU':>8s} {'compile s':>9s}")
    for name in names:
        r = result[name]
        print(f"{name:8s} {r['devices']:7d} {r['ms_per_step']:9.1f} {r['peer_ms_per_step']:9.1f} {r['tokens_per_s']:9.0f} "
              f"{r['peer_tokens_per_s']:10.0f} {r['ratio']:6.2f} {100 * r['mfu']:5.1f}% "
              f"{100 * r['peer_mfu']:7.1f}% {r['compile_s']:9.1f}")
    return 0


if __name__ == "__main__":
    from lm.host import use_fast_allocator
    use_fast_allocator("tools.bench_train")
    sys.exit(main())
