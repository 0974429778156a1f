"""The report card of a run: `report.md` with PNG plots, written at the end of every stage and by

    python -m lm.report --run runs/<experiment>/<timestamp>      (or an experiment name)

It gives the run's config summary, parameter count, tokens seen and wall time; train and
validation loss curves; every evaluation across the chain base -> SFT -> RL (each run's final
evaluation row, and `eval.json` from `python -m lm.eval` where present); and the chain of parent
runs. For RL runs, `rl_curves.png` plots the mean reward and held-out pass@1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import numpy as np
from matplotlib.figure import Figure

from lm import model, runs
from lm.logs import read_metrics


def _rows(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "metrics.jsonl")
    return read_metrics(path) if os.path.exists(path) else []


def _json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _figure(size) -> tuple[Figure, object]:
    """A figure drawn off-screen (matplotlib's object API: no pyplot state, no GUI backend)."""
    fig = Figure(figsize=size)
    return fig, fig.subplots()


def plot_losses(rows: list[dict], path: str, title: str) -> bool:
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not train and not val:
        return False
    fig, ax = _figure((7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_rl_curves(metrics_path: str, path: str, tasks: list[str]) -> bool:
    """Top: mean rollout reward and the share of rollouts that show their working, per step, and
    held-out pass@1 (and pass@k) per evaluation. Bottom: mean reply length (rollouts, and the
    held-out replies at each evaluation): does the policy think longer as it gets better?"""
    rows = read_metrics(metrics_path) if os.path.exists(metrics_path) else []
    series = lambda key: [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    reward = series("rl/reward")
    if not reward:
        return False
    fig = Figure(figsize=(7, 6.5))
    ax, ax_len = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    ax.plot(*zip(*reward), lw=1, alpha=0.7, label="rollout reward (mean)")
    worked = series("rl/worked")
    if worked:
        ax.plot(*zip(*worked), lw=1, alpha=0.7, label="rollouts showing their working")
    for t in tasks:
        for key, style in ((f"eval/{t}", "o-"), (f"eval/{t}_pass@", "s--")):
            pts = [(r["step"], v) for r in rows for k, v in r.items()
                   if (k == key or (key.endswith("@") and k.startswith(key))) and v is not None]
            if pts:
                label = f"held-out {t} pass@1" if style == "o-" else f"held-out {t} pass@k"
                ax.plot(*zip(*sorted(pts)), style, label=label, lw=1.5)
    ax.set_ylim(0, 1.02)
    ax.set_title("GRPO: reward, working shown, held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax_len.plot(*zip(*series("rl/response_tokens")), lw=1, alpha=0.7, label="rollouts")
    for t in tasks:
        pts = series(f"eval/{t}_tokens")
        if pts:
            ax_len.plot(*zip(*pts), "o-", lw=1.5, label=f"held-out {t}")
    ax_len.set_xlabel("step")
    ax_len.set_ylabel("reply tokens (mean)")
    ax_len.grid(alpha=0.3)
    ax_len.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def final_evals(run_dir: str) -> dict:
    """The run's last evaluation keys (eval/*, bench/*, val_*), plus eval.json's results."""
    out: dict = {}
    for r in _rows(run_dir):
        for k, v in r.items():
            if (k.startswith(("eval/", "bench/", "val_"))) and not k.endswith("_n") and v is not None:
                out[k] = v
    ev = _json(os.path.join(run_dir, "eval.json"))
    if ev:
        for name, r in ev.get("likelihood", {}).items():
            out[f"lm_eval/{name}/acc"] = r["acc"]
            out[f"lm_eval/{name}/acc_norm"] = r["acc_norm"]
        for k, v in ev.get("chat", {}).items():
            if not k.endswith("_n"):
                out[f"eval.json/{k}"] = v
        for name, r in ev.get("bpb", {}).items():
            if "bpb" in r:
                out[f"bpb/{name}"] = r["bpb"]
    return out


def plot_chain(chain: list[tuple[str, dict]], path: str) -> bool:
    """Bar chart of each task's held-out accuracy along the chain (base -> SFT -> RL). The
    aggregates (format, chatcore) average over each run's own task set, so they stay in the
    report's table, not here; a run with no task accuracies gets no bar."""
    aggregates = ("eval/format", "eval/chatcore")
    keys = sorted({k for _, ev in chain for k in ev if k.startswith("eval/") and
                   not k.endswith(("_tokens",)) and "@" not in k and k not in aggregates})
    chain = [(label, ev) for label, ev in chain if any(k in ev for k in keys)]
    if not keys or not chain:
        return False
    fig, ax = _figure((max(6, 1.1 * len(keys)), 4))
    width = 0.8 / len(chain)
    for j, (label, ev) in enumerate(chain):
        vals = [ev.get(k, np.nan) for k in keys]
        ax.bar(np.arange(len(keys)) + j * width, vals, width, label=label)
    ax.set_xticks(np.arange(len(keys)) + width * (len(chain) - 1) / 2)
    ax.set_xticklabels([k[5:] for k in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("Evaluations along the chain")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def write(run_dir: str) -> str:
    """Write report.md (+ PNGs) into `run_dir`; returns the report's path."""
    ref = runs.resolve(run_dir)
    cfg = runs.load_config(ref)
    rows = _rows(ref.run_dir)
    summary = _json(os.path.join(ref.run_dir, "summary.json")) or {}
    n_params = model.param_count(cfg.model)
    train_rows = [r for r in rows if "loss" in r]
    last_step = train_rows[-1]["step"] if train_rows else 0
    tokens = last_step * cfg.data.batch_size * cfg.data.seq_len
    wall = summary.get("wall_s") or (train_rows[-1].get("elapsed_s") if train_rows else None)
    chain = [(f"{cfg.name} ({cfg.stage})", final_evals(ref.run_dir))]
    for p in runs.lineage(ref.run_dir):
        if os.path.isdir(p["run_dir"]):
            chain.append((f"{p['experiment']} ({p['stage']})", final_evals(p["run_dir"])))
    chain = chain[::-1]                     # base first
    lines = [f"# Report: {cfg.name}", "",
             f"- run: `{ref.run_dir}`", f"- stage: **{cfg.stage}**"
             + (f", from `{cfg.init_from}`" if cfg.init_from else ""),
             f"- model: {cfg.model.n_layer} layers, width {cfg.model.n_embd}, "
             f"{cfg.model.n_head} heads, vocab {cfg.model.vocab_size}, context "
             f"{cfg.model.block_size}, {'modern' if cfg.model.pos == 'rope' else 'GPT-2'} family, "
             f"{cfg.model.dtype}",
             f"- parameters: {n_params:,}",
             f"- steps: {last_step:,} of {cfg.train.steps:,}; tokens seen: {tokens:,} "
             f"({cfg.data.batch_size} × {cfg.data.seq_len} per step)",
             f"- wall time: {wall / 60:.1f} min" if wall else "- wall time: n/a",
             f"- optimizer: AdamW lr {cfg.optim.lr:g} ({cfg.optim.schedule}), "
             f"warmup {cfg.optim.warmup_steps}, weight decay {cfg.optim.weight_decay:g}", ""]
    if plot_losses(rows, os.path.join(ref.run_dir, "loss.png"), f"{cfg.name}: loss"):
        lines += ["## Loss", "", "![loss](loss.png)", ""]
    if os.path.exists(os.path.join(ref.run_dir, "rl_curves.png")):
        lines += ["## RL curves", "", "![rl](rl_curves.png)", ""]
    lines += ["## Evaluations along the chain", ""]
    keys = sorted({k for _, ev in chain for k in ev})
    if keys:
        lines.append("| metric | " + " | ".join(label for label, _ in chain) + " |")
        lines.append("|---|" + "---|" * len(chain))
        for k in keys:
            vals = [ev.get(k) for _, ev in chain]
            cells = [f"{v:.4f}" if isinstance(v, (int, float)) else "" for v in vals]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    if plot_chain(chain, os.path.join(ref.run_dir, "chain.png")):
        lines += ["![chain](chain.png)", ""]
    lines += ["## Lineage", ""]
    lineage = runs.lineage(ref.run_dir)
    lines.append(f"1. `{ref.run_dir}` ({cfg.name}, {cfg.stage})")
    for i, p in enumerate(lineage, 2):
        lines.append(f"{i}. `{p['run_dir']}` ({p['experiment']}, {p['stage']}, step {p['step']})")
    if os.path.exists(os.path.join(ref.run_dir, "samples.md")):
        lines += ["", "Sample conversations: [samples.md](samples.md)"]
    path = os.path.join(ref.run_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.report", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run dir, checkpoint dir, or experiment name")
    a = p.parse_args(argv)
    try:
        print(write(runs.resolve(a.run).run_dir))
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
