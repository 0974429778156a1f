"""The main job against nanoGPT's own loop: whole processes, alternating, wall times and val losses.

Runs the README's first command's training part (`python -m lm.main --experiment
shakespeare_char_cpu`, in this environment) and `../shared/peers/nanogpt/run_baby.sh` (nanoGPT's
CPU baby GPT, unchanged) one after the other for `--rounds` rounds, times each process from start
to exit, and parses both final validation losses (ours: the 200-batch estimate of the README;
nanoGPT's: its own 20-batch estimate). Prints median wall times and the ratio peer / ours (> 1:
ours faster). Our runs share the machine's compile cache (`lm.process.compile_cache`, as a
user's second run does: XLA's programs and the oneDNN kernel already built); `--cold` gives each
of our runs an empty one (a first run on a fresh machine). Needs torch for the peer
(requirements-bench.txt) and tinyshakespeare in `$LM_DATA_DIR` (default ../shared/data).

  python -m tools.bench_main                 # table
  python -m tools.bench_main --json --rounds 3
  python -m tools.bench_main --json --cold     # every run of ours compiles from scratch
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_main.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import time

from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
PEER = os.path.join(SHARED, "peers", "nanogpt", "run_baby.sh")


def ours(extra: list[str], cap: str | None = None, cold: bool = False) -> dict:
    work = tempfile.mkdtemp(prefix="lm_bench_main_")
    env = dict(os.environ)
    if cold:
        env["LM_MACHINE_CACHE_DIR"] = os.path.join(work, "machine_cache")
    env.setdefault("LM_DATA_DIR", os.path.join(SHARED, "data"))
    env.pop("XLA_FLAGS", None)
    env = bench_host.isa_env(cap, env)
    cmd = [sys.executable, "-m", "lm.main", "--experiment", "shakespeare_char_cpu",
           "--workdir", work, "--no_progress"] + extra
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"lm main job failed:\n{r.stderr[-3000:]}")
    m = re.search(r'"val_loss": ([0-9.]+)', r.stdout)
    return {"wall_s": wall, "val_loss": float(m.group(1)) if m else float("nan")}


def peer(cap: str | None = None) -> dict:
    if not os.path.exists(PEER):
        raise SystemExit(f"nanoGPT peer not found at {PEER}")
    t0 = time.perf_counter()
    r = subprocess.run(["bash", PEER, sys.executable], capture_output=True, text=True,
                       timeout=3600, env=bench_host.isa_env(cap))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"nanoGPT failed (pip install -r requirements-bench.txt?):\n"
                         f"{r.stderr[-3000:]}")
    vals = re.findall(r"step (\d+): train loss [0-9.]+, val loss ([0-9.]+)", r.stdout)
    return {"wall_s": wall, "val_loss": float(vals[-1][1]) if vals else float("nan")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (>= 2)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for our run (ablations), passed to lm.main")
    p.add_argument("--isa", choices=sorted(bench_host.CAPS), default=None,
                   help="cap both sides at this ISA (another host kind, emulated from this one)")
    p.add_argument("--cold", action="store_true",
                   help="each of our runs with an empty compile cache (a fresh machine's first "
                        "run)")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    extra = [x for s in a.set for x in ("--set", s)]
    mine, theirs = [], []
    for r in range(a.rounds):
        mine.append(ours(extra, a.isa, a.cold))
        log(f"round {r + 1}/{a.rounds}: lm {mine[-1]['wall_s']:.1f} s (val {mine[-1]['val_loss']:.4f})")
        theirs.append(peer(a.isa))
        log(f"round {r + 1}/{a.rounds}: nanoGPT {theirs[-1]['wall_s']:.1f} s "
            f"(val {theirs[-1]['val_loss']:.4f})")
    wall = statistics.median(x["wall_s"] for x in mine)
    peer_wall = statistics.median(x["wall_s"] for x in theirs)
    out = {"wall_s": round(wall, 2), "peer_wall_s": round(peer_wall, 2),
           "ratio": round(peer_wall / wall, 3), "val_loss": mine[-1]["val_loss"],
           "peer_val_loss": theirs[-1]["val_loss"], "rounds": a.rounds,
           "walls": [round(x["wall_s"], 2) for x in mine],
           "peer_walls": [round(x["wall_s"], 2) for x in theirs],
           "host_isa": bench_host.host_isa(a.isa), "isa_cap": a.isa,
           "compile_cache": "cold" if a.cold else "machine"}
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"\nlm main job: {wall:.1f} s (median of {a.rounds}), val loss {out['val_loss']:.7f}")
    print(f"nanoGPT:     {peer_wall:.1f} s (median of {a.rounds}), val loss {out['peer_val_loss']:.4f}")
    print(f"ratio (nanoGPT wall / ours): {out['ratio']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
