"""A/B of two checkouts of lm: the train step (baby, small) and the decode step (batch 1, 8).

Runs `--measure` in a fresh process of each checkout, alternating (A, B, A, B, ...), so both see
the same machine load; prints each side's medians over rounds and the ratio B/A (> 1: B faster).
Use it to show that a refactor or an optimisation of the core did not cost speed:

  git worktree add /tmp/lm_base HEAD~3          # the code before the change
  python -m tools.bench_ab --a /tmp/lm_base --b . --rounds 3
  python -m tools.bench_ab --a /tmp/lm_base --b . --json

What one measurement is (same configs as tools/bench_train.py and tools/bench_sample.py): the
median ms per train step (baby: 3 × 20 steps, small: 2 × 5, after compilation, the batch split
over the host's cores as lm.main does) and decode tokens/s of the KV-cache engine (`small`,
16-token prompt, 128 new tokens, greedy, median of 3 after a warm-up).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/bench_ab.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import subprocess
import time


def measure(what: str = "train,decode") -> dict:
    """Runs inside the checkout under test (its own `lm` and `tools` on sys.path)."""
    from lm import parallel
    parallel.configure_cpu_devices(parallel.host_cores())
    import jax
    from tools import bench_sample, bench_train
    out = {}
    for name, steps, rounds in (("baby", 20, 3), ("small", 5, 2)) if "train" in what else ():
        ours = bench_train.Ours(name)
        times = []
        for _ in range(rounds):
            times += ours.run(steps)
        out[f"train_{name}_ms"] = 1e3 * statistics.median(times)
        del ours
    if "decode" not in what:
        return out
    s = bench_sample.Ours()
    new = 128
    for batch in (1, 8):
        prompts = s.prompts(batch)
        eng = s.engine

        def once():
            t0 = time.perf_counter()
            st = eng.start(prompts, max_new_tokens=new, temperature=0.0)
            st = eng.decode(st, new)
            jax.block_until_ready(st.n_gen)
            return time.perf_counter() - t0
        once()
        out[f"decode_b{batch}_tok_s"] = batch * new / statistics.median([once() for _ in range(3)])
    return out


def compiled_programs() -> dict:
    """The optimised HLO of the `small` train step and of the batch-8 decode loop, normalised
    (value names, parameter numbers and source metadata dropped) into sorted instruction lists:
    two checkouts whose lists are equal run the same programs, whatever the timing noise says.
    Runs inside the checkout under test (before and after the Engine/head-copy API change)."""
    import re
    from lm import parallel
    parallel.configure_cpu_devices(2)
    import jax.numpy as jnp
    from lm import sampling
    from tools import bench_sample, bench_train
    ours = bench_train.Ours("small")
    train = ours.compiled.train_step.lower(ours.state, ours.batch()).compile().as_text()
    s = bench_sample.Ours()
    eng = s.engine
    st = eng.start(s.prompts(8), max_new_tokens=64, temperature=0.0)
    params, four = eng.run_params(), jnp.asarray(4, jnp.int32)
    if hasattr(sampling, "_with_head_copy"):       # the head copy rides in the parameters
        dec = sampling.decode.lower(sampling._with_head_copy(params, eng.impl), eng.cfg, st, four)
    else:                                          # older checkouts: a head_DV argument
        dec = sampling.decode.lower(params, eng.cfg, st, four,
                                    sampling._head_copy(params["wte"], eng.impl))
    decode = dec.compile().as_text()

    def norm(text):
        out = []
        for line in text.splitlines():
            line = line.strip()
            if not (line.startswith("%") or line.startswith("ROOT")):
                continue                           # metadata tables, computation headers
            line = re.sub(r", metadata=\{[^}]*\}", "", line)
            line = re.sub(r"%[\w.\-]+", "%v", line)
            line = re.sub(r"parameter\(\d+\)", "parameter(P)", line)
            out.append(re.sub(r"\b[\w\-]+\.\d+\b", "N", line))
        return sorted(out)
    return {"train_small": norm(train), "decode_b8": norm(decode)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", help="checkout A (the baseline)")
    p.add_argument("--b", default=".", help="checkout B (default: this one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--what", default="train,decode", help="train, decode or both (comma list)")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--hlo", action="store_true",
                   help="compare the compiled programs instead of timing them (same programs: "
                        "same speed)")
    a = p.parse_args(argv)
    if a.measure:
        print(json.dumps(measure(a.what)))
        return 0
    if not a.a:
        p.error("give --a PATH (a checkout of the baseline, e.g. a git worktree)")
    sides = {"a": os.path.abspath(a.a), "b": os.path.abspath(a.b)}
    if a.hlo:
        progs = {k: run_side(v, "hlo") for k, v in sides.items()}
        same = {name: progs["a"][name] == progs["b"][name] for name in progs["a"]}
        sizes = {name: [len(progs["a"][name]), len(progs["b"][name])] for name in progs["a"]}
        print(json.dumps({"a": sides["a"], "b": sides["b"], "identical": same,
                          "instructions": sizes}))
        return 0 if all(same.values()) else 1
    rows = {"a": [], "b": []}
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    for r in range(a.rounds):
        for k in ("a", "b"):
            rows[k].append(run_side(sides[k], a.what))
            log(f"round {r + 1}/{a.rounds} {k.upper()}: " +
                ", ".join(f"{m} {v:.1f}" for m, v in rows[k][-1].items()))
    med = {k: {m: statistics.median(x[m] for x in rows[k]) for m in rows[k][0]} for k in rows}
    ratio = {}
    for m in med["a"]:
        # ms: lower is better (ratio A/B); tokens/s: higher is better (ratio B/A)
        ratio[m] = med["a"][m] / med["b"][m] if m.endswith("_ms") else med["b"][m] / med["a"][m]
    result = {"a": sides["a"], "b": sides["b"], "rounds": a.rounds, "median_a": med["a"],
              "median_b": med["b"], "speedup_b_over_a": ratio}
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"\nA = {sides['a']}\nB = {sides['b']}\nmedians over {a.rounds} alternating rounds:")
    print(f"{'measure':20s} {'A':>10s} {'B':>10s} {'B speed-up':>11s}")
    for m in med["a"]:
        print(f"{m:20s} {med['a'][m]:10.1f} {med['b'][m]:10.1f} {ratio[m]:10.3f}x")
    return 0


def run_side(path: str, what: str) -> dict:
    """`measure()` in a fresh process importing `lm` and `tools` from `path` (this file's own
    `measure`, so a baseline older than this tool can be measured too)."""
    code = ("import sys, json, importlib.util as u; sys.path.insert(0, sys.argv[1]); "
            "spec = u.spec_from_file_location('bench_ab_measure', sys.argv[2]); "
            "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(json.dumps(m.compiled_programs() if sys.argv[3] == 'hlo' "
            "else m.measure(sys.argv[3])))")
    r = subprocess.run([sys.executable, "-c", code, path, os.path.abspath(__file__), what], cwd=path,
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"measurement in {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
