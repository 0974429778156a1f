"""Our preference losses against trl's own, on the same model and the same pairs.

DPO / IPO: the policy and the reference are exported to transformers (`lm.interop.hf`); trl's
`DPOTrainer` computes its loss (`_compute_loss`: the policy's and the reference's log-probs of
each reply from its own forward passes, then its DPO or IPO loss) on a batch its own
`DataCollatorForPreference` builds from our token ids; ours is the `dpo` stage's loss on
`lm.data.preferences.to_rows` of the same pairs. Reward model: the `rm` run exported as
*ForSequenceClassification, trl's `RewardTrainer.compute_loss` on its collator's batch against the
`rm` stage's loss on `score_rows`. Prints both losses and their absolute difference (fp32; the
goal is <= 1e-4).

  python -m tools.rlhf_parity --run runs/dpo_hh_tiny/<ts> --json       # policy: the run,
                                                  # reference: its parent; pairs: its held-out ones
  python -m tools.rlhf_parity --run R --ref R2 --pairs 16 --loss ipo --json
  python -m tools.rlhf_parity --run runs/rm_hh_tiny/<ts> --json        # a reward model run

Needs torch, transformers and trl (pip install -r requirements-bench.txt).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/rlhf_parity.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import dataclasses
import json
import tempfile

import jax.numpy as jnp
import numpy as np

from lm import runs
from lm.config import Config
from lm.data import preferences
from lm.interop import hf
from lm import model
from lm.rl.loss import preference_loss, reward_model_loss
from lm.steps import sequence_logprobs


def ours(params, ref_params, mcfg, items, beta: float, kind: str) -> float:
    """Our loss on `items` (preferences.Encoded), rows as long as the longest side."""
    T = max(max(len(e.chosen), len(e.rejected)) for e in items) - 1
    b = preferences.to_rows(items, T)
    x, y = jnp.asarray(b["inputs"]), jnp.asarray(b["targets"])
    w = b["weights"]
    logp = (np.asarray(sequence_logprobs(params, mcfg, x, y)) * w).sum(1)
    ref = (np.asarray(sequence_logprobs(ref_params, mcfg, x, y)) * w).sum(1)
    loss, _ = preference_loss(jnp.asarray(logp), jnp.asarray(ref), jnp.asarray(w.sum(1)),
                              beta, kind)
    return float(loss)


def trl_examples(items) -> list[dict]:
    """trl's pre-tokenized form of each pair: the shared prompt, then each side's reply tokens."""
    out = []
    for e in items:
        start = e.chosen_mask.index(1)
        assert e.chosen[:start] == e.rejected[:start] and e.rejected_mask.index(1) == start
        out.append({"prompt_ids": e.chosen[:start], "chosen_ids": e.chosen[start:],
                    "rejected_ids": e.rejected[start:]})
    return out


def theirs(policy_dir: str, ref_dir: str, items, beta: float, kind: str) -> float:
    """trl's loss on the same pairs, through its DPOTrainer and collator."""
    # torch, transformers, trl: benchmark/cross-check dependencies (requirements-bench.txt)
    import torch
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    load = lambda d: transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model, ref = load(policy_dir), load(ref_dir)
    tok = transformers.AutoTokenizer.from_pretrained(policy_dir)
    with tempfile.TemporaryDirectory() as out:
        # fp32 throughout: with mixed precision on (transformers picks bf16 where the CPU has
        # it), accelerate wraps the reference model's forward in bf16 autocast
        args = DPOConfig(output_dir=out, beta=beta, loss_type=[kind], report_to=[],
                         use_cpu=True, per_device_train_batch_size=len(items),
                         max_length=None, dataset_num_proc=None, bf16=False, fp16=False)
        toy = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
        trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=toy,
                             processing_class=tok)
        batch = DataCollatorForPreference(pad_token_id=0)(trl_examples(items))
        model.eval()
        with torch.no_grad():
            loss = trainer._compute_loss(model, batch, return_outputs=False)
    return float(loss)


def compare(params, ref_params, cfg: Config, tok, items, beta: float = 0.1,
            kind: str = "sigmoid") -> dict:
    """Both losses on `items` and their difference (models exported to a temporary folder)."""
    mcfg = dataclasses.replace(cfg.model, kernels="plain", dtype="float32")
    cfg = dataclasses.replace(cfg, model=mcfg)
    with tempfile.TemporaryDirectory() as d:
        pol = hf.export(params, cfg, tok, os.path.join(d, "policy"))
        ref = hf.export(ref_params, cfg, tok, os.path.join(d, "ref"))
        a = ours(params, ref_params, mcfg, items, beta, kind)
        b = theirs(pol, ref, items, beta, kind)
    return {"loss": kind, "beta": beta, "pairs": len(items), "ours": a, "trl": b,
            "max_abs_diff": abs(a - b)}


def ours_rm(params, mcfg, items) -> float:
    T = max(max(len(e.chosen), len(e.rejected)) for e in items)
    b = preferences.score_rows(items, T)
    r = np.asarray(model.apply(params, mcfg, jnp.asarray(b["inputs"])))
    r = r[np.arange(len(r)), b["last"]]
    return float(reward_model_loss(jnp.asarray(r))[0])


def theirs_rm(folder: str, items) -> float:
    """trl's reward-model loss on the same pairs, through its RewardTrainer and collator."""
    # torch, transformers, trl: benchmark/cross-check dependencies (requirements-bench.txt)
    import torch
    import transformers
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer
    from trl.trainer.reward_trainer import DataCollatorForPreference

    rm = transformers.AutoModelForSequenceClassification.from_pretrained(
        folder, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as out:
        # rows are right-padded with id 0, as the export's config says (its pad_token_id); trl
        # would otherwise pad with the tokenizer's EOS (our BOS, at every row's start)
        args = RewardConfig(output_dir=out, report_to=[], use_cpu=True,
                            per_device_train_batch_size=len(items), dataset_num_proc=None,
                            pad_token=tok.convert_ids_to_tokens(0), bf16=False, fp16=False)
        toy = Dataset.from_list([{"chosen": "b", "rejected": "c"}])
        trainer = RewardTrainer(model=rm, args=args, train_dataset=toy, processing_class=tok)
        batch = DataCollatorForPreference(pad_token_id=0)(
            [{"chosen_ids": e.chosen, "rejected_ids": e.rejected} for e in items])
        rm.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(rm, batch)
    return float(loss)


def compare_rm(params, cfg: Config, tok, items) -> dict:
    """Both reward-model losses on `items` (the model exported to a temporary folder)."""
    mcfg = dataclasses.replace(cfg.model, kernels="plain", dtype="float32")
    cfg = dataclasses.replace(cfg, model=mcfg)
    with tempfile.TemporaryDirectory() as d:
        folder = hf.export(params, cfg, tok, os.path.join(d, "rm"))
        a, b = ours_rm(params, mcfg, items), theirs_rm(folder, items)
    return {"loss": "reward_model", "pairs": len(items), "ours": a, "trl": b,
            "max_abs_diff": abs(a - b)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="the policy: a run dir (e.g. a dpo run)")
    p.add_argument("--ref", default=None, help="the reference run (default: the run's parent)")
    p.add_argument("--pairs", type=int, default=8, help="held-out pairs of the run's data")
    p.add_argument("--data", default=None, help="preference source (default: the run's pref.data)")
    p.add_argument("--loss", choices=["sigmoid", "ipo"], default=None)
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    run = runs.load(a.run)
    pref = run.config.pref
    pairs, stats = preferences.load(a.data or pref.data)
    T = run.config.data.seq_len
    if run.config.model.head == "score":          # a reward model
        items = preferences.encode(preferences.split(pairs, "test"), run.tokenizer,
                                   T - 1)[:a.pairs]
        if not items:
            raise SystemExit(f"no held-out pair fits {T} tokens")
        out = compare_rm(run.params, run.config, run.tokenizer, items)
        out.update(run=a.run)
        print(json.dumps(out) if a.json else
              f"reward model, {out['pairs']} pairs: ours {out['ours']:.6f}, trl "
              f"{out['trl']:.6f}, |diff| {out['max_abs_diff']:.2e}")
        return 0
    ref_ref = a.ref or run.config.init_from
    if not ref_ref:
        raise SystemExit("--ref: the run has no parent (init_from); name the reference run")
    ref = runs.load(ref_ref)
    if ref.tokenizer.to_dict() != run.tokenizer.to_dict():
        raise SystemExit(f"--ref {ref_ref}: its tokenizer differs from {a.run}'s")
    items = preferences.encode(preferences.split(pairs, "test"), run.tokenizer, T)[:a.pairs]
    if not items:
        raise SystemExit(f"no held-out pair fits {T} tokens")
    out = compare(run.params, ref.params, run.config, run.tokenizer, items,
                  a.beta if a.beta is not None else pref.beta, a.loss or pref.loss)
    out.update(run=a.run, ref=ref_ref)
    if a.json:
        print(json.dumps(out))
    else:
        print(f"{out['loss']} (beta {out['beta']}), {out['pairs']} pairs: ours {out['ours']:.6f}, "
              f"trl {out['trl']:.6f}, |diff| {out['max_abs_diff']:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
