"""Runs side by side: each run's final evaluation row (its `summary.json`), one row per run,
with the binomial standard error of every accuracy, written as JSON and Markdown.

  python -m tools.compare_runs --runs distill_a distill_b distill_b_noid distill_c distill_c_noid \\
      --tasks arithmetic_easy,word_problems,spelling,whoami_teacher,whoami_student \\
      --workdir /work/runs_c6 --out runs/distill_table --into_runs

`--runs` takes run dirs, checkpoint dirs or experiment names (their latest run in `--workdir`),
optionally labelled `label=spec`; `spec@STEP` reads the evaluation the run logged at that step
instead of its final one (what early stopping there would report). `--tasks` picks the columns (default: every `eval/<task>` the
runs share). `--into_runs` also writes the table into each run's dir (`compare.json`,
`compare.md`, `compare.png`: grouped bars with ± 1 s.e.), so a run carries the comparison it was
made for.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/compare_runs.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import math

import numpy as np
from matplotlib.figure import Figure

from lm import runs


def row_of(summary: dict, tasks: list[str]) -> dict:
    """task -> {"acc", "n", "se"} from a summary's `eval/<task>` and `eval/<task>_n` (the
    binomial error), or `eval/<task>_se` where the evaluation logged one (a mean reward,
    `eval/reward/<name>`)."""
    out = {}
    for t in tasks:
        acc, n = summary.get(f"eval/{t}"), summary.get(f"eval/{t}_n")
        if acc is None:
            continue
        se = summary.get(f"eval/{t}_se")
        if se is None and n and 0 <= acc <= 1:
            se = math.sqrt(acc * (1 - acc) / n)
        out[t] = {"acc": acc, "n": n, "se": se}
    return out


def at_step(run_dir: str, step: int) -> dict:
    """The evaluation a run logged at `step` (its metrics.jsonl rows of that step merged): what
    the run would report had it stopped there (early stopping)."""
    out: dict = {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("step") == step:
                out.update({k: v for k, v in r.items() if k.startswith("eval/")})
    if not out:
        raise runs.RunError(f"{run_dir} logged no evaluation at step {step}")
    return out


def shared_tasks(summaries: list[dict]) -> list[str]:
    keys = [{k[5:] for k in s if k.startswith("eval/") and f"{k}_n" in s} for s in summaries]
    common = set.intersection(*keys) if keys else set()
    return sorted(common)


def markdown(table: dict) -> str:
    tasks = table["tasks"]
    lines = ["| run | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for r in table["rows"]:
        cells = []
        for t in tasks:
            c = r["eval"].get(t)
            cells.append("" if c is None else f"{c['acc']:.3f} ± {c['se']:.3f}"
                         if c["se"] is not None else f"{c['acc']:.3f}")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("± one standard error: binomial, sqrt(p(1-p)/n), for accuracies; the spread "
                 "over items for mean rewards; n per cell in the JSON.")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: str) -> None:
    """compare.png: one group of bars per task, one bar per run, ± 1 s.e. (off-screen)."""
    tasks, rows = table["tasks"], table["rows"]
    fig = Figure(figsize=(min(11.0, max(6.0, 0.35 * len(tasks) * max(1, len(rows)))), 4.2))
    ax = fig.subplots()
    width = 0.8 / max(1, len(rows))
    x = np.arange(len(tasks))
    for k, r in enumerate(rows):
        cells = [r["eval"].get(t) for t in tasks]
        ax.bar(x + (k - (len(rows) - 1) / 2) * width, [c["acc"] if c else 0 for c in cells],
               width, yerr=[(c["se"] or 0) if c else 0 for c in cells], capsize=2,
               label=r["label"])
    ax.set_xticks(x, tasks, rotation=20, ha="right", fontsize=8)
    vals = [c["acc"] for r in rows for c in r["eval"].values()]
    if vals and 0 <= min(vals) and max(vals) <= 1:
        ax.set_ylim(0, 1.05)
    ax.set_ylabel("held-out accuracy (or mean reward)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def build(specs: list[str], tasks: list[str] | None, workdir: str | None) -> dict:
    loaded = []
    for spec in specs:
        label, _, target = spec.rpartition("=")
        target, _, step = target.partition("@")
        ref = runs.resolve(target, workdir=workdir)
        if step:
            if not step.isdigit():
                raise runs.RunError(f"{spec}: @STEP must be a step number")
            loaded.append((label or spec, ref.run_dir, at_step(ref.run_dir, int(step))))
            continue
        path = os.path.join(ref.run_dir, "summary.json")
        if not os.path.exists(path):
            raise runs.RunError(f"{ref.run_dir} has no summary.json (did the run finish?)")
        with open(path) as f:
            loaded.append((label or target, ref.run_dir, json.load(f)))
    tasks = tasks or shared_tasks([s for _, _, s in loaded])
    return {"tasks": tasks, "rows": [{"label": lab, "run_dir": d, "eval": row_of(s, tasks),
                                      "val_loss": s.get("val_loss")} for lab, d, s in loaded]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--tasks", default="", help="comma list (default: every task all runs have)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--out", default=None, help="folder for compare.json / compare.md")
    p.add_argument("--into_runs", action="store_true", help="also write into each run's dir")
    a = p.parse_args(argv)
    try:
        table = build(a.runs, [t for t in a.tasks.split(",") if t] or None, a.workdir)
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    md = markdown(table)
    dirs = ([a.out] if a.out else []) + ([r["run_dir"] for r in table["rows"]]
                                          if a.into_runs else [])
    for d in dirs:
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "compare.json"), "w") as f:
            json.dump(table, f, indent=1)
        with open(os.path.join(d, "compare.md"), "w") as f:
            f.write(md)
        plot(table, os.path.join(d, "compare.png"))
    print(md, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
