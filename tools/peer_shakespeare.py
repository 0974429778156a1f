"""Quality peer for `shakespeare_char_cpu`: the same recipe trained in PyTorch, to tell an
implementation gap from run-to-run noise.

The model is Hugging Face `GPT2LMHeadModel` (the peer of `tools/bench_train.py`) with the baby
shape. It is trained with nanoGPT's train.py recipe: AdamW (β 0.9/0.99, weight decay 0.1 on every
tensor with ≥ 2 dims, embeddings included, as nanoGPT's `configure_optimizers` does), warmup 100
then cosine 1e-3 → 1e-4 over 2000 iterations, global-norm clip 1.0, dropout 0. The batches are
ours: `lm.data.pipeline` builds the identical train windows (per seed) and the identical 200
validation batches that `lm.main` scores, and the learning rate comes from `lm.optim.schedule`.
What differs is the framework, the initial weights and the optimizer's decay groups (nanoGPT's;
ours leaves embeddings undecayed by default); `--nanogpt` also swaps GPT-2's tanh GELU for
nanoGPT's exact one (nanoGPT's bias-free layers have no HF GPT-2 switch). So a gap in val loss
across several seeds would be ours to explain.

    pip install -r requirements-bench.txt
    LM_DATA_DIR=../shared/data python -m tools.peer_shakespeare --seeds 1337,1,2
    ... --json     # one JSON object: per-seed val loss, mean and std

Each seed takes about as long as the baby run itself (~1.5–2 min on 2 cores).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/peer_shakespeare.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import time


def train_one(seed: int, *, exact_gelu: bool, steps: int | None, log) -> dict:
    import numpy as np
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from experiments import get as get_experiment
    from lm import optim
    from lm.data import pipeline

    cfg = get_experiment("shakespeare_char_cpu")
    cfg.train.seed = cfg.data.seed = seed
    if steps is not None:
        cfg.train.steps = steps
    m, o = cfg.model, cfg.optim
    lr_at = optim.schedule(o, cfg.train.steps)          # the schedule lm.main trains with
    splits = pipeline.load_token_splits(cfg.data)
    train_it, val_iter = pipeline.make_iterators(cfg.data, splits,
                                                 eval_batches=cfg.train.eval_batches)
    torch.manual_seed(seed)
    conf = GPT2Config(vocab_size=m.vocab_size, n_positions=m.block_size, n_embd=m.n_embd,
                      n_layer=m.n_layer, n_head=m.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, layer_norm_epsilon=m.norm_eps,
                      activation_function="gelu" if exact_gelu else "gelu_new",
                      bos_token_id=0, eos_token_id=None, pad_token_id=None)
    model = GPT2LMHeadModel(conf)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.b1, o.b2), eps=o.eps)

    def val_loss() -> float:
        model.eval()
        tot, n = 0.0, 0
        with torch.no_grad():
            for b in val_iter():
                logits = model(torch.from_numpy(np.asarray(b["inputs"]))).logits
                t = torch.from_numpy(np.asarray(b["targets"])).long()
                tot += float(torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="sum"))
                n += t.numel()
        model.train()
        return tot / n

    t0 = time.perf_counter()
    model.train()
    for it in range(cfg.train.steps):
        for g in opt.param_groups:
            g["lr"] = float(lr_at(it))
        b = next(train_it)
        x = torch.from_numpy(np.asarray(b["inputs"])).long()
        y = torch.from_numpy(np.asarray(b["targets"])).long()
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if o.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        if (it + 1) % 500 == 0:
            log(f"  seed {seed} step {it + 1}: train loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    v = val_loss()
    return {"seed": seed, "val_loss": v, "steps": cfg.train.steps,
            "wall_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="1337,1,2", help="comma-separated train/data seeds")
    p.add_argument("--nanogpt", action="store_true",
                   help="exact-erf GELU as nanoGPT's MLP (default: GPT-2's tanh GELU, as ours)")
    p.add_argument("--steps", type=int, default=None, help="override 2000 (smoke tests)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"{e}: pip install -r requirements-bench.txt") from e
    log = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else print
    runs = []
    for s in [int(x) for x in a.seeds.split(",") if x]:
        r = train_one(s, exact_gelu=a.nanogpt, steps=a.steps, log=log)
        log(f"seed {s}: val loss {r['val_loss']:.4f} ({r['wall_s']:.0f} s)")
        runs.append(r)
    vals = [r["val_loss"] for r in runs]
    out = {"peer": "hf-gpt2-torch, nanoGPT recipe", "gelu": "erf" if a.nanogpt else "tanh",
           "runs": runs, "mean": statistics.mean(vals),
           "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    if a.json:
        print(json.dumps(out))
    else:
        print(f"val loss over {len(vals)} seed(s): mean {out['mean']:.4f}, std {out['std']:.4f}, "
              f"min {min(vals):.4f}, max {max(vals):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
