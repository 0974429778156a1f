"""pass@k curves of several runs on one task: what RL does to pass@k (does it solve new problems,
or sample the ones the parent could already solve more reliably?).

  python -m tools.pass_at_k --runs chat_tiny_sft grpo_arith_tiny --task arithmetic_easy \\
      --ks 1,2,4,8,16,32,64 --samples 64 --limit 200 --out runs/pass_at_k

Each run (a run dir, a checkpoint dir, or an experiment name: its latest run, `lm.runs.resolve`)
samples `--samples` replies per held-out problem at `--temperature`; every k is estimated from
the same samples without bias (Chen et al. 2021, `lm.eval.chat.pass_at_ks`). In `--out`:

  pass_at_k.json   per run: pass@k, its standard error over problems, each problem's correct count
  pass_at_k.md     a table, k × run (value ± standard error)
  pass_at_k.png    pass@k against log2 k, one curve per run, ± 1 standard error over problems

Every run is found and the options checked before the first evaluation starts.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/pass_at_k.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json

import numpy as np
from matplotlib.figure import Figure

from lm import process, runs
from lm.data.sources import DataUnavailableError
from lm.eval import suite
from lm.eval.chat import check_pass_at, pass_at_k_estimate, parse_ks
from lm.tasks import TaskDataError


def label(spec: str, ref: runs.RunRef) -> str:
    """A short name for a run: the experiment name as given, else `<experiment>/<timestamp>`."""
    if not os.path.isdir(os.path.expanduser(spec)):
        return spec
    return "/".join(os.path.normpath(ref.run_dir).split(os.sep)[-2:])


def summarize(counts: list[int], n: int, ks: list[int]) -> tuple[dict, dict]:
    """({k: pass@k}, {k: its standard error}) over problems, from each problem's correct count
    out of n (the error is the spread of the per-problem estimates over sqrt(problems))."""
    mean, err = {}, {}
    for k in ks:
        per = np.array([pass_at_k_estimate(n, c, k) for c in counts], np.float64)
        mean[k] = float(per.mean()) if per.size else 0.0
        err[k] = float(per.std(ddof=1) / np.sqrt(per.size)) if per.size > 1 else 0.0
    return mean, err


def evaluate(spec: str, ref: runs.RunRef, a: argparse.Namespace) -> dict:
    """One run's row of pass_at_k.json (the run is loaded, sampled, and let go)."""
    run = runs.load(ref.run_dir, step=ref.step, workdir=a.workdir)
    res = suite.evaluate_pass_at(run, [a.task], ks=a.ks, n=a.samples, limit=a.limit,
                                 batch_size=a.batch_size, temperature=a.temperature,
                                 seed=a.seed, progress=not a.no_progress)
    counts = res["counts"][a.task]
    mean, err = summarize(counts, a.samples, a.ks)
    return {"label": label(spec, ref), "run_dir": run.run_dir, "step": run.step,
            "experiment": run.config.name, "stage": run.stage, "problems": len(counts),
            "pass_at": mean, "stderr": err, "counts": counts, "seconds": res["seconds"]}


def table(result: dict) -> str:
    """pass_at_k.md: k down, runs across, value ± standard error."""
    rows = result["runs"]
    problems = sorted({r["problems"] for r in rows})
    lines = [f"# pass@k on {result['task']}", "",
             f"{'/'.join(map(str, problems))} held-out problems × {result['samples']} samples "
             f"per problem at temperature {result['temperature']:g} (seed {result['seed']}); "
             f"unbiased estimator (Chen et al. 2021), ± one standard error over problems.", "",
             "| k | " + " | ".join(r["label"] for r in rows) + " |",
             "|---|" + "---|" * len(rows)]
    for k in result["ks"]:
        cells = [f"{r['pass_at'][k]:.4f} ± {r['stderr'][k]:.4f}" for r in rows]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines += ["", "| run | run dir | step | stage |", "|---|---|---|---|"]
    lines += [f"| {r['label']} | {r['run_dir']} | {r['step']} | {r['stage']} |" for r in rows]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    """pass_at_k.png: pass@k against k on a log2 axis, one curve per run with ± 1 s.e. bars
    (drawn off-screen, as lm.report draws)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ks = result["ks"]
    for r in result["runs"]:
        ax.errorbar(ks, [r["pass_at"][k] for k in ks], yerr=[r["stderr"][k] for k in ks],
                    marker="o", capsize=3, lw=1.5, label=f"{r['label']} (step {r['step']})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples)")
    ax.set_ylabel(f"pass@k on {result['task']}")
    ax.set_ylim(0, 1.02)
    problems = "/".join(map(str, sorted({r["problems"] for r in result["runs"]})))
    ax.set_title(f"pass@k: {problems} problems × {result['samples']} samples, "
                 f"T={result['temperature']:g} (bars: ± 1 s.e.)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write(result: dict, out: str) -> list[str]:
    """pass_at_k.json, .md and .png in `out`; their paths."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"pass_at_k.{ext}") for ext in ("json", "md", "png")]
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=2)
    with open(paths[1], "w") as f:
        f.write(table(result))
    plot(result, paths[2])
    return paths


def check(a: argparse.Namespace) -> list[tuple[str, runs.RunRef]]:
    """The options checked and every run found before any evaluation (a ValueError or RunError
    that says what is wrong)."""
    a.ks = sorted(parse_ks(a.ks, "--ks"))
    try:
        a.samples = check_pass_at(a.ks, a.samples)
    except ValueError as e:
        raise ValueError(f"--samples {a.samples}: {e}") from None
    if a.temperature <= 0:
        raise ValueError(f"--temperature {a.temperature:g}: pass@k samples at a temperature > 0")
    suite.pass_at_tasks([a.task])
    return [(spec, runs.resolve(spec, workdir=a.workdir)) for spec in a.runs]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.pass_at_k",
                                description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True,
                   help="run dirs, checkpoint dirs or experiment names")
    p.add_argument("--task", required=True, help="a generative chat task (e.g. arithmetic_easy)")
    p.add_argument("--ks", default="1,2,4,8,16,32,64", help="comma list of k")
    p.add_argument("--samples", type=int, default=None, help="replies per problem (default: max k)")
    p.add_argument("--limit", type=int, default=0, help="held-out problems (0: all)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=64, help="rows per engine call")
    p.add_argument("--workdir", default=None, help="where runs/<experiment>/ lives (default: .)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    try:
        found = check(a)
    except (runs.RunError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    process.configure_devices(rows=a.batch_size)
    result = {"task": a.task, "ks": a.ks, "samples": a.samples, "temperature": a.temperature,
              "seed": a.seed, "limit": a.limit, "runs": []}
    try:
        for spec, ref in found:
            result["runs"].append(evaluate(spec, ref, a))
            print(f"{result['runs'][-1]['label']}: " + ", ".join(
                f"pass@{k} {v:.3f}" for k, v in result["runs"][-1]["pass_at"].items()))
    except (runs.RunError, ValueError, TaskDataError, DataUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in write(result, a.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
