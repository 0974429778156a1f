"""The chat chain in one command: base -> SFT -> RL, each as `python -m lm.main -e NAME`, then one
table of wall time per stage and the final held-out and out-of-distribution figures.

  python -m tools.chain                                  # chat_tiny_base, chat_tiny_sft, grpo_arith_tiny
  python -m tools.chain --from sft                       # reuse the latest finished base run
  python -m tools.chain --set base:train.steps=1900 --json
  python -m tools.chain --use sft=chat_tiny_sft_prose    # another experiment as one stage
  python -m tools.chain --resume                         # after a stop: only what is left
  python -m tools.chain --table                          # only the table, from the latest runs

Each stage starts from the exact run the stage before it ended on (`--set init_from=RUN_DIR`);
with `--from`, the first starts from the latest finished run of the one before. `--set
STAGE:KEY=VALUE` passes an override to one stage. `--resume` makes the chain a build: a stage
whose latest run finished with the config this invocation would train (the experiment's recipe
in today's code, these overrides; the host's `auto` choices aside), from this chain's parent, is
reused; one that stopped (Ctrl-C, a killed process, a preempted host) continues from its
checkpoint; the rest start. The table reads each run's summary.json and the final evaluation row
of its metrics.jsonl.
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
from typing import Optional

import experiments
from lm import runs
from lm.config import ConfigError, apply_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = {"base": "chat_tiny_base", "sft": "chat_tiny_sft", "rl": "grpo_arith_tiny"}
SHOWN = ("val_loss", "val_bpb", "probe/copy", "probe/icl", "eval/format", "eval/identity",
         "eval/arithmetic_easy", "eval/spelling", "eval/word_problems", "eval/gsm8k_easy",
         "eval/spelling_ood", "eval/recall", "eval/recall_seen_phrasings",
         "eval/recall_seen_statements", "eval/recall_seen_questions", "eval/recall_text",
         "eval/everyday_recall", "eval/gsm8k")


def final_row(run_dir: str) -> dict:
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(x) for x in open(path)] if os.path.exists(path) else []
    finals = [r for r in rows if r.get("final")]
    return finals[-1] if finals else {}


def summarize(stage: str, experiment: str, workdir: str, wall: float | None,
              run_dir: Optional[str] = None) -> dict:
    run_dir = run_dir or runs.resolve(experiment, workdir=workdir).run_dir
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    row = final_row(run_dir)
    return {"stage": stage, "experiment": experiment, "run_dir": run_dir,
            "wall_s": round(wall if wall is not None else summary.get("wall_s", 0.0), 1),
            **{k: row[k] for k in SHOWN if k in row}}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def differences(run_dir: str, experiment: str, overrides: list[str]) -> list[str]:
    """Where the run's saved config differs from what this chain would train now: the
    experiment's recipe in today's code with these overrides. `init_from` (the lineage decides),
    the description and what the host decides (`auto`: dtype, parallelism) are left aside."""
    kept = [kv for kv in overrides if kv.partition("=")[0].strip() != "init_from"]
    wanted = _flat(json.loads(apply_overrides(experiments.get(experiment), kept).to_json()))
    have = _flat(json.loads(runs.load_config(runs.resolve(run_dir)).to_json()))
    return [f"{k}: the run has {have.get(k)!r}, this chain asks {v!r}"
            for k, v in wanted.items()
            if k not in ("init_from", "description") and v != "auto" and have.get(k) != v]


def decide(experiment: str, workdir: str, overrides: list[str],
           parent: Optional[str]) -> tuple[str, Optional[str], str]:
    """What `--resume` does with one stage: ("reuse" | "resume" | "start", the run, why).

    The stage's latest run is reused if it finished with these overrides from `parent` (the run
    the stage before ended on; None: any), continued if it stopped, else a fresh run starts."""
    latest = runs.latest_run(experiment, workdir)
    if latest is None:
        return "start", None, "no run yet"
    diff = differences(latest, experiment, overrides)
    if diff:
        return "start", None, f"{latest} was trained otherwise ({'; '.join(diff)})"
    lineage = runs.lineage(latest)
    if parent is not None and (not lineage or os.path.abspath(lineage[0]["run_dir"])
                               != os.path.abspath(parent)):
        got = lineage[0]["run_dir"] if lineage else "no parent"
        return "start", None, f"{latest} started from {got}, not {parent}"
    why = runs.unfinished(latest)
    if why is None:
        return "reuse", latest, f"{latest} finished"
    return "resume", latest, f"{latest} {why}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="start", choices=list(STAGES), default="base")
    p.add_argument("--to", dest="stop", choices=list(STAGES), default="rl")
    p.add_argument("--set", action="append", default=[], metavar="STAGE:KEY=VALUE")
    p.add_argument("--use", action="append", default=[], metavar="STAGE=EXPERIMENT",
                   help="run another registered experiment as this stage")
    p.add_argument("--resume", action="store_true",
                   help="reuse finished stages, continue a stopped one, start the rest")
    p.add_argument("--workdir", default=ROOT)
    p.add_argument("--table", action="store_true", help="no training: the table of the latest runs")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    names = list(STAGES)
    todo = names[names.index(a.start):names.index(a.stop) + 1]
    chosen = dict(STAGES)
    known = dict(experiments.list_experiments())
    for item in a.use:
        stage, _, name = item.partition("=")
        if stage not in STAGES or name not in known:
            p.error(f"--use {item!r}: expected STAGE=EXPERIMENT with STAGE in {list(STAGES)} and "
                    f"a registered experiment (python -m lm.main --list)")
        chosen[stage] = name
    sets: dict[str, list[str]] = {s: [] for s in STAGES}
    for item in a.set:
        stage, _, kv = item.partition(":")
        if stage not in STAGES or "=" not in kv:
            p.error(f"--set {item!r}: expected STAGE:KEY=VALUE with STAGE in {list(STAGES)}")
        sets[stage].append(kv)
    for stage in todo:
        try:
            apply_overrides(experiments.get(chosen[stage]), sets[stage])
        except (KeyError, ConfigError) as e:
            p.error(f"--set for {stage} ({chosen[stage]}): {e.args[0] if e.args else e}")
    walls: dict[str, float] = {}
    done: dict[str, str] = {}                    # stage -> the run it ended on
    if not a.table:
        parent = None
        for stage in todo:
            exp, kv = chosen[stage], list(sets[stage])
            if any(x.startswith("init_from=") for x in kv):   # the user's parent, as given
                parent = None
            elif parent is not None:
                kv.append(f"init_from={parent}")
            action, run_dir, why = (decide(exp, a.workdir, kv, parent) if a.resume
                                    else ("start", None, ""))
            if action == "reuse":
                print(f"[chain] {stage}: reusing {why}", file=sys.stderr, flush=True)
                done[stage] = parent = run_dir
                continue
            cmd = [sys.executable, "-m", "lm.main", "-e", exp, "--workdir", a.workdir,
                   "--no_progress", *[x for s in kv for x in ("--set", s)]]
            if action == "resume":
                cmd += ["--run_dir", run_dir, "--resume"]
            print(f"[chain] {stage}: {' '.join(cmd[2:])}" + (f"  ({why})" if why else ""),
                  file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            r = subprocess.run(cmd, cwd=ROOT)
            walls[stage] = time.perf_counter() - t0
            if r.returncode != 0:
                print(f"[chain] {stage} failed (exit {r.returncode}); `--resume` continues it",
                      file=sys.stderr)
                return r.returncode
            done[stage] = parent = runs.resolve(exp, workdir=a.workdir).run_dir
    rows = []
    for stage in todo:
        try:
            rows.append(summarize(stage, chosen[stage], a.workdir, walls.get(stage),
                                  done.get(stage)))
        except (runs.RunError, OSError) as e:
            rows.append({"stage": stage, "experiment": chosen[stage], "error": str(e)})
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
