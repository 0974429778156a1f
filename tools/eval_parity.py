"""lm's likelihood scoring vs lm-evaluation-harness on the same model and items.

  python -m tools.eval_parity --json                       # the latest chat_tiny_base run
  python -m tools.eval_parity --run runs/<exp>/<ts> --limit 0   # the full sets

Prints one JSON object (with --json): for each task (`hellaswag`, `arc_easy`, `arc_challenge`,
`mmlu`) the keys `items`, `agreement` (fraction of identical per-item predictions, acc and
acc_norm), `acc_ours`, `acc_ref`, plus acc_norm, the largest log-likelihood difference and the
disagreeing items. Needs requirements-eval.txt (lm-eval, transformers, torch); the run must be
exportable to transformers (GPT-2, Llama or Qwen3 options: lm.interop.hf).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/eval_parity.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="chat_tiny_base", help="run dir or experiment name")
    p.add_argument("--limit", type=int, default=500, help="items per task (0: all)")
    p.add_argument("--tasks", default="hellaswag,arc_easy,arc_challenge,mmlu")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from lm import parallel
    parallel.configure_cpu_devices(1)
    from lm import runs
    from lm.eval import parity
    from lm.interop.hf import InteropError
    try:
        run = runs.load(a.run, workdir=ROOT)
        res = parity.run(run.params, run.config, run.tokenizer, tasks=a.tasks.split(","),
                         limit=a.limit, batch_size=a.batch_size)
    except (runs.RunError, InteropError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(res))
        return 0
    print(f"{'task':15s} {'items':>6s} {'agree':>7s} {'acc ours':>9s} {'acc ref':>8s} "
          f"{'norm ours':>9s} {'norm ref':>9s} {'max |dll|':>10s}")
    for t, r in res.items():
        print(f"{t:15s} {r['items']:6d} {r['agreement']:7.4f} {r['acc_ours']:9.4f} "
              f"{r['acc_ref']:8.4f} {r['acc_norm_ours']:9.4f} {r['acc_norm_ref']:9.4f} "
              f"{r['max_abs_ll_diff']:10.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
