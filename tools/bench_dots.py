"""Where our training step's time goes on this CPU: its matrix products against the rest, and our
products against torch's on the same shapes (issue 32: the limit of the fp32 step on AVX2).

Compiles our fp32 step as lm.main runs it (`tools.bench_train.Ours`: the host's cores as XLA
devices, the batch split over them) and times it (median). Reads the dots of the per-device program
from its compiled HLO (shapes, batch and contracting dimensions), then times each product alone on
the cores one device has (the process pinned to them), through XLA and through torch (`einsum` on
the same shapes, as many threads), in interleaved rounds, medians. Prints the step, each side's
time for all the step's products, the rest (the step less our products), and, for a target
ratio against a peer's step (`--peer_ms`), what the step would have to take. `--isa avx2` caps
both sides (`tools.bench_host`; XLA's YNN dot kernels ignore the cap, so on a bigger CPU our
products are flattered).

  python -m tools.bench_dots                         # table
  python -m tools.bench_dots --isa avx2 --json
  python -m tools.bench_dots --config small --rounds 2
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_dots.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import importlib.util
import json
import math
import re
import statistics
import subprocess
import tempfile
import time

from tools import bench_host
from tools.bench_train import CONFIGS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEF = re.compile(r"(%[\w.\-]+) = f32\[([\d,]*)\]")
_DOT = re.compile(r"= f32\[([\d,]*)\]\S* dot\((%[\w.\-]+), (%[\w.\-]+)\), (.*?)(?:, metadata|$)",
                  re.M)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def dots_of(hlo: str) -> list[dict]:
    """The fp32 dots of a compiled HLO module's text: operand and output shapes, batch and
    contracting dimensions (operands' shapes from their definitions: the compiled text names
    them only)."""
    shapes = {m.group(1): _ints(m.group(2)) for m in _DEF.finditer(hlo)}
    out = []
    for m in _DOT.finditer(hlo):
        dims = dict(re.findall(r"(\w+)=\{([\d,]*)\}", m.group(4)))
        lc, rc = _ints(dims.get("lhs_contracting_dims", "")), \
            _ints(dims.get("rhs_contracting_dims", ""))
        if m.group(2) not in shapes or m.group(3) not in shapes or len(lc) != 1 or len(rc) != 1:
            raise ValueError(f"bench_dots: cannot read this dot: {m.group(0)[:200]}")
        out.append({"lhs": shapes[m.group(2)], "rhs": shapes[m.group(3)], "out": _ints(m.group(1)),
                    "lhs_batch": _ints(dims.get("lhs_batch_dims", "")),
                    "rhs_batch": _ints(dims.get("rhs_batch_dims", "")),
                    "lhs_contract": lc[0], "rhs_contract": rc[0]})
    return out


def flops(dot: dict) -> int:
    return 2 * math.prod(dot["out"]) * dot["lhs"][dot["lhs_contract"]]


def einsum_spec(dot: dict) -> str:
    """The dot as an einsum (output: batch, then the lhs's free, then the rhs's free dims)."""
    letters = iter("abcdefghijklmnopqrstuvwxyz")
    lhs = [next(letters) for _ in dot["lhs"]]
    rhs: list = [None] * len(dot["rhs"])
    for i, j in zip(dot["lhs_batch"], dot["rhs_batch"]):
        rhs[j] = lhs[i]
    rhs[dot["rhs_contract"]] = lhs[dot["lhs_contract"]]
    rhs = [x or next(letters) for x in rhs]
    free_l = [lhs[i] for i in range(len(lhs)) if i not in dot["lhs_batch"] and
              i != dot["lhs_contract"]]
    free_r = [rhs[j] for j in range(len(rhs)) if j not in dot["rhs_batch"] and
              j != dot["rhs_contract"]]
    out = [lhs[i] for i in dot["lhs_batch"]] + free_l + free_r
    return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def time_products(side: str, dots: list[dict], reps: int) -> list[float]:
    """Median seconds of each product on `side` ("xla" or "torch") in this process."""
    if side == "torch":
        import torch  # the peer's library: only in the torch side's process
        torch.set_num_threads(len(os.sched_getaffinity(0)))

        def product(d):
            x, y, spec = torch.rand(*d["lhs"]), torch.rand(*d["rhs"]), einsum_spec(d)
            return lambda: torch.einsum(spec, x, y)
    else:
        import jax  # here, not at the top: the caps in the environment must precede JAX's start
        import jax.numpy as jnp

        def product(d):
            x, y = jnp.ones(d["lhs"], jnp.float32), jnp.ones(d["rhs"], jnp.float32)
            dn = (((d["lhs_contract"],), (d["rhs_contract"],)), (tuple(d["lhs_batch"]),
                                                                 tuple(d["rhs_batch"])))
            f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, dn))
            return lambda: f(x, y).block_until_ready()
    out = []
    for d in dots:
        run = product(d)
        run()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run()
            ts.append(time.perf_counter() - t0)
        out.append(statistics.median(ts))
    return out


def _timed_in_subprocess(side: str, path: str, cores: int, reps: int, env: dict) -> list[float]:
    cmd = [sys.executable, "-m", "tools.bench_dots", "--_side", side, "--_dots", path,
           "--_cores", str(cores), "--_reps", str(reps)]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"bench_dots: the {side} side failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="baby", choices=sorted(CONFIGS))
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the products")
    p.add_argument("--reps", type=int, default=20, help="timings of each product in a round")
    p.add_argument("--steps", type=int, default=300, help="timed steps of the whole step")
    p.add_argument("--peer_ms", type=float, default=0.0,
                   help="the peer's step in ms, for the step a ratio of --target needs")
    p.add_argument("--target", type=float, default=1.5)
    p.add_argument("--isa", choices=sorted(bench_host.CAPS), default=None,
                   help="cap both sides at this ISA (measures another host kind from this one)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--_side", help=argparse.SUPPRESS)
    p.add_argument("--_dots", help=argparse.SUPPRESS)
    p.add_argument("--_cores", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--_reps", type=int, default=20, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a._side:                       # one side's products, pinned to the first `_cores` cores
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:a._cores]))
        with open(a._dots) as f:
            print(json.dumps(time_products(a._side, json.load(f), a._reps)))
        return 0
    if a.steps < 1 or a.rounds < 1 or a.reps < 1:
        p.error("--steps, --rounds and --reps must be at least 1")

    if importlib.util.find_spec("torch") is None:
        p.error("the torch side needs torch: pip install -r requirements-bench.txt")
    bench_host.cap_this_process(a.isa)           # before JAX starts
    env = bench_host.isa_env(a.isa)
    from lm import parallel  # after the cap: lm imports JAX
    from tools import bench_train
    parallel.configure_cpu_devices(parallel.host_cores())
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    ours = bench_train.Ours(a.config, dtype="float32")
    times = []
    for _ in range(3):
        times += ours.run(max(1, a.steps // 3))
    step_ms = 1000 * statistics.median(times)
    hlo = ours.compiled.train_step.lower(ours.state, ours.batch()).compile().as_text()
    dots = dots_of(hlo)
    cores = max(1, parallel.host_cores() // ours.devices)
    log(f"{a.config}: step {step_ms:.2f} ms on {ours.devices} device(s); {len(dots)} products "
        f"per device, timed alone on {cores} core(s)")
    sides: dict = {"xla": [], "torch": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "dots.json")
        with open(path, "w") as f:
            json.dump(dots, f)
        for r in range(a.rounds):
            for side in sides:
                sides[side].append(_timed_in_subprocess(side, path, cores, a.reps, env))
                log(f"  round {r + 1} {side}: {1000 * sum(sides[side][-1]):.2f} ms")
    per = {s: [statistics.median(ts) for ts in zip(*v)] for s, v in sides.items()}
    gflop = sum(flops(d) for d in dots) / 1e9
    xla_ms, torch_ms = 1000 * sum(per["xla"]), 1000 * sum(per["torch"])
    result = {"config": a.config, "host_isa": bench_host.host_isa(a.isa), "isa_cap": a.isa,
              "devices": ours.devices, "cores_per_device": cores, "step_ms": step_ms,
              "products": len(dots), "products_gflop_per_device": gflop,
              "products_ms": {"xla": xla_ms, "torch": torch_ms},
              "products_gflops": {"xla": gflop / xla_ms * 1e3, "torch": gflop / torch_ms * 1e3},
              "ratio_products": xla_ms / torch_ms, "rest_ms": step_ms - xla_ms,
              "by_shape": _by_shape(dots, per)}
    if a.peer_ms:
        need = a.peer_ms / a.target
        result.update(peer_ms=a.peer_ms, target=a.target, step_needed_ms=need,
                      rest_left_at_torch_rate_ms=need - torch_ms)
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"products: XLA {xla_ms:.2f} ms ({result['products_gflops']['xla']:.0f} GFLOP/s), "
          f"torch {torch_ms:.2f} ms ({result['products_gflops']['torch']:.0f} GFLOP/s), "
          f"{gflop:.2f} GFLOP a device; the rest of the step {result['rest_ms']:.2f} ms")
    for row in result["by_shape"][:8]:
        print(f"  {row['lhs']} x {row['rhs']} ({row['count']}): XLA {row['xla_ms']:.2f} ms, "
              f"torch {row['torch_ms']:.2f} ms")
    if a.peer_ms:
        print(f"at {a.target}x a {a.peer_ms:.1f}-ms peer step: {need:.2f} ms a step, of which "
              f"{result['rest_left_at_torch_rate_ms']:.2f} ms left for the rest at torch's rate")
    return 0


def _by_shape(dots: list[dict], per: dict) -> list[dict]:
    rows: dict = {}
    for d, x, t in zip(dots, per["xla"], per["torch"]):
        k = (tuple(d["lhs"]), tuple(d["rhs"]), d["lhs_contract"], d["rhs_contract"])
        row = rows.setdefault(k, {"lhs": d["lhs"], "rhs": d["rhs"], "count": 0, "xla_ms": 0.0,
                                  "torch_ms": 0.0})
        row["count"] += 1
        row["xla_ms"] += 1000 * x
        row["torch_ms"] += 1000 * t
    return sorted(rows.values(), key=lambda r: -r["xla_ms"])


if __name__ == "__main__":
    sys.exit(main())
