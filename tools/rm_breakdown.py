"""Where a reward model ranks held-out pairs right and wrong: accuracy per kind of pair.

  python -m tools.rm_breakdown --run rm_tiny --workdir /work/runs

Rebuilds the run's held-out pairs exactly as its `rm` stage did (`pref.data`, the same split
and `pref.val_pairs`), scores both sides with the reward model and groups the pairs by their
`source`: for the synthetic labeller, the task and the two variants (`reference`, `wrong`,
`rambling`, `polite`, `off_topic`; `lm.rl.labeller`), so a gap to the accuracy goal shows
which rule the model has not learned (e.g. a wrong final answer it cannot check); for HH-RLHF,
the subset. Writes `rm_breakdown.json` and `rm_breakdown.md` into the run directory and prints
the table (± one binomial standard error).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import math

import numpy as np

from lm import runs
from lm.data import preferences
from lm.rl.rewards import RewardModelScorer


def kind(source: str) -> str:
    """A pair's group: the task and its two variants, unordered ("wrong vs reference")."""
    task, _, variants = source.partition(":")
    if ">" not in variants:
        return source or "all"
    return f"{task}: " + " vs ".join(sorted(variants.split(">")))


def breakdown(run, batch: int = 64) -> dict:
    cfg = run.config
    pairs, _ = preferences.load(cfg.pref.data, cfg.pref.pairs, cfg.pref.noise)
    # as the rm stage: the held-out pairs that fit (seq_len - 1 tokens), the first val_pairs
    both = [(e, p) for p in preferences.split(pairs, "test")
            for e in preferences.encode([p], run.tokenizer, cfg.data.seq_len - 1)]
    both = both[:cfg.pref.val_pairs]
    enc, held = [e for e, _ in both], [p for _, p in both]
    scorer = RewardModelScorer(run, run.tokenizer, "the reward model itself")
    right = []
    for i in range(0, len(enc), batch):
        seqs = [ids for e in enc[i:i + batch] for ids in (e.chosen, e.rejected)]
        s = scorer(seqs)
        right += list(s[0::2] > s[1::2])
    groups: dict[str, list] = {}
    for p, ok in zip(held, right):
        groups.setdefault(kind(p.source), []).append(bool(ok))
    rows = {}
    for g, oks in sorted(groups.items()):
        acc = float(np.mean(oks))
        rows[g] = {"accuracy": acc, "n": len(oks), "se": math.sqrt(acc * (1 - acc) / len(oks))}
    return {"run_dir": run.run_dir, "step": run.step, "pairs": len(right),
            "accuracy": float(np.mean(right)) if right else 0.0, "by_kind": rows}


def markdown(res: dict) -> str:
    lines = [f"# Held-out pairs ranked right by `{res['run_dir']}` (step {res['step']})", "",
             f"{res['pairs']} pairs, accuracy {res['accuracy']:.3f}.", "",
             "| pair kind | pairs | accuracy |", "|---|---|---|"]
    for g, r in res["by_kind"].items():
        lines.append(f"| {g} | {r['n']} | {r['accuracy']:.3f} ± {r['se']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.rm_breakdown",
                                description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="an rm run: dir, checkpoint dir or experiment")
    p.add_argument("--workdir", default=".")
    a = p.parse_args(argv)
    try:
        run = runs.load(a.run, workdir=a.workdir)
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if run.config.model.head != "score":
        print(f"error: {run.run_dir} is a {run.stage} run, not a reward model", file=sys.stderr)
        return 2
    res = breakdown(run)
    with open(os.path.join(run.run_dir, "rm_breakdown.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(run.run_dir, "rm_breakdown.md"), "w") as f:
        f.write(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
