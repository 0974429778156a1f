"""The chat chain's base stage against nanochat's own base_train: the same wall-clock training
budget, whole processes alternating, both scored in bits per byte on the same held-out documents.

Sides (each a whole process, timed from start to exit; every round runs them in this order):

- ours: `python -m lm.main -e chat_tiny_base` (its model: `experiments/chat.py`'s `_tiny_model`, a
  4,096-token BPE, bf16 where lm's CPU kernels run) with `train.steps` calibrated so that its training steps fill --budget_s;
  `eval.tasks` off (the copy/ICL probes are not bits per byte) and no end-of-run text sample.
- runcpu: nanochat's `scripts.base_train` (../shared/peers/nanochat, unchanged) at
  `runs/runcpu.sh`'s recipe (--depth=6 --head-dim=64 --window-pattern=L --max-seq-len=512
  --device-batch-size=32 --total-batch-size=16384), `--num-iterations` calibrated the same way,
  with a tokenizer trained by its own `scripts.tok_train` on the same text at its default vocabulary
  (32,768; --runcpu_vocab).
- params: the same recipe at our model's non-embedding parameter count (--depth, --aspect-ratio and
  --head-dim searched with nanochat's own GPT on the meta device; both counts reported) and a
  4,096-token tokenizer from its tok_train (our vocabulary size).

Data: `tools/nanochat_peer.py` writes chat_tiny's training documents (as text) and exactly its
held-out documents (the last parquet file: nanochat's val split; read back once by nanochat's own
reader to check) for nanochat; ours reads the corpus itself. Both sides are scored on the same
number of held-out tokens (--eval_tokens; the set is ~156k tokens) every ~10% of their steps and
at the end, each by its own code: ours `val_bpb` (metrics.jsonl), nanochat its "Validation bpb"
lines. What differs from runcpu.sh besides the step count: the evaluation cadence and size (it
has every 100 steps over 524,288 tokens), no samples (`--sample-every=-1`, as ours), its CORE
metric off (`--core-metric-every=-1`, as runcpu.sh), `--run=dummy` (no wandb, as runcpu.sh).

Calibration: before the rounds, one short probe process per side measures its steady-state seconds
per training step (ours: the metrics rows after the first; nanochat: its per-step `dt` from step
2 on); steps = budget / that (or --steps). Curve times are seconds since the process started
(imports, data, compilation and evaluations included: nothing is left out); tokens/s is trained
tokens over the training steps' own time, the first steps (compilation) left out on both sides.
`ours_time_to_peer_bpb_s`: the first time in our curve at which our bpb reaches the peer's final
bpb (interpolated between evaluations; null if never); "the peer" is runcpu (nanochat's own
recipe), `*_params_*` the same-size shape. On 2 cores the defaults take about 1.5-2 hours (a
nanochat step is 15-60 s there, and its first step compiles for ~2 min).

  python -m tools.bench_chain                         # table (600 s budget, 2 rounds)
  python -m tools.bench_chain --json --budget_s 600 --rounds 2
  python -m tools.bench_chain --budget_s 20 --rounds 1 --sides ours,params   # a quick look
  python -m tools.bench_chain --steps ours=600,runcpu=40,params=300          # no probes

Needs torch, wandb, ... for the peer (pip install -r requirements.txt -r requirements-bench.txt)
and the data folder ($LM_DATA_DIR, default ../shared/data). Caches (our tokenizer and tokenized
corpus, nanochat's export and tokenizers) and every process's output go under --workdir.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_chain.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import dataclasses
import json
import math
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from typing import Optional

import jax

import experiments
from lm import model, process
from lm.config import ConfigError, apply_overrides
from lm.data.sources import DataUnavailableError
from tools import bench_host, nanochat_peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
EXPERIMENT = "chat_tiny_base"
SIDES = ("ours", "runcpu", "params")
RUNCPU_SHAPE = {"depth": 6, "head_dim": 64, "aspect_ratio": 64}     # runcpu.sh (aspect: default)
RECIPE = ["--window-pattern=L", "--max-seq-len=512", "--device-batch-size=32",
          "--total-batch-size=16384"]                                # the rest of runcpu.sh's flags
PEER_OFF = ["--core-metric-every=-1", "--sample-every=-1", "--run=dummy"]
PEER_TOKENS_PER_STEP, PEER_ROWS = 16384, 32 * 512                   # total batch, one micro-batch
WARM_STEPS = 10          # steps left out of tokens/s (compilation), as nanochat's own total time


@dataclasses.dataclass
class Run:
    rc: int
    wall_s: float
    lines: list            # (seconds since start, stdout line)
    log: str


def timed(cmd: list[str], *, cwd: str, env: dict, log: str, timeout: float) -> Run:
    """Run `cmd`, timestamping each stdout line as it arrives (stderr goes to log + '.err')."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    lines = []
    with open(log, "w", buffering=1) as out, open(log + ".err", "w") as err:
        out.write("$ " + " ".join(cmd) + "\n")
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True,
                             bufsize=1)
        killer = threading.Timer(timeout, p.kill)
        killer.start()
        try:
            for line in p.stdout:
                t = time.perf_counter() - t0
                lines.append((t, line.rstrip("\n")))
                out.write(f"[{t:8.2f}] {line}")
            rc = p.wait()
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
    return Run(rc, wall, lines, log)


def failed(what: str, r: Run) -> SystemExit:
    tail = "\n".join(x for _, x in r.lines[-15:])
    with open(r.log + ".err") as f:
        tail += "\n" + f.read()[-2500:]
    return SystemExit(f"{what} failed (exit {r.rc}); output in {r.log}[.err]:\n{tail}")


def warm_steps(steps: int) -> int:
    return WARM_STEPS if steps >= 4 * WARM_STEPS else max(1, steps // 4)


def time_to(curve: list, target: Optional[float]) -> Optional[float]:
    """The first time at which the curve [(t, bpb)] is <= target, linearly interpolated."""
    if target is None:
        return None
    for i, (t, b) in enumerate(curve):
        if b <= target:
            if i == 0:
                return t
            t0, b0 = curve[i - 1]
            return t0 + (t - t0) * (b0 - target) / (b0 - b)
    return None


# ---- ours -------------------------------------------------------------------------------------

def ours_env(work: str, cap: Optional[str]) -> dict:
    env = dict(os.environ)
    env.setdefault("LM_DATA_DIR", os.path.join(SHARED, "data"))
    env.setdefault("LM_CACHE_DIR", os.path.join(work, "lm_cache"))
    env.setdefault("LM_TOKENIZER_DIR", os.path.join(work, "lm_tokenizers"))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("XLA_FLAGS", None)
    return bench_host.isa_env(cap, env)


def ours_cmd(run_dir: str, steps: int, *, eval_batches: int, sets: list[str],
             probe: bool = False) -> list[str]:
    if probe:       # step times only: log often, one tiny evaluation at the end
        every, log_every, eval_batches = steps, 5, 1
    elif steps >= 100:
        every, log_every = max(10, round(steps / 100) * 10), 10
    else:
        every = log_every = max(1, round(steps / 10))
    over = {"train.steps": steps, "train.eval_every": every, "train.log_every": log_every,
            "train.eval_batches": eval_batches, "train.interim_eval_batches": 0,
            "train.sample_tokens": 0, "eval.tasks": "", "eval.every": 0, "checkpoint.every": 0}
    cmd = [sys.executable, "-m", "lm.main", "-e", EXPERIMENT, "--run_dir", run_dir]
    for k, v in over.items():
        cmd += ["--set", f"{k}={v}"]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def parse_ours(r: Run, run_dir: str, tokens_per_step: int) -> dict:
    """Curve, final bpb and throughput of one of our runs (metrics.jsonl + stdout times)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    train = sorted((x for x in rows if "tokens_per_s" in x), key=lambda x: x["step"])
    evals = {}
    for x in rows:
        if "val_bpb" in x:
            evals[(x["step"], bool(x.get("final")))] = x["val_bpb"]
    times = {}
    for t, line in r.lines:
        m = re.match(r"(final \(step (\d+)\)|step (\d+)): .*val_bpb ([0-9.]+)", line)
        if m:
            final = m.group(2) is not None
            times[(int(m.group(2) or m.group(3)), final)] = t
    curve = sorted((round(times[k], 2), v) for k, v in evals.items() if k in times)
    steps = train[-1]["step"] if train else 0
    intervals, prev = [], 0
    for x in train:                      # (first step, last step, seconds) between metrics rows
        n = x["step"] - prev
        intervals.append((prev, x["step"], n * tokens_per_step / max(x["tokens_per_s"], 1e-9)))
        prev = x["step"]
    return _summary(r, curve, [v for k, v in evals.items() if k[1]], steps, intervals,
                    tokens_per_step)


def _summary(r: Run, curve: list, finals: list, steps: int, intervals: list,
             tokens_per_step: int) -> dict:
    """The figures every side reports, from its curve and its training intervals."""
    skip = warm_steps(steps)
    warm = [iv for iv in intervals if iv[0] >= skip] or intervals[1:] or intervals
    tok = sum((b - a) * tokens_per_step for a, b, _ in warm)
    return {"final_bpb": finals[-1] if finals else (curve[-1][1] if curve else None),
            "steps": steps, "tokens": steps * tokens_per_step,
            "tokens_per_s": round(tok / sum(s for *_, s in warm), 1) if warm else None,
            "train_s": round(sum(s for *_, s in intervals), 2), "wall_s": round(r.wall_s, 2),
            "first_eval_s": curve[0][0] if curve else None, "curve": curve, "log": r.log}


def ours_step_s(run_dir: str, tokens_per_step: int) -> float:
    """Seconds per training step from a probe's metrics rows (the first row left out)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(x) for x in f if x.strip()]
    tps = [x["tokens_per_s"] for x in rows if "tokens_per_s" in x]
    if len(tps) < 2:
        raise SystemExit(f"the probe of ours logged {len(tps)} rows; give --probe_steps >= 10")
    return tokens_per_step / statistics.median(tps[1:])


# ---- nanochat ---------------------------------------------------------------------------------

def shape_flags(shape: dict) -> list[str]:
    return [f"--depth={shape['depth']}", f"--aspect-ratio={shape['aspect_ratio']}",
            f"--head-dim={shape['head_dim']}"]


def peer_cmd(shape: dict, steps: int, *, eval_tokens: int, probe: bool = False) -> list[str]:
    every = -1 if probe else max(1, round(steps / 10))
    return ([sys.executable, "-m", "scripts.base_train"] + shape_flags(shape) + RECIPE +
            [f"--num-iterations={steps}", f"--eval-every={every}",
             f"--eval-tokens={eval_tokens}"] + PEER_OFF)


STEP_RE = re.compile(r"step (\d+)/(\d+) .*\| dt: ([0-9.]+)ms \| tok/sec: ([\d,]+)")
EVAL_RE = re.compile(r"Step (\d+) \| Validation bpb: ([0-9.]+|inf|nan)")
COUNT_RE = re.compile(r"(wte|value_embeds|lm_head|transformer_matrices|scalars|total)\s+: "
                      r"([\d,]+)$")


def parse_peer(r: Run) -> dict:
    dts = {int(m.group(1)): float(m.group(3)) / 1e3 for _, x in r.lines if (m := STEP_RE.match(x))}
    curve = [(round(t, 2), float(m.group(2))) for t, x in r.lines if (m := EVAL_RE.match(x))]
    counts = {m.group(1): int(m.group(2).replace(",", "")) for _, x in r.lines
              if (m := COUNT_RE.match(x))}
    config = {k: int(m.group(1)) for k in ("n_layer", "n_head", "n_embd", "vocab_size")
              for _, x in r.lines if (m := re.search(rf'"{k}": (\d+)', x))}
    dtype = next((m.group(1) for _, x in r.lines if (m := re.match(r"COMPUTE_DTYPE: (\S+)", x))),
                 None)
    intervals = [(i, i + 1, dt) for i, dt in sorted(dts.items())]
    out = _summary(r, curve, [], len(dts), intervals, PEER_TOKENS_PER_STEP)
    out.update(param_counts=counts, model_config=config, dtype=dtype)
    return out


def peer_step_s(r: Run) -> float:
    dts = [float(m.group(3)) / 1e3 for _, x in r.lines if (m := STEP_RE.match(x))]
    if len(dts) < 3:
        raise SystemExit(f"the nanochat probe logged {len(dts)} steps; give --probe_steps >= 4")
    return statistics.median(dts[2:])


SEARCH = """\
import json, sys
import torch
from nanochat.gpt import GPT, GPTConfig
want = json.loads(sys.argv[1])
out = []
for s in want["shapes"]:
    heads = s["model_dim"] // s["head_dim"]
    cfg = GPTConfig(sequence_len=want["seq_len"], vocab_size=s["vocab_size"], n_layer=s["depth"],
                    n_head=heads, n_kv_head=heads, n_embd=s["model_dim"], window_pattern="L")
    with torch.device("meta"):
        out.append(dict(s, **GPT(cfg).num_scaling_params()))
with open(sys.argv[2], "w") as f:
    json.dump(out, f)
"""


def model_dim(shape: dict) -> int:
    """base_train's width: depth x aspect ratio, rounded up to a multiple of the head dim."""
    return -(-shape["depth"] * shape["aspect_ratio"] // shape["head_dim"]) * shape["head_dim"]


def candidate_shapes(target: int, vocab: int) -> list[dict]:
    """(depth, aspect ratio, head dim) whose width puts the non-embedding count near target
    (~12 d w^2, only to prune; nanochat's own model counts the candidates)."""
    out = {}
    for depth in range(1, 17):
        for hd in (32, 64, 128):
            for ar in range(1, 257):
                s = {"depth": depth, "aspect_ratio": ar, "head_dim": hd, "vocab_size": vocab}
                s["model_dim"] = model_dim(s)
                if 0.5 < 12 * depth * s["model_dim"] ** 2 / target < 2:
                    out.setdefault((depth, hd, s["model_dim"]), s)   # the smallest aspect ratio
    return list(out.values())


def nanochat_counts(shapes: list[dict], seq_len: int) -> list[dict]:
    """nanochat's own parameter counts (num_scaling_params) of each shape, built on meta."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "counts.json")
        nanochat_peer.run_peer(["-c", SEARCH, json.dumps({"shapes": shapes, "seq_len": seq_len}),
                                out], tmp, timeout=600)
        with open(out) as f:
            rows = json.load(f)
    for r in rows:
        r["non_embedding"] = r["transformer_matrices"] + r["scalars"]
    return rows


def ours_counts(cfg) -> dict:
    """Our parameter count, and without the token embedding and output head (nanochat's
    non-embedding count leaves out wte, value embeddings and lm_head)."""
    m = dataclasses.replace(cfg.model, dtype="float32")         # counts do not depend on dtype
    shapes = jax.eval_shape(lambda: model.init(m, jax.random.key(0)))
    total = emb = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        n = math.prod(leaf.shape)
        total += n
        if any(str(getattr(k, "key", "")) in ("wte", "lm_head") for k in path):
            emb += n
    return {"total": total, "non_embedding": total - emb, "n_layer": m.n_layer,
            "n_embd": m.n_embd, "head_dim": m.n_embd // m.n_head}


# ---- the benchmark ----------------------------------------------------------------------------

@dataclasses.dataclass
class Side:
    name: str
    shape: Optional[dict] = None          # nanochat: depth, aspect_ratio, head_dim, ...
    tok_base: Optional[str] = None        # nanochat: the base dir holding its tokenizer
    step_s: Optional[float] = None
    steps: Optional[int] = None
    command: str = ""


class Bench:
    def __init__(self, a, work: str, data_base: str, cfg):
        self.a, self.work, self.data_base, self.cfg = a, work, data_base, cfg
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
        self.eval_batches = max(1, a.eval_tokens // self.tokens_per_step)
        self.sets = list(a.set)
        self.timeout = max(1800.0, 6 * a.budget_s + 1200)

    def path(self, *p) -> str:
        return os.path.join(self.work, *p)

    def run(self, side: Side, tag: str, steps: int, probe: bool = False) -> tuple[Run, dict]:
        log = self.path("logs", self.stamp, f"{side.name}_{tag}.out")
        if side.name == "ours":
            run_dir = self.path("runs", self.stamp, f"ours_{tag}")
            cmd = ours_cmd(run_dir, steps, eval_batches=self.eval_batches, sets=self.sets,
                           probe=probe)
            r = timed(cmd, cwd=ROOT, env=ours_env(self.work, self.a.isa), log=log,
                      timeout=self.timeout)
            if r.rc != 0:
                raise failed(f"ours ({tag})", r)
            res = {} if probe else parse_ours(r, run_dir, self.tokens_per_step)
            step_s = ours_step_s(run_dir, self.tokens_per_step) if probe else None
            if not self.a.keep_checkpoints:
                shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
        else:
            base = nanochat_peer.link_base(self.path("nanochat", "runs", self.stamp,
                                                     f"{side.name}_{tag}"),
                                           self.data_base, side.tok_base)
            cmd = peer_cmd(side.shape, steps, eval_tokens=self.a.eval_tokens, probe=probe)
            env = bench_host.isa_env(self.a.isa, nanochat_peer.peer_env(base))
            r = timed(cmd, cwd=nanochat_peer.PEER, env=env, log=log, timeout=self.timeout)
            if r.rc != 0:
                raise failed(f"nanochat {side.name} ({tag})", r)
            res = {} if probe else parse_peer(r)
            step_s = peer_step_s(r) if probe else None
            if not self.a.keep_checkpoints:
                shutil.rmtree(os.path.join(base, "base_checkpoints"), ignore_errors=True)
        if not probe:
            side.command = " ".join(cmd)
        return r, (res if not probe else {"step_s": step_s, "wall_s": round(r.wall_s, 2)})

    def calibrate(self, side: Side, log) -> dict:
        fixed = dict(kv.split("=") for kv in self.a.steps.split(",")) if self.a.steps else {}
        if side.name in fixed:
            side.steps = int(fixed[side.name])
            return {"steps": side.steps, "from": "--steps"}
        probe_steps = max(self.a.probe_steps, 10 if side.name == "ours" else 4)
        _, res = self.run(side, "probe", probe_steps, probe=True)
        side.step_s = res["step_s"]
        side.steps = max(1, round(self.a.budget_s / side.step_s))
        log(f"probe {side.name}: {side.step_s:.3f} s/step -> {side.steps} steps "
            f"({res['wall_s']:.0f} s process)")
        return {"steps": side.steps, "probe_step_s": round(side.step_s, 4),
                "probe_steps": probe_steps, "probe_wall_s": res["wall_s"]}


def build_sides(a, work: str, data_base: str, ours_n: dict, log) -> tuple[list[Side], dict]:
    """The nanochat shapes (the params one searched), their tokenizers, and what was chosen."""
    sides, info = [], {}
    wanted = a.sides.split(",")
    vocabs = {"runcpu": a.runcpu_vocab, "params": ours_n["vocab_size"]}
    if wanted == ["ours"]:
        return [Side("ours")], info
    shapes = [dict(RUNCPU_SHAPE, vocab_size=vocabs["runcpu"])]
    shapes[0]["model_dim"] = model_dim(shapes[0])
    if a.params_shape:
        depth, ar, hd = (int(x) for x in a.params_shape.split(","))
        forced = {"depth": depth, "aspect_ratio": ar, "head_dim": hd,
                  "vocab_size": vocabs["params"]}
        shapes.append(dict(forced, model_dim=model_dim(forced)))
    else:
        shapes += candidate_shapes(ours_n["non_embedding"], vocabs["params"])
    counts = nanochat_counts(shapes, 512)
    runcpu = counts[0]
    best = min(counts[1:], key=lambda s: (abs(s["non_embedding"] - ours_n["non_embedding"]),
                                          abs(s["depth"] - ours_n["n_layer"]),
                                          abs(s["head_dim"] - ours_n["head_dim"])))
    log(f"nanochat params shape: depth {best['depth']}, aspect {best['aspect_ratio']}, head dim "
        f"{best['head_dim']} (width {best['model_dim']}): {best['non_embedding']:,} non-embedding "
        f"parameters, ours {ours_n['non_embedding']:,}")
    for name in SIDES:
        if name not in wanted:
            continue
        if name == "ours":
            sides.append(Side("ours"))
            continue
        shape = runcpu if name == "runcpu" else best
        t0 = time.perf_counter()
        tok, tinfo = nanochat_peer.cached_tokenizer(os.path.join(work, "nanochat"), data_base,
                                                    vocabs[name], max_chars=a.tok_max_chars)
        log(f"nanochat tokenizer for {name}: vocab {vocabs[name]} "
            f"({time.perf_counter() - t0:.0f} s; {tok})")
        sides.append(Side(name, shape=shape, tok_base=tok))
        info[name] = {"shape": {k: shape[k] for k in ("depth", "aspect_ratio", "head_dim",
                                                      "model_dim", "vocab_size")},
                      "params": {k: shape[k] for k in ("total", "non_embedding", "wte",
                                                       "value_embeds", "lm_head",
                                                       "transformer_matrices", "scalars")},
                      "tokenizer": {k: tinfo[k] for k in ("vocab_size", "max_chars", "command",
                                                          "train_s")}}
    return sides, info


def median_or_none(xs: list) -> Optional[float]:
    """Median with None as 'never' (+inf): None if the median itself is never."""
    vals = sorted(math.inf if x is None else x for x in xs)
    if not vals:
        return None
    m = statistics.median(vals)
    return None if math.isinf(m) else round(m, 4)


def summarize(a, sides: list[Side], rounds: list[dict], extra: dict) -> dict:
    out: dict = {"budget_s": a.budget_s, "rounds": a.rounds}
    names = [s.name for s in sides]
    peers = [n for n in names if n != "ours"]
    for r in rounds:                       # time for one side to reach another's final bpb
        if "ours" in r:
            for p in peers:
                r["ours"][f"time_to_{p}_bpb_s"] = time_to(r["ours"]["curve"], r[p]["final_bpb"])
                r[p]["time_to_ours_bpb_s"] = time_to(r[p]["curve"], r["ours"]["final_bpb"])
    for n in names:
        key = "ours" if n == "ours" else f"peer_{n}"
        for k in ("final_bpb", "tokens_per_s", "wall_s", "train_s", "first_eval_s"):
            vals = [r[n][k] for r in rounds if r[n].get(k) is not None]
            out[f"{key}_{k.replace('final_', '')}"] = \
                round(statistics.median(vals), 4) if vals else None
        out[f"{key}_steps"] = next(s.steps for s in sides if s.name == n)
    for p in peers:
        if "ours" in names:
            out[f"ours_time_to_peer_{p}_bpb_s"] = median_or_none(
                [r["ours"][f"time_to_{p}_bpb_s"] for r in rounds])
            out[f"peer_{p}_time_to_ours_bpb_s"] = median_or_none(
                [r[p]["time_to_ours_bpb_s"] for r in rounds])
    main_peer = "runcpu" if "runcpu" in peers else (peers[0] if peers else None)
    if main_peer:                          # "the peer": nanochat's own recipe when it ran
        out["peer"] = main_peer
        for k in ("bpb", "tokens_per_s", "wall_s", "train_s"):
            out[f"peer_{k}"] = out[f"peer_{main_peer}_{k}"]
        if "ours" in names:
            out["ours_time_to_peer_bpb_s"] = out[f"ours_time_to_peer_{main_peer}_bpb_s"]
    out.update(extra)
    out["commands"] = {s.name: s.command for s in sides}
    out["per_round"] = rounds
    return out


def print_table(out: dict, sides: list[Side]) -> None:
    print(f"\nbudget {out['budget_s']:g} s of training, median of {out['rounds']} round(s); "
          f"bits per byte on the same {out['held_out']['documents']} held-out documents")
    print(f"{'side':8s} {'params (non-emb)':>17s} {'vocab':>6s} {'steps':>6s} {'tok/s':>9s} "
          f"{'train s':>8s} {'wall s':>8s} {'bpb':>8s}  ours reaches it at")
    for s in sides:
        key = "ours" if s.name == "ours" else f"peer_{s.name}"
        pc = out["param_counts"][key]
        reach = "" if s.name == "ours" else out.get(f"ours_time_to_peer_{s.name}_bpb_s")
        reach = "" if s.name == "ours" else ("never" if reach is None else f"{reach:.0f} s")
        bpb = out[f"{key}_bpb"]
        print(f"{s.name:8s} {pc['non_embedding']:>17,d} {pc['vocab_size']:>6d} "
              f"{out[f'{key}_steps']:>6d} {out[f'{key}_tokens_per_s'] or 0:>9,.0f} "
              f"{out[f'{key}_train_s'] or 0:>8.1f} {out[f'{key}_wall_s'] or 0:>8.1f} "
              f"{bpb if bpb is not None else float('nan'):>8.4f}  {reach}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--budget_s", type=float, default=600.0, help="training seconds per run")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians reported)")
    p.add_argument("--sides", default=",".join(SIDES), help="any of ours,runcpu,params")
    p.add_argument("--eval_tokens", type=int, default=65536,
                   help="held-out tokens per evaluation, both sides (a multiple of 16384; the "
                        "held-out set is ~156k tokens, our recipe's own evaluation 131072)")
    p.add_argument("--probe_steps", type=int, default=20, help="steps of each calibration probe")
    p.add_argument("--steps", default="", help="fixed steps, no probe: ours=N,runcpu=N,params=N")
    p.add_argument("--runcpu_vocab", type=int, default=32768,
                   help="the runcpu side's vocabulary (nanochat's tok_train default: 32768)")
    p.add_argument("--tok_max_chars", type=int, default=None,
                   help="characters nanochat's tok_train reads (default: its own, 2B = all)")
    p.add_argument("--params_shape", default="", metavar="DEPTH,ASPECT,HEAD_DIM",
                   help="the params side's nanochat shape (default: the searched closest count)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override for our run, passed to lm.main")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_chain"),
                   help="caches, run folders and every process's output")
    p.add_argument("--keep_checkpoints", action="store_true")
    p.add_argument("--isa", choices=sorted(bench_host.CAPS), default=None,
                   help="cap both sides at this ISA (another host kind, emulated from this one)")
    a = p.parse_args(argv)
    if a.rounds < 1 or a.budget_s <= 0:
        p.error("--rounds >= 1 and --budget_s > 0")
    if set(a.sides.split(",")) - set(SIDES) or not a.sides:
        p.error(f"--sides: a comma list of {','.join(SIDES)}")
    if a.eval_tokens < PEER_ROWS or a.eval_tokens % PEER_ROWS:
        p.error(f"--eval_tokens must be a positive multiple of {PEER_ROWS} (nanochat's rows)")
    if a.steps and not re.fullmatch(r"(ours|runcpu|params)=\d+(,(ours|runcpu|params)=\d+)*",
                                    a.steps):
        p.error("--steps: side=N,... with sides among ours,runcpu,params")
    if a.params_shape and not re.fullmatch(r"\d+,\d+,\d+", a.params_shape):
        p.error("--params_shape: DEPTH,ASPECT,HEAD_DIM, e.g. 6,42,64")
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else \
        (lambda *x: print(*x, flush=True))
    try:
        return bench(a, log)
    except (nanochat_peer.PeerUnavailable, DataUnavailableError, ConfigError, RuntimeError,
            ValueError) as e:          # what is missing or wrong, or nanochat's own output
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


def bench(a, log) -> int:
    if any(s != "ours" for s in a.sides.split(",")):
        nanochat_peer.check_peer()
    work = os.path.abspath(a.workdir)
    os.environ.setdefault("LM_DATA_DIR", os.path.join(SHARED, "data"))
    try:
        cfg = apply_overrides(experiments.get(EXPERIMENT), a.set)
    except KeyError as e:
        raise ValueError(f"--set: {e.args[0] if e.args else e}") from None
    ours_n = dict(ours_counts(cfg), vocab_size=cfg.model.vocab_size)
    t0 = time.perf_counter()
    docs = nanochat_peer.load_corpus(cfg.data.source)
    data_base, manifest = nanochat_peer.cached_export(os.path.join(work, "nanochat"),
                                                      cfg.data.source, docs)
    if any(s != "ours" for s in a.sides.split(",")) and \
            not nanochat_peer.verify_val(data_base, docs[1]):
        raise RuntimeError(f"nanochat's reader does not read back our held-out documents from "
                           f"{data_base}")
    del docs
    log(f"{cfg.data.source} for nanochat: {manifest['train_docs']:,} training and "
        f"{manifest['val_docs']:,} held-out documents ({time.perf_counter() - t0:.0f} s; "
        f"{data_base})")
    sides, peer_info = build_sides(a, work, data_base, ours_n, log)
    b = Bench(a, work, data_base, cfg)
    load0 = [round(x, 2) for x in os.getloadavg()]
    calibration = {s.name: b.calibrate(s, log) for s in sides}
    rounds = []
    for k in range(a.rounds):
        rnd = {}
        for s in sides:
            _, rnd[s.name] = b.run(s, f"r{k + 1}", s.steps)
            x = rnd[s.name]
            log(f"round {k + 1}/{a.rounds} {s.name}: {x['steps']} steps, bpb {x['final_bpb']}, "
                f"{x['tokens_per_s']} tok/s, train {x['train_s']} s, wall {x['wall_s']} s")
        rounds.append(rnd)
    dtype = process.resolve(cfg).model.dtype
    counts = {"ours": {k: ours_n[k] for k in ("total", "non_embedding", "vocab_size")}}
    for n, info in peer_info.items():
        counts[f"peer_{n}"] = dict(info["params"], vocab_size=info["shape"]["vocab_size"])
    extra = {"param_counts": counts, "peer_shapes": peer_info, "calibration": calibration,
             "ours_dtype": dtype,
             "peer_dtype": {n: r[n]["dtype"] for r in rounds[:1] for n in r if n != "ours"},
             "eval": {"tokens": a.eval_tokens, "ours_batches": b.eval_batches,
                      "peer_steps": a.eval_tokens // PEER_ROWS, "every": "~10% of the steps"},
             "held_out": {"documents": manifest["val_docs"], "chars": manifest["val_chars"],
                          "conversations": manifest["val_conversations"],
                          "nanochat_reads_back_the_same": a.sides != "ours" or None},
             "host_isa": bench_host.host_isa(a.isa), "isa_cap": a.isa,
             "cpu_count": os.cpu_count(), "loadavg_start": load0,
             "loadavg_end": [round(x, 2) for x in os.getloadavg()],
             "logs": os.path.join(work, "logs", b.stamp)}
    out = summarize(a, sides, rounds, extra)
    if a.json:
        print(json.dumps(out))
    else:
        print_table(out, sides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
