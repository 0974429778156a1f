"""SFT optimizer steps per second: our chat_tiny_sft train step against nanochat's own chat_sft
step, on the same packed conversations, whole processes alternating.

The data (both sides): --batches batches of `experiments.get("chat_tiny_sft")`'s mixture packed by
our SFT stage's own packer (`lm.data.sft.SFTBatches` built as `lm/stages/sft.py` builds it: the
`sft.mixture` weights, data.seq_len 512, data.batch_size 16, `sft.buffer`, data.seed), tokenized
by the chain's 4,096-token BPE (a saved one, or one trained here on the mixture's text: the JSON
says which), cycled through by both sides. nanochat reads the same token ids: inputs as int32,
targets as int64 with -1 (its ignore index) wherever our weight is 0 (prompts, tool outputs, BOS,
padding), as its `sft_data_generator_bos_bestfit` hands them to the model. Rows as they are: both
are BOS-started best-fit packed conversations padded with BOS. One difference stays: ours attends
within each conversation (per-conversation positions and segment ids); nanochat's rows are one
causal sequence (positions 0..511, no document mask), as in its own chat_sft.

Sides (each round: ours, then the peer; every side a fresh process, so one side's threads never
share a process with the other's):

- ours: what `python -m lm.main -e chat_tiny_sft` runs per step. The worker process does what
  lm.main and `lm.train.prepare` do: `process.configure(cfg)` before JAX starts (model.dtype auto
  decided, the CPU split into devices), `steps.compile_steps(cfg, stages.loss_fn(cfg))`, a first
  state (`init_state`: random parameters and a fresh optimizer, which is what the SFT stage's
  `initial_state` gives without `sft.keep_optimizer`, a parent's parameters aside), and then the
  loop's step, `state, metrics = c.train_step(state, c.put_batch(batch))`, with the metrics fetched
  every `train.log_every` steps as the loop does (no host sync in between). It runs with mimalloc
  preloaded, as `lm/__init__.py` re-executes lm.main. Left out: the packing (`stage.next_batch`,
  done ahead for both sides), evaluations, checkpoints, the progress bar.
- peer: nanochat's GPT (../shared/peers/nanochat, unchanged) at our shape (chat_tiny_sft's depth,
  width and heads, read from the experiment; vocabulary 4,096, sequence 512, window pattern L as runs/runcpu.sh; its own
  architecture otherwise), built as `checkpoint_manager.build_model` does on CPU (meta device,
  `to_empty`, `init_weights`, the state dict as float32 loaded with assign=True, `train()`; random
  weights instead of a base checkpoint), then exactly chat_sft.py's step: `torch.compile(model,
  dynamic=False)` (chat_sft compiles on every device, CPU included), `model.setup_optimizer(
  unembedding_lr, embedding_lr, matrix_lr, weight_decay=0.0)` (MuonAdamW) with the LRs a runcpu.sh
  base checkpoint hands on (base_train's defaults 0.008 / 0.3 / 0.02; chat_sft's own fallbacks
  are 0.004 / 0.3 / 0.02), times --init-lr-frac 0.8; a fresh optimizer (its "optimizer checkpoint
  not found" branch); its compute dtype from `nanochat.common` (float32 on CPU;
  NANOCHAT_DTYPE=bfloat16 in the environment changes it); and per step: `loss = model(x, y)`
  (cross-entropy with ignore_index=-1, mean), `loss.backward()`, the LR multiplier and Muon
  momentum set on every group, `optimizer.step()`, `model.zero_grad(set_to_none=True)`, the
  `train_loss.item()` of its logging line, and its gc freeze after step 1. One micro-batch per
  step: `--device-batch-size=16 --max-seq-len=512 --total-batch-size=8192` (grad_accum 1).

Timing: --warmup steps per process first (compilation: XLA's, and torch.compile's inductor for the
model and nanochat's compiled AdamW/Muon kernels; and the first touch of our process's working
set: in bf16 mimalloc hands out fresh huge pages for about the first 10 steps, ~70-90 page faults
and 0.3-0.5 s of system time a step, until the resident size levels off at ~6 GB and the faults
stop, docs/performance.md), then --steps steps timed as one block (the whole loop: seconds per
step = block / steps); medians over --rounds rounds; ratio = ours / peer steps per second (> 1:
ours faster). The peer's own per-step `dt` (as chat_sft prints it) is reported beside it, and our
timed block's system time and page faults per step (`ours_sys_s_per_step`,
`ours_minor_faults_per_step`: near 0 once the working set is in place).

  python -m tools.bench_chain_sft                    # table
  python -m tools.bench_chain_sft --json --rounds 3 --steps 30
  python -m tools.bench_chain_sft --json --rounds 1 --steps 3 --warmup 1   # a quick look

Needs torch and nanochat for the peer (pip install -r requirements.txt -r requirements-bench.txt)
and the data folder ($LM_DATA_DIR, default ../shared/data) for the mixture's tasks.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_chain_sft.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import json
import resource
import shutil
import statistics
import subprocess
import tempfile
import time

import jax
import numpy as np

import experiments
from lm import host, kernels, paths, process, stages, steps, tasks
from lm.config import ConfigError, apply_overrides, parse_weights
from lm.data import corpus
from lm.data.sft import Mixture, SFTBatches
from lm.data.sources import DataUnavailableError
from lm.tasks import TaskDataError
from lm.tokenizer import load_tokenizer, train_bpe
from tools import bench_host, nanochat_peer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared"))
EXPERIMENT = "chat_tiny_sft"
OURS_KEYS = ("inputs", "targets", "positions", "segment_ids", "weights")
IGNORE = -1                                  # nanochat's ignore_index (chat_sft, gpt.py)
PEER_MODULES = ("torch", "filelock")         # what nanochat.gpt imports on its way
# chat_sft.py: LRs inherited from the base checkpoint's user_config (a runcpu.sh base_train run:
# its defaults), then its own schedule arguments' defaults
PEER_RECIPE = {"embedding_lr": 0.3, "unembedding_lr": 0.008, "matrix_lr": 0.02,
               "weight_decay": 0.0, "init_lr_frac": 0.8, "warmup_ratio": 0.0,
               "warmdown_ratio": 0.5, "final_lr_frac": 0.0, "grad_accum_steps": 1,
               "torch_compile": True, "window_pattern": "L", "optimizer_state": "fresh"}
# where a chain run keeps its trained tokenizers: this checkout's, then work folders beside it
TOKENIZER_GLOBS = (os.path.join("{tokdir}", "*.json"),
                   os.path.join(ROOT, "..", "runs_*", "runs", "tokenizers", "*.json"))
TOKENIZER_TEXT_CONVERSATIONS = 4000         # the fallback tokenizer's text: this many of the mix

# The peer process: nanochat's own modules only (cwd = the nanochat folder; no lm, no JAX).
PEER_STEP = r"""
import gc, json, sys, time
import numpy as np
import torch
from nanochat.common import COMPUTE_DTYPE, COMPUTE_DTYPE_REASON, compute_init
from nanochat.gpt import GPT, GPTConfig

a = json.loads(sys.argv[1])
r = a["recipe"]
ddp, ddp_rank, ddp_local_rank, ddp_world_size, device = compute_init("cpu")
d = np.load(a["data"])
xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in d["peer_inputs"]]    # int32
ys = [torch.from_numpy(np.ascontiguousarray(y)) for y in d["peer_targets"]]   # int64, -1 ignored

# checkpoint_manager.build_model(..., phase="train") on CPU, random weights for the checkpoint's
with torch.device("meta"):
    model = GPT(GPTConfig(**a["config"]))
model.to_empty(device=device)
model.init_weights()
state = {k: v.float() if v.dtype == torch.bfloat16 else v for k, v in model.state_dict().items()}
model.load_state_dict(state, strict=True, assign=True)
model.train()
counts = model.num_scaling_params()

# scripts/chat_sft.py from here on
orig_model = model
if r["torch_compile"]:
    model = torch.compile(model, dynamic=False)
optimizer = model.setup_optimizer(unembedding_lr=r["unembedding_lr"],
                                  embedding_lr=r["embedding_lr"], matrix_lr=r["matrix_lr"],
                                  weight_decay=r["weight_decay"])
scaler = torch.amp.GradScaler() if COMPUTE_DTYPE == torch.float16 else None
for group in optimizer.param_groups:
    group["lr"] = group["lr"] * r["init_lr_frac"]
    group["initial_lr"] = group["lr"]
grad_accum_steps = r["grad_accum_steps"]
num_iterations = a["warmup"] + a["steps"]

def get_lr_multiplier(progress):
    if progress < r["warmup_ratio"]:
        return (progress + 1e-8) / r["warmup_ratio"]
    elif progress <= 1.0 - r["warmdown_ratio"]:
        return 1.0
    else:
        decay = (progress - (1.0 - r["warmdown_ratio"])) / r["warmdown_ratio"]
        return (1 - decay) * 1.0 + decay * r["final_lr_frac"]

def get_muon_momentum(it):
    frac = min(it / 300, 1)
    return (1 - frac) * 0.85 + frac * 0.95

step, it = 0, 1                       # `it`: batches its loader has yielded (the first prefetched)
x, y = xs[0], ys[0]
smooth_train_loss, ema_beta = 0.0, 0.9

def train_step():
    global x, y, step, it, smooth_train_loss
    t0 = time.time()
    for micro_step in range(grad_accum_steps):
        loss = model(x, y)
        train_loss = loss.detach()
        loss = loss / grad_accum_steps
        if scaler is not None:
            scaler.scale(loss).backward()
        else:
            loss.backward()
        x, y = xs[it % len(xs)], ys[it % len(ys)]    # the next batch (its loader's prefetch)
        it += 1
    progress = min(it / num_iterations, 1.0)         # --num-iterations: approx_progress
    lrm = get_lr_multiplier(progress)
    muon_momentum = get_muon_momentum(step)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * lrm
        if group["kind"] == "muon":
            group["momentum"] = muon_momentum
    if scaler is not None:
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    model.zero_grad(set_to_none=True)
    dt = time.time() - t0
    step += 1
    loss_value = train_loss.item()                   # its logging line, every step
    smooth_train_loss = ema_beta * smooth_train_loss + (1 - ema_beta) * loss_value
    if step == 1:
        gc.collect()
        gc.freeze()
        gc.disable()
    return dt, loss_value

t = time.perf_counter()
warm = [train_step() for _ in range(a["warmup"])]
warmup_s = time.perf_counter() - t
t = time.perf_counter()
timed = [train_step() for _ in range(a["steps"])]
block_s = time.perf_counter() - t
out = {"s_per_step": block_s / a["steps"], "block_s": block_s, "warmup_s": warmup_s,
       "dt_median_s": float(np.median([s for s, _ in timed])),
       "loss_first": (warm or timed)[0][1], "loss_last": timed[-1][1],
       "dtype": str(COMPUTE_DTYPE), "dtype_reason": COMPUTE_DTYPE_REASON,
       "param_dtype": str(next(orig_model.parameters()).dtype),
       "wte_dtype": str(orig_model.transformer.wte.weight.dtype),
       "params": counts, "torch": torch.__version__, "threads": torch.get_num_threads(),
       "compiled": r["torch_compile"]}
with open(a["out"], "w") as f:
    json.dump(out, f)
"""


# ---- the data -----------------------------------------------------------------------------------

def peer_batch(batch: dict) -> tuple[np.ndarray, np.ndarray]:
    """Our SFT batch as nanochat's chat_sft loader hands it to the model: (inputs int32, targets
    int64 with -1, its ignore index, wherever our weight is 0)."""
    inputs = np.asarray(batch["inputs"], np.int32)
    targets = np.asarray(batch["targets"], np.int64).copy()
    targets[np.asarray(batch["weights"]) == 0] = IGNORE
    return inputs, targets


def find_tokenizer(path: str | None, cfg, log) -> tuple[object, dict]:
    """The chain's BPE (vocabulary = the model's, with the chat tokens): --tokenizer, else a saved
    one (lm.paths.tokenizer_dir(), then ../runs_*/runs/tokenizers), else one trained here on the
    mixture's conversations."""
    vocab = cfg.model.vocab_size
    if path:
        tok = load_tokenizer(path)
        if tok.chat is None or tok.vocab_size > vocab:
            raise ValueError(f"--tokenizer {path}: needs the chat tokens and at most {vocab} ids")
        return tok, {"source": "--tokenizer", "path": os.path.abspath(path),
                     "vocab_size": tok.vocab_size}
    found = []
    for g in TOKENIZER_GLOBS:
        found += sorted(glob.glob(g.format(tokdir=paths.tokenizer_dir())))
    for p in found:
        try:
            tok = load_tokenizer(p)
        except (ValueError, KeyError, OSError):
            continue
        if tok.chat is not None and tok.vocab_size == vocab:
            return tok, {"source": "saved", "path": os.path.abspath(p),
                         "vocab_size": tok.vocab_size}
    log(f"no saved {vocab}-id chat BPE found ({len(found)} candidate file(s)): training one on "
        f"{TOKENIZER_TEXT_CONVERSATIONS} conversations of the mixture")
    mix = Mixture(parse_weights(cfg.sft.mixture, tasks.NAMES, key="sft.mixture"), "train",
                  cfg.data.seed)
    texts = [corpus.text_of(mix.conversation(i)) for i in range(TOKENIZER_TEXT_CONVERSATIONS)]
    t0 = time.perf_counter()
    tok = train_bpe(texts, vocab)
    return tok, {"source": "trained here (no saved one)", "path": None,
                 "vocab_size": tok.vocab_size, "conversations": TOKENIZER_TEXT_CONVERSATIONS,
                 "train_s": round(time.perf_counter() - t0, 2)}


def pack(cfg, tok, n: int, path: str) -> dict:
    """`n` batches as the SFT stage packs them, ours and nanochat's arrays, saved to `path`."""
    d = cfg.data
    weights = parse_weights(cfg.sft.mixture, tasks.NAMES, key="sft.mixture")
    it = SFTBatches(tok, weights, split="train", seq_len=d.seq_len, batch_size=d.batch_size,
                    buffer=cfg.sft.buffer, seed=d.seed)
    batches = [next(it) for _ in range(n)]
    arrays = {k: np.stack([b[k] for b in batches]) for k in OURS_KEYS}
    peer = [peer_batch(b) for b in batches]
    arrays["peer_inputs"] = np.stack([x for x, _ in peer])
    arrays["peer_targets"] = np.stack([y for _, y in peer])
    np.savez(path, **arrays)
    stats = it.packer.stats
    return {"batches": n, "shape": list(arrays["inputs"].shape[1:]),
            "tokens_per_step": d.batch_size * d.seq_len,
            "trained_tokens_per_step": round(float((arrays["weights"] > 0).sum()) / n, 1),
            "content_tokens_per_step": round(stats.tokens / n, 1),
            "conversations_per_row": round(stats.conversations / max(stats.rows, 1), 2),
            "dropped_long": stats.dropped_long}


# ---- the sides ----------------------------------------------------------------------------------

def peer_config(m, seq_len: int) -> dict:
    """nanochat's GPTConfig at our model's shape."""
    return {"sequence_len": seq_len, "vocab_size": m.vocab_size, "n_layer": m.n_layer,
            "n_head": m.n_head, "n_kv_head": m.n_kv_head or m.n_head, "n_embd": m.n_embd,
            "window_pattern": PEER_RECIPE["window_pattern"]}


def ours_env(cap: str | None) -> tuple[dict, str]:
    """Our worker's environment: lm.main's (mimalloc preloaded as lm/__init__.py re-executes it,
    no inherited XLA_FLAGS, the data folder) and the allocator it gets."""
    env = dict(os.environ)
    env.setdefault("LM_DATA_DIR", os.path.join(SHARED, "data"))
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("XLA_FLAGS", None)
    lib = host.mimalloc_path()
    allocator = "system"
    if "mimalloc" in env.get("LD_PRELOAD", ""):
        allocator = "mimalloc"
    elif (lib and env.get("LM_ALLOCATOR", "mimalloc") != "system"
          and sys.platform.startswith("linux")):
        env["LD_PRELOAD"] = lib + (":" + env["LD_PRELOAD"] if env.get("LD_PRELOAD") else "")
        env.setdefault("MIMALLOC_PURGE_DELAY", "-1")
        allocator = "mimalloc"
    return bench_host.isa_env(cap, env), allocator


def run_side(cmd: list[str], *, cwd: str, env: dict, out: str, what: str,
             timeout: float) -> dict:
    """One worker process; its JSON result, or an error with its output's tail."""
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} ran past {timeout:.0f} s") from None
    if r.returncode != 0 or not os.path.exists(out):
        raise RuntimeError(f"{what} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    with open(out) as f:
        res = json.load(f)
    res["process_s"] = round(time.perf_counter() - t0, 2)
    return res


def ours_worker(a) -> int:
    """`--worker ours`: lm.main's setup and step on the packed batches; writes its JSON."""
    cfg = process.configure(apply_overrides(experiments.get(EXPERIMENT), a.set))  # before JAX
    c = steps.compile_steps(cfg, stages.loss_fn(cfg))
    state = c.init_state(cfg.train.seed)
    with np.load(a.data) as d:
        arrays = {k: d[k] for k in OURS_KEYS}
    batches = [{k: v[i] for k, v in arrays.items()} for i in range(len(arrays["inputs"]))]
    log_every = cfg.train.log_every
    losses, k = [], 0

    def run(n: int) -> float:
        nonlocal state, k
        t0 = time.perf_counter()
        for i in range(n):
            state, m = c.train_step(state, c.put_batch(batches[k % len(batches)]))
            k += 1
            if (i + 1) % log_every == 0 or i + 1 == n or k == 1:   # the loop's fetches (and
                losses.append(float(c.place.fetch(m)["loss"]))     # the very first loss)
        return time.perf_counter() - t0

    warmup_s = run(a.warmup) if a.warmup else 0.0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    block_s = run(a.steps)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(c.host_state(state).params))
    out = {"s_per_step": block_s / a.steps, "block_s": block_s, "warmup_s": warmup_s,
           "loss_first": losses[0], "loss_last": losses[-1], "dtype": cfg.model.dtype,
           "kernels": kernels.resolve_for(cfg.model), "devices": int(c.mesh.devices.size),
           "mesh": {name: int(n) for name, n in dict(c.mesh.shape).items()}, "params": total,
           # the kernel's share: a step that faults in fresh pages shows it here (the allocator)
           "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / a.steps,
           "minor_faults_per_step": (r1.ru_minflt - r0.ru_minflt) / a.steps}
    with open(a.out, "w") as f:
        json.dump(out, f)
    return 0


# ---- the benchmark ------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    p.add_argument("--steps", type=int, default=30, help="timed steps per side and round")
    p.add_argument("--warmup", type=int, default=12,
                   help="steps per process before timing (the first compiles; the working set "
                   "is first touched)")
    p.add_argument("--batches", type=int, default=10, help="distinct packed batches, cycled")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of chat_tiny_sft for our side (e.g. model.dtype=float32)")
    p.add_argument("--tokenizer", default=None, help="a saved lm BPE (default: the chain's, found "
                   "under runs/tokenizers, else trained here)")
    p.add_argument("--no_peer_compile", action="store_true",
                   help="skip torch.compile of the model (chat_sft compiles it; a quick look)")
    p.add_argument("--isa", choices=sorted(bench_host.CAPS), default=None,
                   help="cap both sides at this ISA (another host kind, emulated from this one)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker process")
    p.add_argument("--worker", choices=["ours"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--data", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.rounds < 1 or a.steps < 1 or a.warmup < 0 or a.batches < 1:
        p.error("--rounds, --steps and --batches >= 1, --warmup >= 0")
    if a.worker == "ours":
        return ours_worker(a)
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else \
        (lambda *x: print(*x, flush=True))
    try:
        nanochat_peer.check_peer(PEER_MODULES)
        return bench(a, log)
    except nanochat_peer.PeerUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (KeyError, ConfigError, DataUnavailableError, TaskDataError, RuntimeError,
            ValueError, OSError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


def bench(a, log) -> int:
    os.environ.setdefault("LM_DATA_DIR", os.path.join(SHARED, "data"))
    try:
        cfg = process.resolve(apply_overrides(experiments.get(EXPERIMENT), a.set))
    except KeyError as e:
        raise ValueError(f"--set: {e.args[0] if e.args else e}") from None
    tok, tok_info = find_tokenizer(a.tokenizer, cfg, log)
    work = tempfile.mkdtemp(prefix="lm_bench_chain_sft_")
    try:
        return measure(a, cfg, tok, tok_info, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(a, cfg, tok, tok_info: dict, work: str, log) -> int:
    """Pack the batches into `work`, run the rounds, print the result."""
    m, d = cfg.model, cfg.data
    data = os.path.join(work, "batches.npz")
    t0 = time.perf_counter()
    packed = pack(cfg, tok, a.batches, data)
    log(f"packed {a.batches} batches of {d.batch_size} x {d.seq_len} from {EXPERIMENT}'s mixture "
        f"({time.perf_counter() - t0:.1f} s; {packed['trained_tokens_per_step']:.0f} trained "
        f"tokens per step)")
    o_env, allocator = ours_env(a.isa)
    recipe = dict(PEER_RECIPE, torch_compile=not a.no_peer_compile)
    p_env = bench_host.isa_env(a.isa, nanochat_peer.peer_env(os.path.join(work, "nanochat")))
    load0 = [round(x, 2) for x in os.getloadavg()]
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for r in range(a.rounds):
        out = os.path.join(work, f"ours_{r}.json")
        cmd = [sys.executable, "-m", "tools.bench_chain_sft", "--worker", "ours", "--data", data,
               "--out", out, "--steps", str(a.steps), "--warmup", str(a.warmup)]
        for s in a.set:
            cmd += ["--set", s]
        runs["ours"].append(run_side(cmd, cwd=ROOT, env=o_env, out=out, what="ours",
                                     timeout=a.timeout))
        out = os.path.join(work, f"peer_{r}.json")
        args = {"data": data, "out": out, "steps": a.steps, "warmup": a.warmup,
                "config": peer_config(m, d.seq_len), "recipe": recipe}
        runs["peer"].append(run_side([sys.executable, "-c", PEER_STEP, json.dumps(args)],
                                     cwd=nanochat_peer.PEER, env=p_env, out=out,
                                     what="nanochat's chat_sft step", timeout=a.timeout))
        log(f"round {r + 1}/{a.rounds}: ours {1 / runs['ours'][-1]['s_per_step']:.3f} steps/s, "
            f"nanochat {1 / runs['peer'][-1]['s_per_step']:.3f} steps/s")
    out = summarize(a, cfg, runs, packed, tok_info, recipe, allocator)
    out.update(host_isa=bench_host.host_isa(a.isa), isa_cap=a.isa, cpu_count=os.cpu_count(),
               loadavg_start=load0, loadavg_end=[round(x, 2) for x in os.getloadavg()])
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"\n{EXPERIMENT}'s SFT step, {packed['tokens_per_step']} tokens per step "
          f"({d.batch_size} x {d.seq_len}), median of {a.rounds} round(s) of {a.steps} steps")
    print(f"{'side':9s} {'dtype':>16s} {'params':>11s} {'s/step':>8s} {'steps/s':>8s}")
    for side, key in (("ours", "ours"), ("nanochat", "peer")):
        print(f"{side:9s} {out[f'{key}_dtype']:>16s} {out['param_counts'][key]:>11,d} "
              f"{out[f'{key}_s_per_step']:>8.3f} {out[f'{key}_steps_per_s']:>8.3f}")
    print(f"ours / nanochat: {out['ratio']:.2f}x steps per second (ours: {out['ours_allocator']}, "
          f"{out['ours_sys_s_per_step']:.3f} s of system time and "
          f"{out['ours_minor_faults_per_step']:,.0f} page faults a step)")
    return 0


def summarize(a, cfg, runs: dict, packed: dict, tok_info: dict, recipe: dict,
              allocator: str) -> dict:
    m, d = cfg.model, cfg.data
    med = {s: statistics.median(x["s_per_step"] for x in runs[s]) for s in runs}
    first = {s: runs[s][0] for s in runs}
    pc = first["peer"]["params"]
    return {
        "ours_steps_per_s": round(1 / med["ours"], 4),
        "peer_steps_per_s": round(1 / med["peer"], 4),
        "ratio": round(med["peer"] / med["ours"], 3),
        "ours_s_per_step": round(med["ours"], 4), "peer_s_per_step": round(med["peer"], 4),
        "peer_dt_median_s": round(statistics.median(x["dt_median_s"] for x in runs["peer"]), 4),
        "tokens_per_step": packed["tokens_per_step"],
        "ours_tokens_per_s": round(packed["tokens_per_step"] / med["ours"], 1),
        "peer_tokens_per_s": round(packed["tokens_per_step"] / med["peer"], 1),
        "rounds": a.rounds, "steps": a.steps, "warmup": a.warmup,
        "ours_dtype": first["ours"]["dtype"], "ours_kernels": first["ours"]["kernels"],
        "ours_devices": first["ours"]["devices"], "ours_allocator": allocator,
        "ours_sys_s_per_step": round(statistics.median(x["sys_s_per_step"] for x in runs["ours"]),
                                     4),
        "ours_minor_faults_per_step": round(statistics.median(
            x["minor_faults_per_step"] for x in runs["ours"]), 1),
        "peer_dtype": first["peer"]["dtype"], "peer_dtype_reason": first["peer"]["dtype_reason"],
        "peer_param_dtype": first["peer"]["param_dtype"],
        "peer_torch": first["peer"]["torch"], "peer_threads": first["peer"]["threads"],
        "param_counts": {"ours": first["ours"]["params"], "peer": pc["total"],
                         "peer_groups": {k: v for k, v in pc.items() if k != "total"}},
        "shape": {"ours": {"n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head,
                           "n_kv_head": m.n_kv_head or m.n_head, "head_dim": m.n_embd // m.n_head,
                           "vocab_size": m.vocab_size, "mlp": m.mlp,
                           "tie_embeddings": m.tie_embeddings},
                  "peer": peer_config(m, d.seq_len),
                  "batch": [d.batch_size, d.seq_len]},
        "data": dict(packed, experiment=EXPERIMENT, mixture=cfg.sft.mixture),
        "tokenizer": tok_info,
        "peer_recipe": dict(recipe, device_batch_size=d.batch_size, max_seq_len=d.seq_len,
                            total_batch_size=d.batch_size * d.seq_len),
        "differences": [
            "attention: ours attends within each packed conversation (segment ids, positions "
            "restart per conversation); nanochat's rows are one causal sequence (no document "
            "mask, positions 0..T-1), as in its chat_sft",
            "architectures: each its own at the same depth/width/heads/vocabulary (nanochat: "
            "value embeddings, smear, backout, relu^2; see param_counts)",
            "optimizers: ours AdamW (chat_tiny_sft's optim); nanochat MuonAdamW",
            "dtypes: each side's own choice on this host (ours_dtype, peer_dtype)",
            "weights: random on both sides (no parent checkpoint); a fresh optimizer on both"],
        "per_round": {s: [{k: (round(v, 4) if isinstance(v, float) else v)
                           for k, v in x.items() if k != "params"} for x in runs[s]]
                      for s in runs},
    }


if __name__ == "__main__":
    sys.exit(main())
