"""Distillation data from a teacher run: its sampled replies to training prompts of a task
mixture, as JSONL conversations for SFT: all of them, and those graded right (rejection sampling).

  python -m tools.distill --teacher grpo_arith_tiny --prompts 6000 --out runs/distill
  python -m lm.main -e distill_b          # students trained on them (experiments/reasoning.py)

In --out: `all.jsonl` (every finished reply), `correct.jsonl` (the replies graded right, and the
ungraded ones of tasks without a grader: the same samples, so the two students differ only by the
filter) and `stats.json` (teacher, options, counts per task: replies, unfinished, correct,
ungraded). `--mixture` (default: the generative tasks of the teacher's own SFT mixture, found in
its lineage) gives the prompts: the SFT stage's deterministic stream over the tasks' `train` splits, so no
held-out item can enter; before writing, the prompts are also checked against the tasks' held-out
items. Files are written under a temporary name and renamed.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/distill.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json

from lm import process, runs, tasks
from lm.config import ConfigError, parse_weights
from lm.data.distill import KEEP, check_no_held_out, select, teacher_data
from lm.data.sources import DataUnavailableError
from lm.sampling import Engine


def write(convs: list[dict], stats: dict, out: str) -> list[str]:
    os.makedirs(out, exist_ok=True)
    written = []
    for keep in KEEP:
        path = os.path.join(out, f"{keep}.jsonl")
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            for c in select(convs, keep):
                f.write(json.dumps(c) + "\n")
        os.replace(tmp, path)
        written.append(path)
    path = os.path.join(out, "stats.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
    os.replace(path + ".tmp", path)
    return written + [path]


def default_mixture(teacher: runs.RunRef) -> str:
    """The generative tasks of the teacher's own SFT mixture (its nearest sft ancestor in its
    lineage, or itself): the prompts it was trained to answer."""
    chain = [{"run_dir": teacher.run_dir, "stage": None}] + runs.lineage(teacher.run_dir)
    for link in chain:
        cfg = runs.load_config(runs.resolve(link["run_dir"]))
        if cfg.stage == "sft":
            weights = parse_weights(cfg.sft.mixture, tasks.known(), key="sft.mixture")
            return ",".join(f"{n}:{w:g}" for n, w in weights.items()
                            if n in tasks.NAMES and tasks.get(n).kind != "categorical")
    raise ValueError(f"{teacher.run_dir}: no SFT run in its lineage; pass --mixture")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.distill",
                                description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, help="run dir, checkpoint dir or experiment name")
    p.add_argument("--mixture", default=None,
                   help="task:weight,... of the prompts (default: the teacher's SFT mixture's "
                   "generative tasks)")
    p.add_argument("--prompts", type=int, default=4000)
    p.add_argument("--samples", type=int, default=1, help="replies per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="the prompt stream's and sampling's seed")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--workdir", default=None, help="where runs/<experiment>/ lives (default: .)")
    p.add_argument("--out", required=True, help="the folder to write")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.prompts < 1 or a.samples < 1 or a.temperature <= 0:
            raise ValueError("--prompts and --samples must be >= 1 and --temperature > 0")
        ref = runs.resolve(a.teacher, workdir=a.workdir)
        mixture = a.mixture or default_mixture(ref)
        weights = parse_weights(mixture, tasks.NAMES, key="--mixture")
    except (ConfigError, ValueError, runs.RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    process.configure_devices(rows=a.batch_size)
    try:
        run = runs.load(ref.run_dir, step=ref.step, workdir=a.workdir)
        tok = run.tokenizer
        if tok.chat is None:
            raise ValueError(f"{ref.run_dir}: the teacher has no chat tokenizer")
        engine = Engine(run.params, run.config.model, tokenizer=tok, tools=tok.chat)
        convs, stats = teacher_data(engine, tok, weights, prompts=a.prompts, samples=a.samples,
                                    temperature=a.temperature, seed=a.seed,
                                    batch_size=a.batch_size, progress=not a.no_progress)
    except (runs.RunError, ValueError, tasks.TaskDataError, DataUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    leaked = check_no_held_out(convs, weights)
    if leaked is not None:          # the train/test split of a task is broken: never write it
        print(f"error: a held-out prompt is in the distillation data: {leaked!r}", file=sys.stderr)
        return 3
    stats = {"teacher": ref.run_dir, "step": run.step, "mixture": mixture, **stats,
             "conversations": len(convs)}
    for path in write(convs, stats, a.out):
        print(f"wrote {path}")
    print(f"{stats.get('replies', 0):,} replies: {stats.get('unfinished', 0):,} unfinished, "
          f"{stats.get('invalid', 0):,} invalid, "
          f"{stats.get('correct', 0):,} graded right, {stats.get('ungraded', 0):,} ungraded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
