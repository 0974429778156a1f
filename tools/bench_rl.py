"""An RL step's time: rollouts (generation) vs log-probs vs the update, and rollout tokens/s
against Hugging Face `generate` on the same model and batch, interleaved in the same run.

Uses the `grpo_arith_tiny` config and its parent (the latest `chat_tiny_sft` run, or `--run`):
P prompts × G samples, the task's calculator calls executed by our engine. The peer is the same
model exported to transformers (`lm.interop.hf`), sampling the same P×G rows with `generate`
(same temperature and budget, `num_return_sequences=G`, no tools: it only generates). Rounds
alternate ours / peer; figures are medians.

  python -m tools.bench_rl                # table
  python -m tools.bench_rl --json --rounds 3
  python -m tools.bench_rl --trim_ab      # the update: trimmed rows against the whole batch

`--trim_ab` times what follows the rollouts (log-prob passes and the update) three ways on each
round's rollout batch, in rotating order: `trim` (rl.trim, the default), `whole` (rl.trim=false:
every row at full length) and `before` (the whole batch plus the old-policy forward pass the
stage made before it trimmed). The three give the same gradient (tests/test_rl.py).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_rl.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import tempfile
import time

from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="chat_tiny_sft", help="the parent run (dir or experiment)")
    p.add_argument("--experiment", default="grpo_arith_tiny")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("--trim_ab", action="store_true",
                   help="time the update trimmed, whole and as before, interleaved")
    a = p.parse_args(argv)
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print

    from lm import parallel
    parallel.configure_cpu_devices(parallel.host_cores())
    import jax
    import jax.numpy as jnp
    import numpy as np
    import experiments
    from lm import process, runs, steps, train
    from lm.logs import NullWriter
    from lm import conversation as chat
    from lm.stages import grpo

    cfg = process.resolve(experiments.get(a.experiment))     # dtype and mesh for this host
    parent = runs.load(a.run, workdir=ROOT)
    cfg.init_from = parent.run_dir
    stage = grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
    c = steps.compile_steps(cfg, grpo.Stage.loss_fn(cfg))
    state = c.device_state(c.host_state(c.init_state(0)).replace(params=parent.params))
    loop = train.Loop(cfg, c, tempfile.mkdtemp(), NullWriter(), False)

    if a.trim_ab:
        return trim_ab(a, stage, c, state, log)

    try:
        import torch
        from lm.interop import hf
        hf_dir = tempfile.mkdtemp(prefix="lm_bench_rl_")
        hf.export(parent.params, parent.config, parent.tokenizer, hf_dir)
        import transformers
        torch.manual_seed(0)
        peer = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        peer.eval()
    except Exception as e:  # noqa: BLE001 - the peer is optional: report why it is missing
        peer, peer_err = None, f"{type(e).__name__}: {e}"
    rl = cfg.rl

    def ours_round(k: int) -> dict:
        t0 = time.perf_counter()
        batch = stage.next_batch(loop, state)
        t1 = time.perf_counter()
        b = c.put_batch(batch)
        _, m = c.train_step(jax.tree.map(jnp.copy, state), b)   # the step donates its state
        jax.block_until_ready(m["loss"])
        t2 = time.perf_counter()
        gen_tokens = float(stage.stats["rl/response_tokens"]) * rl.prompts * rl.samples
        return {"rollout_s": stage.stats["rl/rollout_s"], "logprob_s": stage.stats["rl/logprob_s"],
                "update_s": t2 - t1, "step_s": t2 - t0, "tokens": gen_tokens,
                "tokens_per_s": gen_tokens / stage.stats["rl/rollout_s"]}

    def peer_round(k: int) -> dict:
        convs = stage.prompts(k)
        tok = parent.tokenizer
        prompts = [chat.render_for_completion(cv, tok) for cv in convs]
        L = max(map(len, prompts))
        ids = np.zeros((len(prompts), L), np.int64)
        att = np.zeros_like(ids)
        for i, pr in enumerate(prompts):          # left padding, as generate expects
            ids[i, L - len(pr):] = pr
            att[i, L - len(pr):] = 1
        t0 = time.perf_counter()
        with torch.no_grad():
            out = peer.generate(torch.tensor(ids), attention_mask=torch.tensor(att),
                                do_sample=True, temperature=rl.temperature, top_k=0,
                                max_new_tokens=rl.max_new_tokens,
                                num_return_sequences=rl.samples,
                                eos_token_id=tok.special_id("<|assistant_end|>"),
                                pad_token_id=int(tok.bos_id))
        dt = time.perf_counter() - t0
        new = out[:, L:]
        end = tok.special_id("<|assistant_end|>")
        n = 0
        for row in new.tolist():
            n += (row.index(end) + 1) if end in row else len(row)
        return {"tokens": n, "seconds": dt, "tokens_per_s": n / dt}

    ours_round(0)                                  # compile
    mine, theirs = [], []
    for r in range(a.rounds):
        mine.append(ours_round(r + 1))
        log(f"round {r + 1}: ours {mine[-1]['tokens_per_s']:.0f} tok/s "
            f"(rollout {mine[-1]['rollout_s']:.2f} s, update {mine[-1]['update_s']:.2f} s)")
        if peer is not None:
            theirs.append(peer_round(r + 1))
            log(f"round {r + 1}: HF generate {theirs[-1]['tokens_per_s']:.0f} tok/s")
    med = lambda xs, k: statistics.median(x[k] for x in xs)
    step = med(mine, "step_s")
    out = {"config": a.experiment, "prompts": rl.prompts, "samples": rl.samples,
           "max_new_tokens": rl.max_new_tokens, "rollout_tokens_per_s": med(mine, "tokens_per_s"),
           "rollout_s": med(mine, "rollout_s"), "logprob_s": med(mine, "logprob_s"),
           "update_s": med(mine, "update_s"), "step_s": step,
           "generate_share": med(mine, "rollout_s") / step,
           "update_share": med(mine, "update_s") / step}
    if theirs:
        out["peer_tokens_per_s"] = med(theirs, "tokens_per_s")
        out["ratio"] = out["rollout_tokens_per_s"] / out["peer_tokens_per_s"]
    else:
        out["peer_error"] = peer_err
    if a.json:
        out["host_isa"] = bench_host.host_isa()
        print(json.dumps(out))
        return 0
    print(f"\n{a.experiment}: {rl.prompts} prompts × {rl.samples} samples, up to "
          f"{rl.max_new_tokens} new tokens")
    for k, v in out.items():
        print(f"  {k:22s} {v:.3f}" if isinstance(v, float) else f"  {k:22s} {v}")
    return 0


def trim_ab(a, stage, c, state, log) -> int:
    """Rounds of: one rollout batch, then its update three ways (rotating order); medians."""
    import jax
    import jax.numpy as jnp
    from lm.steps import sequence_logprobs
    arms = ("trim", "whole", "before")
    params = c.host_params(state)

    def update(arm: str, batch: dict) -> tuple[float, tuple]:
        stage.cfg.rl.trim = arm == "trim"
        t0 = time.perf_counter()
        tb = stage.train_batch(params, dict(batch), c)
        if arm == "before":                  # the old-policy pass the stage used to make
            jax.block_until_ready(sequence_logprobs(params, stage.cfg.model,
                                                    jnp.asarray(tb["inputs"]),
                                                    jnp.asarray(tb["targets"])))
        fresh = jax.tree.map(jnp.copy, state)       # the step donates its state
        _, m = c.train_step(fresh, c.put_batch(tb))
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t0,
                (tb["inputs"].shape, round(float(c.place.fetch(m)["grad_norm"]), 6)))

    times: dict = {k: [] for k in arms}
    shapes = []
    for r in range(a.rounds + 1):                   # round 0 compiles and is not counted
        batch, stats, _ = stage.rollouts(params, r)
        order = arms[r % 3:] + arms[:r % 3]
        got = {arm: update(arm, batch) for arm in order}
        norms = {arm: got[arm][1][1] for arm in arms}
        log(f"round {r}{' (compile)' if r == 0 else ''}: " + ", ".join(
            f"{arm} {got[arm][0]:.2f} s" for arm in arms)
            + f"; trimmed to {got['trim'][1][0]}; grad norms {norms}")
        if r:
            for arm in arms:
                times[arm].append(got[arm][0])
            shapes.append(list(got["trim"][1][0]))
    med = {arm: statistics.median(times[arm]) for arm in arms}
    out = {"config": a.experiment, "rounds": a.rounds, "update_s": med, "trimmed_shapes": shapes,
           "batch": [stage.cfg.data.batch_size, stage.cfg.data.seq_len],
           "before_over_trim": med["before"] / med["trim"],
           "whole_over_trim": med["whole"] / med["trim"], "host_isa": bench_host.host_isa()}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"\n{a.experiment}: log-probs + update after the rollouts, median of {a.rounds}")
        for arm in arms:
            print(f"  {arm:8s} {med[arm]:7.2f} s")
        print(f"  before / trim {out['before_over_trim']:.2f}x, whole / trim "
              f"{out['whole_over_trim']:.2f}x  (trimmed shapes {shapes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
