"""Training throughput: our jitted train step vs the PyTorch peer (HF GPT-2), same configs, same run.

For each config (`baby`: nanoGPT's CPU baby GPT; `small`: 6L/6H/384, block 256, batch 16,
vocab 8192) it measures, in interleaved rounds (ours fp32, peer fp32, ours bf16, peer bf16, ...),
the median ms/step over >= 20 steps after compilation, tokens/s, our compile time, and MFU: fp32
figures against the best fp32 matmul rate of the run (JAX's and torch's, at the start and at the
end), bf16 ones against the best bf16 rate (torch's oneDNN and our oneDNN custom call). The peer is
`../shared/bench/torch_peer.py` run as a subprocess (HF GPT-2; `--dtype bfloat16` is
`torch.autocast("cpu", dtype=torch.bfloat16)`; needs requirements-bench.txt).

Ours runs as `python -m lm.main` runs it: fp32 with the host's cores exposed as XLA devices and the
batch split data-parallel over them (`mesh.cpu_devices`, auto; `--cpu_devices 1` measures the
single-device step); bf16 with `model.kernels=auto`, which on a CPU with bf16 hardware runs the
matmuls (Linear layers, tied head, attention) through oneDNN (one device). `ratio_bf16` = our best
of the two / the bf16 peer; `ratio_best` = our best configuration / the peer's best on this host.

The bf16 sides run only on a host with bf16 matrix hardware (AVX512-BF16, AMX): elsewhere bf16 is
emulated (torch falls back to a naive single-thread gemm; XLA converts), which would only measure a
strawman for hours; `--bf16` forces them, and the JSON marks them `emulated`. Every probe is
bounded: the matmul rates use a size fitted to the host (`--matmul_n`). `--isa avx2` caps both
sides at AVX2 (`tools.bench_host`), to measure an AVX2-only host's kind from a bigger one; the JSON
says `host_isa`, `isa_cap` and what torch reported under the cap.

  python -m tools.bench_train            # table
  python -m tools.bench_train --json     # one JSON object
  python -m tools.bench_train --configs baby --rounds 2
  python -m tools.bench_train --cpu_devices 1
  python -m tools.bench_train --isa avx2 --json
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_train.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import dataclasses
import json
import statistics
import subprocess
import time

from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.normpath(os.path.join(ROOT, "..", "shared", "bench", "torch_peer.py"))

CONFIGS = {
    "baby": dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=65),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=16, vocab_size=8192),
}
# steps per round (after warm-up) and default rounds: >= 20 timed steps per side in total
STEPS = {"baby": 40, "small": 10}


def our_config(c: dict, dtype: str = "float32"):
    from lm.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig
    return Config(
        model=ModelConfig(vocab_size=c["vocab_size"], block_size=c["block_size"],
                          n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                          dtype=dtype),
        data=DataConfig(seq_len=c["block_size"], batch_size=c["batch_size"]),
        optim=OptimConfig(lr=1e-3, warmup_steps=0, schedule="constant", weight_decay=0.01,
                          grad_clip=0.0, b2=0.999),   # the peer: torch AdamW(lr=1e-3) defaults
        train=TrainConfig(steps=10_000), mesh=MeshConfig(data=-1, fsdp=1)).validate()


class Ours:
    """Our compiled step on `cpu_devices` devices (0: as lm.main picks), with random token batches
    like the peer's."""

    def __init__(self, name: str, cpu_devices: int = 0, dtype: str = "float32"):
        import jax
        import numpy as np
        from lm import kernels, model, parallel, process, stages, steps
        self.jax, self.np = jax, np
        c = CONFIGS[name]
        self.cfg = our_config(c, dtype)
        pmap = False
        if dtype == "bfloat16" and cpu_devices <= 1 and kernels.bf16_kernels_expected() and \
                kernels.onednn_available():
            # lm.main's bf16 path: the oneDNN custom calls (`auto` would see this process's
            # several devices and take XLA's bf16 dot, 3.1x slower on `small`), on one device,
            # or one pmap program per core where lm.main picks that (small products: baby)
            pmap = cpu_devices == 0 and process.per_core_pmap(self.cfg)
            self.cfg.model = dataclasses.replace(self.cfg.model, kernels="onednn")
            self.cfg.mesh = dataclasses.replace(self.cfg.mesh,
                                                parallelism="pmap" if pmap else "jit")
        self.impl = kernels.resolve_for(self.cfg.model)
        auto = 1 if self.impl == "onednn" and not pmap else \
            parallel.auto_cpu_devices(c["batch_size"], len(jax.devices()))
        n = cpu_devices or auto
        self.devices = n
        self.compiled = steps.compile_steps(self.cfg, stages.loss_fn(self.cfg),
                                            devices=jax.devices()[:n])
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


def peer(name: str, steps: int, only: str = "train", dtype: str = "float32",
         env: dict | None = None) -> list[dict]:
    if not os.path.exists(PEER):
        raise SystemExit(f"peer script not found at {PEER} (../shared/bench/torch_peer.py)")
    c = CONFIGS[name]
    args = [sys.executable, PEER, "--only", only, "--train_steps", str(steps), "--name", name,
            "--dtype", dtype]
    for k, v in c.items():
        args += [f"--{k}", str(v)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=3600, env=env)
    if out.returncode != 0:
        raise SystemExit(f"peer failed (pip install -r requirements-bench.txt?):\n{out.stderr[-2000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def torch_matmul_gflops(n: int, dtype: str, env: dict, reps: int = 5) -> float:
    """torch's n x n matmul rate (best of reps) in a subprocess under `env` (0 if torch fails)."""
    code = (f"import time, torch; torch.manual_seed(0); x = torch.rand({n}, {n}).to(torch.{dtype}); "
            f"x @ x; t = []\nfor _ in range({reps}):\n s = time.perf_counter(); x @ x; "
            f"t.append(time.perf_counter() - s)\nprint(2 * {n} ** 3 / min(t) / 1e9)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=900)
    return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else 0.0


def jax_matmul_gflops(n: int = 2048) -> float:
    from lm.steps import measure_matmul_flops
    return measure_matmul_flops(n, reps=10) / 1e9


def onednn_matmul_gflops(n: int = 2048) -> float:
    """Our bf16 matmul (the oneDNN custom call) on one device, best of 10; 0 if unavailable."""
    from lm import kernels
    from lm.steps import measure_onednn_flops
    if not kernels.onednn_available():
        return 0.0
    return measure_onednn_flops(n, reps=10) / 1e9


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="baby,small")
    p.add_argument("--rounds", type=int, default=0, help="interleaved rounds (0: 3 baby, 2 small)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cpu_devices", type=int, default=0,
                   help="XLA devices to split the CPU into (0: auto, as lm.main; 1: one device)")
    p.add_argument("--fp32_only", action="store_true", help="skip the bf16 side (ours and peer)")
    p.add_argument("--bf16", action="store_true",
                   help="run the bf16 sides even where bf16 is emulated (hours on AVX2)")
    p.add_argument("--isa", choices=sorted(bench_host.CAPS), default=None,
                   help="cap both sides at this ISA (measures another host kind from this one)")
    p.add_argument("--matmul_n", type=int, default=0,
                   help="matmul probe size (0: 2048, or 1024 where bf16 is emulated)")
    a = p.parse_args(argv)
    names = [n for n in a.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            p.error(f"unknown config {n!r}; known: {sorted(CONFIGS)}")

    bench_host.cap_this_process(a.isa)           # before JAX starts
    isa = bench_host.host_isa(a.isa)
    peer_env = bench_host.isa_env(a.isa)
    bf16_hw = bench_host.has_bf16(isa)
    with_bf16 = not a.fp32_only and (bf16_hw or a.bf16)
    n_mm = a.matmul_n or (2048 if bf16_hw else 1024)
    from lm import parallel
    avail = parallel.configure_cpu_devices(max(a.cpu_devices, parallel.host_cores()))
    if a.cpu_devices > avail:
        p.error(f"--cpu_devices {a.cpu_devices}: only {avail} CPU devices available")
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print

    def matmul_rates() -> dict:
        return {"jax": jax_matmul_gflops(n_mm), "torch": torch_matmul_gflops(n_mm, "float32",
                                                                              peer_env),
                "torch_bf16": torch_matmul_gflops(n_mm, "bfloat16", peer_env) if with_bf16
                else 0.0, "ours_bf16": onednn_matmul_gflops(n_mm) if with_bf16 else 0.0}

    start = matmul_rates()
    log("matmul GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in start.items()))
    result = {"host_isa": isa, "isa_cap": a.isa, "matmul_n": n_mm,
              "torch_capability": bench_host.torch_capability(peer_env),
              "bf16": "measured" if bf16_hw and with_bf16 else
              "emulated" if with_bf16 else "skipped (no bf16 hardware: emulated)",
              "matmul_gflops": {k: round(v, 1) for k, v in start.items()}}
    sides = [("ours", "float32"), ("peer", "float32")]
    if with_bf16:
        sides += [("ours", "bfloat16"), ("peer", "bfloat16")]
    for name in names:
        ours = {dt: Ours(name, a.cpu_devices, dt) for side, dt in sides if side == "ours"}
        rounds = a.rounds or (3 if name == "baby" else 2)
        times = {s: [] for s in sides}
        peer_rows = []
        for r in range(rounds):
            for side, dt in sides:                    # interleaved: ours, peer, ours bf16, peer bf16
                if side == "ours":
                    times[(side, dt)] += ours[dt].run(STEPS[name])
                else:
                    rows = [x for x in peer(name, STEPS[name], dtype=dt, env=peer_env)
                            if x["what"] == "train"]
                    peer_rows += rows
                    times[(side, dt)].append(rows[0]["ms_per_step"] / 1e3)
            log(f"  {name} round {r + 1}/{rounds}: " + ", ".join(
                f"{side} {dt} {1e3 * statistics.median(times[(side, dt)][-STEPS[name]:]):.1f} ms"
                for side, dt in sides))
        o = ours["float32"]
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        tps = {k: o.tokens / (v / 1e3) for k, v in ms.items()}
        fpt_peer = peer_rows[0]["flops_per_token"]
        res = {"tokens_per_s": round(tps[("ours", "float32")], 1),
               "peer_tokens_per_s": round(tps[("peer", "float32")], 1),
               "ratio": round(tps[("ours", "float32")] / tps[("peer", "float32")], 3),
               "ms_per_step": round(ms[("ours", "float32")], 2),
               "peer_ms_per_step": round(ms[("peer", "float32")], 2),
               "compile_s": round(o.compile_s, 2), "devices": o.devices,
               "timed_steps": len(times[("ours", "float32")]),
               "peer_timed_steps": len(times[("peer", "float32")]) * STEPS[name],
               "_fpt": o.fpt, "_fpt_peer": fpt_peer,
               "ratio_best": round(max(v for (sd, _), v in tps.items() if sd == "ours") /
                                   max(v for (sd, _), v in tps.items() if sd == "peer"), 3)}
        if with_bf16:
            b16 = ours["bfloat16"]
            best_ours = max(tps[("ours", "float32")], tps[("ours", "bfloat16")])
            res.update({"bf16_tokens_per_s": round(tps[("ours", "bfloat16")], 1),
                        "bf16_ms_per_step": round(ms[("ours", "bfloat16")], 2),
                        "bf16_impl": b16.impl, "bf16_devices": b16.devices,
                        "peer_bf16_tokens_per_s": round(tps[("peer", "bfloat16")], 1),
                        "peer_bf16_ms_per_step": round(ms[("peer", "bfloat16")], 2),
                        "ratio_bf16": round(best_ours / tps[("peer", "bfloat16")], 3),
                        "bf16_hardware": bf16_hw,
                        "_best_ours": best_ours})
        result[name] = res
        del ours
    # MFU denominators: the best rate seen in the run (measured again at the end, so that a noisy
    # first measurement cannot inflate MFU): fp32 for the fp32 figures, bf16 for the bf16 ones
    end = matmul_rates()
    result["matmul_gflops_end"] = {k: round(v, 1) for k, v in end.items()}
    best32 = max(start["jax"], start["torch"], end["jax"], end["torch"])
    best16 = max(start["torch_bf16"], start["ours_bf16"], end["torch_bf16"], end["ours_bf16"])
    result["mfu_denominator_gflops"] = round(best32, 1)
    result["mfu_bf16_denominator_gflops"] = round(best16, 1)
    for name in names:
        r = result[name]
        fpt, fpt_peer = r.pop("_fpt"), r.pop("_fpt_peer")
        r["mfu"] = round(r["tokens_per_s"] * fpt / (best32 * 1e9), 4)
        r["peer_mfu"] = round(r["peer_tokens_per_s"] * fpt_peer / (best32 * 1e9), 4)
        if "_best_ours" in r and best16 > 0:
            r["mfu_bf16"] = round(r.pop("_best_ours") * fpt / (best16 * 1e9), 4)
            r["peer_mfu_bf16"] = round(r["peer_bf16_tokens_per_s"] * fpt_peer / (best16 * 1e9), 4)
        r.pop("_best_ours", None)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"\nMFU against {best32:.1f} GFLOP/s fp32 and {best16:.1f} GFLOP/s bf16 (best matmul rates "
          f"of the run, start and end)")
    print(f"{'config':8s} {'ms/step':>9s} {'peer ms':>9s} {'tok/s':>9s} {'peer tok/s':>10s} "
          f"{'ratio':>6s} {'MFU':>6s} {'peer MFU':>8s}")
    for name in names:
        r = result[name]
        print(f"{name:8s} {r['ms_per_step']:9.1f} {r['peer_ms_per_step']:9.1f} {r['tokens_per_s']:9.0f} "
              f"{r['peer_tokens_per_s']:10.0f} {r['ratio']:6.2f} {100 * r['mfu']:5.1f}% "
              f"{100 * r['peer_mfu']:7.1f}%")
        if "bf16_tokens_per_s" in r:
            print(f"{'  bf16':8s} {r['bf16_ms_per_step']:9.1f} {r['peer_bf16_ms_per_step']:9.1f} "
                  f"{r['bf16_tokens_per_s']:9.0f} {r['peer_bf16_tokens_per_s']:10.0f} "
                  f"{r['ratio_bf16']:6.2f} {100 * r.get('mfu_bf16', 0):5.1f}% "
                  f"{100 * r.get('peer_mfu_bf16', 0):7.1f}%   (ours: {r['bf16_impl']}, "
                  f"{r['bf16_devices']} device)")
        print(f"{'  best':8s} ratio of the best configurations (ours / peer): {r['ratio_best']:.2f}")
    print(f"host ISA: {isa['name']}" + (f" (capped at {a.isa}; torch reports "
                                        f"{result['torch_capability']})" if a.isa else "") +
          f"; bf16: {result['bf16']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
