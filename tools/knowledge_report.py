"""Hallucination against pretraining frequency (issue 26): correct / hallucinated / refused on the
knowledge base's held-out people, per number of pretraining copies, for several SFT runs side by
side; and working memory (the same questions with the biography in the prompt).

  python -m tools.knowledge_report --runs plain=chat_tiny_sft_kb probed=chat_tiny_sft_kb_probed \\
      naive=chat_tiny_sft_kb_naive --workdir /work/runs --out runs/knowledge_report

Reads each run's final evaluation (`eval/kb_qa_<verdict>_f<copies>`, greedy, held-out people;
`eval/kb_qa_context_correct_f<copies>`), writes `knowledge.json`, `knowledge.md` (tables with
± one binomial standard error, and the issue's goals checked against the first run as the
"before") and `knowledge.png` (accuracy, hallucination and refusal against copies, one line per
run). `--into_runs` also copies the three files into each run's dir. Where the runs hold every
held-out reply (`eval_items.json`, written by `python -m lm.eval --run RUN --tasks chat:kb_qa
--log_samples --out RUN/eval_items.json`), the report pairs them question by question: of what
the first run answered right about frequent people, how much each other run refuses.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import math
import shutil

from matplotlib.figure import Figure

from lm import runs
from lm import tasks as task_lib
from lm.report import final_evals
from lm.tasks import knowledge as kn
from lm.tasks.base import test_indices

VERDICTS = ("correct", "hallucinated", "refused")
ITEMS = "eval_items.json"   # a run's every held-out kb_qa reply (lm.eval --log_samples)
TASKS = (("kb_qa", "Without the biography (recollection)"),
         ("kb_qa_seen_phrasings", "The same held-out people in training's fixed phrasings"),
         ("kb_qa_context", "With the biography in the prompt (working memory)"),
         ("kb_search", "With the search tool"))


def counts(task: str, limit: int) -> dict[int, int]:
    """Held-out questions per pretraining frequency among the `limit` a run evaluated."""
    t = task_lib.get(task)
    size = t.size("test")
    out: dict[int, int] = {}
    for i in test_indices(size, min(limit, size)):
        f = t.item("test", i)[0].frequency
        out[f] = out.get(f, 0) + 1
    return out


def run_row(label: str, run_dir: str) -> dict:
    cfg = runs.load_config(runs.resolve(run_dir))
    ev = final_evals(run_dir)
    limit = cfg.eval.final_limit or cfg.eval.limit
    row = {"label": label, "run_dir": run_dir, "tasks": {}}
    for task, _ in TASKS:
        if f"eval/{task}" not in ev:
            continue
        n = counts(task, limit)
        cells = {}
        for f in kn.FREQUENCIES:
            c = {}
            for v in VERDICTS:
                p = ev.get(f"eval/{task}_{v}_f{f}")
                if p is not None:
                    c[v] = {"p": p, "n": n.get(f, 0),
                            "se": math.sqrt(p * (1 - p) / n[f]) if n.get(f) else None}
            if c:
                cells[str(f)] = c
        row["tasks"][task] = {"overall": {v: ev.get(f"eval/{task}_{v}") for v in VERDICTS},
                              "by_copies": cells}
        if task == "kb_search":   # the share of searches that found the person (a later lm.eval's)
            row["tasks"][task]["found"] = ev.get("eval/kb_search_found",
                                                 ev.get("eval.json/eval/kb_search_found"))
    return row


def goals(rows: list[dict]) -> list[dict]:
    """The issue's hallucination goals for each run after the first (the plain-SFT "before"),
    on kb_qa, or on kb_search for a run that has the search tool."""
    if not rows or "kb_qa" not in rows[0]["tasks"]:
        return []
    before = rows[0]["tasks"]["kb_qa"]["by_copies"]
    freq = [str(f) for f in kn.FREQUENCIES if f >= kn.FREQUENT and str(f) in before]
    mean = lambda cells, v: (sum(cells[f][v]["p"] for f in freq if f in cells) / len(freq)
                             if freq else float("nan"))
    out = []
    for r in rows[1:]:
        # a search model is judged with its tool
        task = "kb_search" if "kb_search" in r["tasks"] else "kb_qa"
        cells = r["tasks"].get(task, {}).get("by_copies", {})
        if not cells:
            continue
        never = cells.get("0", {}).get("hallucinated", {}).get("p", float("nan"))
        drop = mean(before, "correct") - mean(cells, "correct")
        over = mean(cells, "refused")
        out.append({"label": r["label"], "task": task, "hallucination_never_seen": never,
                    "hallucination_never_seen_ok": never <= 0.10,
                    "frequent_accuracy_drop": drop, "frequent_accuracy_ok": drop <= 0.05,
                    "frequent_over_refusal": over, "frequent_over_refusal_ok": over <= 0.10})
    return out


def verdicts(run_dir: str) -> dict | None:
    """(person, attribute) -> (copies, verdict) of every held-out kb_qa reply in the run's
    `ITEMS`, or None when it has none."""
    path = os.path.join(run_dir, ITEMS)
    if not os.path.exists(path):
        return None
    out = {}
    for x in json.load(open(path)).get("chat_samples", []):
        if x.get("task") == "kb_qa" and "item" in x:
            v = next(v for v in VERDICTS if x["grades"].get(v))
            out[(x["item"]["person"], x["item"]["attribute"])] = (x["item"]["frequency"], v)
    return out or None


def paired(rows: list[dict]) -> list[dict]:
    """Each run after the first against it, question by question (both runs' `ITEMS`): of the
    frequent people's questions the first answers right, the share the run refuses (over-refusal
    of what the model can say) and the share it still answers right."""
    before = verdicts(rows[0]["run_dir"]) if rows else None
    if before is None:
        return []
    knew = {k for k, (f, v) in before.items() if f >= kn.FREQUENT and v == "correct"}
    out = []
    for r in rows[1:]:
        after = verdicts(r["run_dir"])
        if after is None or not knew <= after.keys():
            continue
        n = len(knew)
        refused = sum(after[k][1] == "refused" for k in knew)
        kept = sum(after[k][1] == "correct" for k in knew)
        out.append({"label": r["label"], "known_before": n,
                    "refused_known": refused / n if n else float("nan"),
                    "kept_known": kept / n if n else float("nan")})
    return out


def markdown(result: dict) -> str:
    lines = ["# Hallucination against pretraining frequency", "",
             "Held-out people of the synthetic knowledge base (never in SFT data), greedy; ± one "
             "binomial standard error.", ""]
    for task, title in TASKS:
        rows = [r for r in result["rows"] if task in r["tasks"]]
        if not rows:
            continue
        lines += [f"## {title}: `{task}`", "",
                  "| run | verdict | " + " | ".join(f"{f} copies" for f in kn.FREQUENCIES)
                  + " | overall |", "|---|---|" + "---|" * (len(kn.FREQUENCIES) + 1)]
        for r in rows:
            t = r["tasks"][task]
            for v in VERDICTS:
                cells = []
                for f in kn.FREQUENCIES:
                    c = t["by_copies"].get(str(f), {}).get(v)
                    cells.append("" if c is None else f"{c['p']:.2f} ± {c['se']:.2f}"
                                 if c["se"] is not None else f"{c['p']:.2f}")
                o = t["overall"].get(v)
                lines.append(f"| {r['label']} | {v} | " + " | ".join(cells)
                             + f" | {'' if o is None else f'{o:.3f}'} |")
        found = [(r["label"], r["tasks"][task]["found"]) for r in rows
                 if r["tasks"][task].get("found") is not None]
        if found:
            lines += [""] + [f"{label}: the search found the asked person's passage for "
                             f"{x:.3f} of the questions." for label, x in found]
        lines.append("")
    if result["goals"]:
        lines += ["## Goals (against the first run)", "",
                  "| run | hallucination, never seen (≤ 0.10) | accuracy drop, ≥ 16 copies (≤ 0.05) "
                  "| over-refusal, ≥ 16 copies (≤ 0.10) |", "|---|---|---|---|"]
        for g in result["goals"]:
            mark = lambda ok: "met" if ok else "not met"
            lines.append(f"| {g['label']} (`{g['task']}`) | {g['hallucination_never_seen']:.3f} "
                         f"({mark(g['hallucination_never_seen_ok'])}) | "
                         f"{g['frequent_accuracy_drop']:+.3f} ({mark(g['frequent_accuracy_ok'])}) | "
                         f"{g['frequent_over_refusal']:.3f} "
                         f"({mark(g['frequent_over_refusal_ok'])}) |")
    if result.get("paired"):
        first = result["rows"][0]["label"]
        lines += ["", f"## Question by question: what {first} answered right about people seen "
                  f"≥ {kn.FREQUENT} times", "",
                  f"| run | questions {first} answered right | refused by the run (over-refusal) "
                  "| still right |", "|---|---|---|---|"]
        for g in result["paired"]:
            lines.append(f"| {g['label']} | {g['known_before']} | {g['refused_known']:.3f} | "
                         f"{g['kept_known']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> bool:
    rows = [r for r in result["rows"] if "kb_qa" in r["tasks"]]
    if not rows:
        return False
    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3, sharey=True)
    xs = list(range(len(kn.FREQUENCIES)))
    for ax, v in zip(axes, VERDICTS):
        for k, r in enumerate(rows):
            cells = r["tasks"]["kb_qa"]["by_copies"]
            pts = [(x, cells[str(f)][v]["p"]) for x, f in zip(xs, kn.FREQUENCIES)
                   if str(f) in cells and v in cells[str(f)]]
            if pts:
                ax.plot(*zip(*pts), "o-", color=f"C{k}", label=r["label"])
            ctx = r["tasks"].get("kb_qa_context", {}).get("by_copies", {})
            pts = [(x, ctx[str(f)][v]["p"]) for x, f in zip(xs, kn.FREQUENCIES)
                   if str(f) in ctx and v in ctx[str(f)]]
            if pts and v == "correct":
                ax.plot(*zip(*pts), "s--", color=f"C{k}", alpha=0.6,
                        label=f"{r['label']}, biography in the prompt")
        ax.set_xticks(xs, [str(f) for f in kn.FREQUENCIES])
        ax.set_xlabel("pretraining copies of the person")
        ax.set_title(v)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of held-out questions")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.knowledge_report",
                                description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", required=True, metavar="[LABEL=]RUN",
                   help="SFT runs (the first is the 'before' the goals compare with)")
    p.add_argument("--workdir", default=".")
    p.add_argument("--out", required=True)
    p.add_argument("--into_runs", action="store_true")
    a = p.parse_args(argv)
    rows = []
    for spec in a.runs:
        label, _, name = spec.rpartition("=")
        try:
            ref = runs.resolve(name, workdir=a.workdir)
        except runs.RunError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        rows.append(run_row(label or name, ref.run_dir))
    if not any("kb_qa" in r["tasks"] for r in rows):
        print("error: none of the runs evaluated kb_qa (eval.tasks of the chat_tiny_sft_kb* "
              "experiments)", file=sys.stderr)
        return 2
    result = {"rows": rows, "goals": goals(rows), "paired": paired(rows)}
    os.makedirs(a.out, exist_ok=True)
    files = [os.path.join(a.out, "knowledge.json"), os.path.join(a.out, "knowledge.md")]
    with open(files[0], "w") as f:
        json.dump(result, f, indent=1)
    with open(files[1], "w") as f:
        f.write(markdown(result))
    if plot(result, os.path.join(a.out, "knowledge.png")):
        files.append(os.path.join(a.out, "knowledge.png"))
    if a.into_runs:
        for r in rows:
            for path in files:
                shutil.copy(path, r["run_dir"])
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
