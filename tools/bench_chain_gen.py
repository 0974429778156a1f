"""Generation speed: nanochat's own Engine.generate (its KV cache) against our lm.sampling.Engine,
random-init models of chat_tiny_base's size, the same prompts, greedy, batch 1 and 16.

- ours: `experiments.get("chat_tiny_base")`'s model with `model.dtype` "auto" resolved for this
  host (`lm.process.resolve`: bfloat16 where lm's bf16 CPU kernels run, else float32), random
  init, `lm.sampling.Engine(params, cfg).generate([prompt], n=B, max_new_tokens=N,
  temperature=0)`: one prefill, then the jitted decode loop; no stop tokens, so every row makes N
  tokens (no tool protocol: a random model never calls the calculator).
- peer: nanochat's `GPT` (../shared/peers/nanochat, unchanged) at the same depth, width, heads and
  vocabulary (its own architecture otherwise: relu^2 MLP, value embeddings, untied head; both
  parameter counts reported), random init by its `init_weights`, and its
  `Engine(model, tokenizer).generate(prompt, num_samples=B, max_tokens=N, temperature=0)`: a
  batch-1 prefill, the KV cache copied to B rows, then one forward call per token from Python,
  with its per-row calculator state machine. It stops early only if every row samples
  <|bos|> or <|assistant_end|> (counted: tokens are what it generated). Its tokenizer (for those
  ids) is the 4,096-token one nanochat's tok_train made for tools/bench_chain.py under --workdir,
  made here the same way if absent. Its compute dtype is its own CPU choice (float32;
  `NANOCHAT_DTYPE=bfloat16` in the environment changes it).

new tokens/s = B x tokens per row / the whole generate call (prefill included), after one
warm-up call per side and batch (compilation); each round runs ours then the peer at every
batch size; medians over rounds; ratio = ours / peer.

  python -m tools.bench_chain_gen                 # table
  python -m tools.bench_chain_gen --json --rounds 3 --batches 1,16 --new_tokens 256
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_chain_gen.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import json
import statistics
import time

import jax
import numpy as np

import experiments
from lm import model, process, sampling
from lm.config import ConfigError, apply_overrides
from lm.data.sources import DataUnavailableError
from tools import bench_host, nanochat_peer

# the peer: torch and nanochat's own modules (its folder goes last on sys.path, so its `tests`
# or `scripts` packages never shadow anything); a clear message instead of a traceback if absent
try:
    import torch
    sys.path.append(nanochat_peer.PEER)
    from nanochat.engine import Engine as PeerEngine
    from nanochat.gpt import GPT, GPTConfig
    from nanochat.tokenizer import RustBPETokenizer
    PEER_ERROR = None
except ImportError as e:
    PEER_ERROR = (f"the nanochat peer cannot be imported ({e}); it should be at "
                  f"{nanochat_peer.PEER}, with its dependencies: {nanochat_peer.INSTALL}")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = "chat_tiny_base"
PROMPT_IDS = 4000        # prompt tokens are drawn below every special id of both vocabularies


class Ours:
    def __init__(self, cfg, seed: int):
        self.cfg = cfg
        self.params = jax.jit(model.init, static_argnums=0)(cfg, jax.random.PRNGKey(seed))
        self.engine = sampling.Engine(self.params, cfg)
        self.count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.params))

    def once(self, prompt: list[int], batch: int, new: int) -> tuple[float, int]:
        """(seconds, tokens per row) of one greedy generation of `batch` rows."""
        t = time.perf_counter()
        g = self.engine.generate([prompt], n=batch, max_new_tokens=new, temperature=0.0)
        dt = time.perf_counter() - t
        return dt, int(np.median(g.lengths))


class Peer:
    def __init__(self, cfg, tokenizer_dir: str, seed: int):
        torch.manual_seed(seed)
        heads = cfg.n_head
        conf = GPTConfig(sequence_len=cfg.block_size, vocab_size=cfg.vocab_size,
                         n_layer=cfg.n_layer, n_head=heads, n_kv_head=cfg.n_kv_head or heads,
                         n_embd=cfg.n_embd, window_pattern="L")
        with torch.device("meta"):
            m = GPT(conf)
        m.to_empty(device="cpu")
        m.init_weights()
        m.eval()
        self.model = m
        self.tokenizer = RustBPETokenizer.from_directory(tokenizer_dir)
        self.engine = PeerEngine(m, self.tokenizer)
        self.count = sum(p.numel() for p in m.parameters())
        self.non_embedding = m.num_scaling_params()
        self.dtype = str(next(iter(m.parameters())).dtype)

    def once(self, prompt: list[int], batch: int, new: int) -> tuple[float, int]:
        t = time.perf_counter()
        steps = 0
        for _ in self.engine.generate(prompt, num_samples=batch, max_tokens=new, temperature=0.0):
            steps += 1
        return time.perf_counter() - t, steps


def find_tokenizer(work: str, vocab: int, max_chars: int, log) -> str:
    """A nanochat tokenizer folder of `vocab` ids (tokenizer.pkl): bench_chain's, or a new one
    from nanochat's tok_train on the exported corpus (--tok_max_chars of it)."""
    root = os.path.join(work, "nanochat")
    found = sorted(glob.glob(os.path.join(root, f"tok-*-v{vocab}*", "tokenizer", "tokenizer.pkl")),
                   key=lambda p: ("-c" in os.path.basename(os.path.dirname(os.path.dirname(p))), p))
    if found:
        return os.path.dirname(found[0])
    log(f"no nanochat tokenizer of {vocab} ids under {root}: exporting the corpus and running "
        f"nanochat's tok_train on {max_chars:,} characters of it")
    data, _ = nanochat_peer.cached_export(root)
    base, _ = nanochat_peer.cached_tokenizer(root, data, vocab, max_chars=max_chars)
    return os.path.join(base, nanochat_peer.TOKENIZER_SUBDIR)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    p.add_argument("--reps", type=int, default=1, help="timed generations per side, batch, round")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--prompt_len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of chat_tiny_base (e.g. model.dtype=float32)")
    p.add_argument("--tokenizer", default=None,
                   help="a nanochat tokenizer folder (tokenizer.pkl); default: bench_chain's")
    p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench_chain"),
                   help="where bench_chain keeps nanochat's tokenizers")
    p.add_argument("--tok_max_chars", type=int, default=20_000_000,
                   help="if a tokenizer must be made: characters nanochat's tok_train reads")
    a = p.parse_args(argv)
    log = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else \
        (lambda *x: print(*x, flush=True))
    if PEER_ERROR is not None:
        print(f"error: {PEER_ERROR}", file=sys.stderr)
        return 2
    try:
        batches = [int(b) for b in a.batches.split(",")]
        cfg = process.resolve(apply_overrides(experiments.get(EXPERIMENT), a.set)).model
        tok = a.tokenizer or find_tokenizer(os.path.abspath(a.workdir), cfg.vocab_size,
                                            a.tok_max_chars, log)
        return bench(a, cfg, tok, batches, log)
    except (KeyError, ConfigError, DataUnavailableError, nanochat_peer.PeerUnavailable,
            RuntimeError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2


def bench(a, cfg, tok: str, batches: list[int], log) -> int:
    if a.prompt_len + a.new_tokens > cfg.block_size:
        raise ValueError(f"--prompt_len + --new_tokens must fit the context ({cfg.block_size})")
    prompt = np.random.default_rng(a.seed).integers(0, PROMPT_IDS, a.prompt_len).tolist()
    load0 = [round(x, 2) for x in os.getloadavg()]
    ours, peer = Ours(cfg, a.seed), Peer(cfg, tok, a.seed)
    if peer.tokenizer.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"the nanochat tokenizer at {tok} has more ids than the model")
    warm = {}
    for b in batches:                          # compilation (ours), first allocations (both)
        warm[b] = (ours.once(prompt, b, a.new_tokens)[0], peer.once(prompt, b, a.new_tokens)[0])
        log(f"warm-up batch {b}: ours {warm[b][0]:.1f} s, nanochat {warm[b][1]:.1f} s")
    runs = {(side, b): [] for side in ("ours", "peer") for b in batches}
    for r in range(a.rounds):
        for b in batches:
            for side, eng in (("ours", ours), ("peer", peer)):
                for _ in range(a.reps):
                    s, n = eng.once(prompt, b, a.new_tokens)
                    runs[(side, b)].append((s, n, b * n / s))
                log(f"round {r + 1} batch {b} {side}: {runs[(side, b)][-1][2]:8.1f} new tok/s "
                    f"({runs[(side, b)][-1][1]} per row)")
    out: dict = {"new_tokens": a.new_tokens, "prompt_len": a.prompt_len, "rounds": a.rounds,
                 "reps": a.reps, "temperature": 0.0, "ours_dtype": cfg.dtype,
                 "ours_impl": ours.engine.impl, "peer_dtype": peer.dtype,
                 "param_counts": {"ours": ours.count, "peer": peer.count,
                                  "peer_non_embedding": peer.non_embedding["transformer_matrices"]
                                  + peer.non_embedding["scalars"]},
                 "shape": {"n_layer": cfg.n_layer, "n_embd": cfg.n_embd, "n_head": cfg.n_head,
                           "vocab_size": cfg.vocab_size, "block_size": cfg.block_size},
                 "peer_tokenizer": tok}
    for b in batches:
        mine = [x[2] for x in runs[("ours", b)]]
        theirs = [x[2] for x in runs[("peer", b)]]
        out[f"batch_{b}"] = {
            "ours_tokens_per_s": round(statistics.median(mine), 1),
            "peer_tokens_per_s": round(statistics.median(theirs), 1),
            "ratio": round(statistics.median(mine) / statistics.median(theirs), 3),
            "ours_per_round": [round(x, 1) for x in mine],
            "peer_per_round": [round(x, 1) for x in theirs],
            "peer_tokens_per_row": statistics.median(x[1] for x in runs[("peer", b)]),
            "warmup_s": {"ours": round(warm[b][0], 2), "peer": round(warm[b][1], 2)}}
    out.update(host_isa=bench_host.host_isa(), cpu_count=os.cpu_count(), loadavg_start=load0,
               loadavg_end=[round(x, 2) for x in os.getloadavg()])
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"\n{a.new_tokens} new tokens after a {a.prompt_len}-token prompt, greedy, median of "
          f"{a.rounds} round(s); ours {cfg.dtype} ({ours.engine.impl}), nanochat {peer.dtype}")
    print(f"{'batch':>5s} {'ours tok/s':>11s} {'nanochat tok/s':>15s} {'ours/peer':>10s}")
    for b in batches:
        r = out[f"batch_{b}"]
        print(f"{b:5d} {r['ours_tokens_per_s']:11.1f} {r['peer_tokens_per_s']:15.1f} "
              f"{r['ratio']:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
