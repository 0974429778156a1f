"""The chat chain in one command: base -> SFT -> RL, each as `python -m lm.main -e NAME`, then one
table of wall time per stage and the final held-out and out-of-distribution figures.

  python -m tools.chain                                  # chat_tiny_base, chat_tiny_sft, grpo_arith_tiny
  python -m tools.chain --from sft                       # reuse the latest base run
  python -m tools.chain --set base:train.steps=1900 --json
  python -m tools.chain --table                          # only the table, from the latest runs

Each stage starts from the latest run of the one before (the experiments' `init_from`). `--set
STAGE:KEY=VALUE` passes an override to one stage. The table reads each run's summary.json and the
final evaluation row of its metrics.jsonl.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/chain.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import subprocess
import time

from lm import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"base": "chat_tiny_base", "sft": "chat_tiny_sft", "rl": "grpo_arith_tiny"}
SHOWN = ("val_loss", "val_bpb", "probe/copy", "probe/icl", "eval/format", "eval/identity",
         "eval/arithmetic_easy", "eval/spelling", "eval/word_problems", "eval/gsm8k_easy",
         "eval/spelling_ood", "eval/recall", "eval/recall_seen_phrasings", "eval/everyday_recall",
         "eval/gsm8k")


def final_row(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(x) for x in open(path)] if os.path.exists(path) else []
    finals = [r for r in rows if r.get("final")]
    return finals[-1] if finals else {}


def summarize(stage: str, experiment: str, workdir: str, wall: float | None) -> dict:
    ref = runs.resolve(experiment, workdir=workdir)
    summary = json.load(open(os.path.join(ref.run_dir, "summary.json")))
    row = final_row(ref.run_dir)
    return {"stage": stage, "experiment": experiment, "run_dir": ref.run_dir,
            "wall_s": round(wall if wall is not None else summary.get("wall_s", 0.0), 1),
            **{k: row[k] for k in SHOWN if k in row}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from", dest="start", choices=list(STAGES), default="base")
    p.add_argument("--to", dest="stop", choices=list(STAGES), default="rl")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE")
    p.add_argument("--workdir", default=ROOT)
    p.add_argument("--table", action="store_true", help="no training: the table of the latest runs")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    names = list(STAGES)
    todo = names[names.index(a.start):names.index(a.stop) + 1]
    sets: dict[str, list[str]] = {s: [] for s in STAGES}
    for item in a.set:
        stage, _, kv = item.partition(":")
        if stage not in STAGES or "=" not in kv:
            p.error(f"--set {item!r}: expected STAGE:KEY=VALUE with STAGE in {list(STAGES)}")
        sets[stage] += ["--set", kv]
    walls: dict[str, float] = {}
    if not a.table:
        for stage in todo:
            cmd = [sys.executable, "-m", "lm.main", "-e", STAGES[stage], "--workdir", a.workdir,
                   "--no_progress", *sets[stage]]
            print(f"[chain] {stage}: {' '.join(cmd[2:])}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ROOT)
            walls[stage] = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"[chain] {stage} failed (exit {r.returncode})", file=sys.stderr)
                return r.returncode
    rows = []
    for stage in todo:
        try:
            rows.append(summarize(stage, STAGES[stage], a.workdir, walls.get(stage)))
        except (runs.RunError, OSError) as e:
            rows.append({"stage": stage, "experiment": STAGES[stage], "error": str(e)})
    total = sum(r.get("wall_s", 0) for r in rows)
    if a.json:
        print(json.dumps({"stages": rows, "total_wall_s": round(total, 1)}))
        return 0
    keys = [k for k in SHOWN if any(k in r for r in rows)]
    print("| stage | experiment | wall | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{r[k]:.4f}" if isinstance(r.get(k), float) else "" for k in keys]
        print(f"| {r['stage']} | {r['experiment']} | {r.get('wall_s', 0) / 60:.1f} min | "
              + " | ".join(cells) + " |")
    print(f"\ntotal: {total / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
