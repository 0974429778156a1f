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
from lm.rl import rewards


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


def smooth(values: list[float], window: int) -> np.ndarray:
    """Centred moving average (the window shrinks at the ends): rollout rewards are noisy."""
    v = np.asarray(values, np.float64)
    if len(v) == 0 or window <= 1:
        return v
    h = window // 2
    c = np.concatenate([[0.0], np.cumsum(v)])
    lo = np.clip(np.arange(len(v)) - h, 0, len(v))
    hi = np.clip(np.arange(len(v)) + h + 1, 0, len(v))
    return (c[hi] - c[lo]) / (hi - lo)


def reward_series(rows: list[dict]) -> dict[str, dict[str, list]]:
    """{reward name: {"rollout": [(step, mean)], "held_out": [(step, mean)]}} from the per-reward
    keys a chat stage logs (`rl/reward/<name>`: its rollouts; `eval/reward/<name>`: its held-out
    greedy replies)."""
    out: dict[str, dict[str, list]] = {}
    for r in rows:
        for k, v in r.items():
            for prefix, kind in (("rl/reward/", "rollout"), ("eval/reward/", "held_out")):
                if k.startswith(prefix) and isinstance(v, (int, float)) and \
                        not k.endswith(("_n", "_se")):
                    out.setdefault(k[len(prefix):], {"rollout": [], "held_out": []})[kind] \
                        .append((r["step"], float(v)))
    for d in out.values():
        d["held_out"] = sorted(dict(d["held_out"]).items())    # a final row repeats its step
    return out


def reward_summary(rows: list[dict], optimised: list[str], window: int = 9) -> dict:
    """Per reward: its rollout mean (smoothed) at the start, peak and end, and its held-out mean
    at step 0, best and end; and for each reward the run only watched (weight 0), where it
    peaked and how the optimised rewards moved after that step — reward hacking is the watched
    (true) reward falling while the optimised (proxy) one keeps rising."""
    series = reward_series(rows)
    out: dict = {"optimised": [n for n in optimised if n in series],
                 "watched": [n for n in series if n not in optimised], "rewards": {},
                 "parting": {}, "window": window}
    for name, d in series.items():
        e: dict = {}
        if d["rollout"]:
            steps, v = zip(*d["rollout"])
            sm = smooth(list(v), window)
            i = int(np.argmax(sm))
            e["rollout"] = {"start": float(sm[0]), "peak": float(sm[i]), "peak_step": steps[i],
                            "final": float(sm[-1]), "final_step": steps[-1]}
        if d["held_out"]:
            steps, v = zip(*d["held_out"])
            i = int(np.argmax(v))
            e["held_out"] = {"start": v[0], "start_step": steps[0], "best": v[i],
                             "best_step": steps[i], "final": v[-1], "final_step": steps[-1]}
        out["rewards"][name] = e
    for w in out["watched"]:
        part: dict = {}
        for kind, peak_key, step_key in (("held_out", "best", "best_step"),
                                         ("rollout", "peak", "peak_step")):
            we = out["rewards"][w].get(kind)
            if not we:
                continue
            at = we[step_key]
            moves = {}
            for o in out["optimised"]:
                pts = dict(series[o][kind])
                if kind == "rollout":
                    steps = [s for s, _ in series[o][kind]]
                    pts = dict(zip(steps, smooth([v for _, v in series[o][kind]], window)))
                if at in pts and pts:
                    last = max(pts)
                    moves[o] = {"at_peak": float(pts[at]), "final": float(pts[last]),
                                "change_after_peak": float(pts[last] - pts[at])}
            part[kind] = {"peak_step": at, "at_peak": we[peak_key], "final": we["final"],
                          "change_after_peak": we["final"] - we[peak_key], "optimised": moves,
                          "hacked": bool(we["final"] < we[peak_key] and moves and
                                         all(m["change_after_peak"] > 0 for m in moves.values()))}
        out["parting"][w] = part
    return out


def reward_markdown(summary: dict) -> str:
    """The reward summary as Markdown tables."""
    lines = ["| reward | role | rollout start | rollout peak (step) | rollout final | held-out "
             "step 0 | held-out best (step) | held-out final |", "|---|---|---|---|---|---|---|---|"]
    for name, e in summary["rewards"].items():
        role = "optimised" if name in summary["optimised"] else "watched"
        ro, ho = e.get("rollout"), e.get("held_out")
        cells = ([f"{ro['start']:.3f}", f"{ro['peak']:.3f} ({ro['peak_step']})",
                  f"{ro['final']:.3f}"] if ro else ["", "", ""])
        cells += ([f"{ho['start']:.3f}", f"{ho['best']:.3f} ({ho['best_step']})",
                   f"{ho['final']:.3f}"] if ho else ["", "", ""])
        lines.append(f"| {name} | {role} | " + " | ".join(cells) + " |")
    for w, part in summary["parting"].items():
        for kind, p in part.items():
            moved = ", ".join(f"{o} {m['at_peak']:.3f} → {m['final']:.3f}"
                              for o, m in p["optimised"].items())
            lines.append(f"\n{w} ({kind.replace('_', '-')}, smoothed over "
                         f"{summary['window']} steps for rollouts) peaks at step "
                         f"{p['peak_step']} ({p['at_peak']:.3f}) and ends at {p['final']:.3f}; "
                         f"after its peak: {moved or 'n/a'}"
                         + (" — **the optimised reward rises while the watched one falls**"
                            if p["hacked"] else ""))
    return "\n".join(lines) + "\n"


def plot_rewards(rows: list[dict], path: str, optimised: list[str], window: int = 9) -> bool:
    """One panel per reward: its rollout mean per step (faint) and smoothed, and its held-out
    mean per evaluation, the optimised rewards above the watched ones: a proxy that keeps
    rising over a true reward that falls is reward hacking."""
    series = reward_series(rows)
    if len(series) < 2 and not any(d["held_out"] for d in series.values()):
        return False
    names = [n for n in optimised if n in series] + [n for n in series if n not in optimised]
    fig = Figure(figsize=(7, 2.6 * len(names)))
    axes = np.atleast_1d(fig.subplots(len(names), 1, sharex=True))
    for ax, name in zip(axes, names):
        d = series[name]
        role = "optimised" if name in optimised else "watched, not optimised"
        if d["rollout"]:
            steps, v = zip(*d["rollout"])
            ax.plot(steps, v, lw=0.8, alpha=0.3, color="C0")
            ax.plot(steps, smooth(list(v), window), lw=1.8, color="C0",
                    label=f"rollouts (mean, smoothed over {window})")
        if d["held_out"]:
            ax.plot(*zip(*d["held_out"]), "o-", color="C1", lw=1.5,
                    label="held-out prompts (greedy)")
        ax.set_ylabel(name)
        ax.set_title(f"reward `{name}` ({role})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def plot_pair_accuracy(rows: list[dict], path: str, title: str) -> bool:
    """Held-out pairwise accuracy per evaluation (a reward model or DPO's implied reward) beside
    the length-only baseline (the longer reply wins)."""
    acc = sorted(dict((r["step"], r["val/accuracy"]) for r in rows
                      if r.get("val/accuracy") is not None).items())
    if not acc:
        return False
    fig, ax = _figure((7, 4))
    ax.plot(*zip(*acc), "o-", lw=1.5, label="held-out pairwise accuracy")
    base = [r["val/length_baseline"] for r in rows if r.get("val/length_baseline") is not None]
    if base:
        ax.axhline(base[-1], color="grey", ls="--", lw=1, label="length baseline")
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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


def plot_chain(chain: list[tuple[str, dict]], path: str, *, keys: Optional[list[str]] = None,
               errors: Optional[list[dict]] = None,
               title: str = "Evaluations along the chain") -> bool:
    """Bar chart of each task's held-out accuracy along the chain (base -> SFT -> RL), or of any
    runs side by side (`keys`: the evaluations to show, in order; `errors`: per run, a standard
    error per key, drawn as error bars). The aggregates (format, chatcore) average over each
    run's own task set, so they stay in the report's table, not here; a run with no task
    accuracies gets no bar."""
    aggregates = ("eval/format", "eval/chatcore")
    keys = keys or sorted({k for _, ev in chain for k in ev if k.startswith("eval/") and
                           not k.endswith(("_tokens",)) and "@" not in k and k not in aggregates})
    errors = errors or [{} for _ in chain]
    shown = [(label, ev, err) for (label, ev), err in zip(chain, errors)
             if any(k in ev for k in keys)]
    if not keys or not shown:
        return False
    fig, ax = _figure((max(6, 1.1 * len(keys)), 4))
    width = 0.8 / len(shown)
    for j, (label, ev, err) in enumerate(shown):
        vals = [ev.get(k, np.nan) for k in keys]
        yerr = [err.get(k, 0.0) for k in keys] if err else None
        ax.bar(np.arange(len(keys)) + j * width, vals, width, yerr=yerr, capsize=2, label=label)
    ax.set_xticks(np.arange(len(keys)) + width * (len(shown) - 1) / 2)
    ax.set_xticklabels([k[5:] for k in keys], rotation=30, ha="right")
    ax.set_ylim(0, 1.05 if any(errors) else 1)
    ax.set_ylabel("held-out accuracy" + (" (± 1 s.e.)" if any(errors) else ""))
    ax.set_title(title)
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
    if plot_pair_accuracy(rows, os.path.join(ref.run_dir, "pair_accuracy.png"),
                          f"{cfg.name}: held-out preference pairs ranked right"):
        lines += ["## Held-out pairwise accuracy", "", "![pairs](pair_accuracy.png)", ""]
    rollouts = any(k.startswith("rl/reward/") for r in rows for k in r)     # an RL run's rows
    optimised = [k for k, w in rewards.parse(cfg.rl.rewards).items() if w] if rollouts else []
    if plot_rewards(rows, os.path.join(ref.run_dir, "rewards.png"), optimised):
        summary_r = reward_summary(rows, optimised)
        table = reward_markdown(summary_r)
        with open(os.path.join(ref.run_dir, "rewards.json"), "w") as f:
            json.dump(summary_r, f, indent=1)
        with open(os.path.join(ref.run_dir, "rewards.md"), "w") as f:
            f.write(f"# Rewards of {cfg.name}\n\n![rewards](rewards.png)\n\n{table}")
        lines += ["## Rewards", "", "![rewards](rewards.png)", "", table]
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
