"""Issue 26's experiments in one command (each run is `python -m lm.main -e NAME`), then their
tables: hallucination and working memory, tokens to think, tokenization and spelling, knowledge
of self.

  python -m tools.psychology --workdir /work/runs                    # every part
  python -m tools.psychology --parts think,self --workdir /work/runs
  python -m tools.psychology --tables --workdir /work/runs           # only the tables

Parts (in order; a run whose latest one is complete is reused unless `--rerun`):

  knowledge  chat_tiny_base_kb, chat_tiny_sft_kb, the probe (tools.probe_knowledge, its
             threshold calibrated on the model's greedy replies: `--threshold auto`), then
             chat_tiny_sft_kb_probed, _naive, _search, then every held-out kb_qa reply of the
             plain, probed and naive SFTs (lm.eval --log_samples into <run>/eval_items.json);
             table: tools.knowledge_report.
             `--kb kb_qa`: the same chain with question-answer pretraining (`_kb_qa` names,
             probe in runs/knowledge_probe_qa, tables in <out>/knowledge_qa); `--recipe
             light`: every SFT at a third of the learning rate (`_light` names and dirs)
  think      chat_tiny_sft_think_calculator, _reasoning, _answer_first (from chat_tiny_base)
  spelling   chat_tiny_base_bytes, then chat_tiny_sft_[bytes_]spell_{tool,spell,direct}
  self       chat_tiny_sft_noid; the base model and chat_tiny_sft asked who they are
             (python -m lm.eval)

Tables go to `--out` (default <workdir>/runs/psychology) and each run's dir: JSON, Markdown and
a bar plot per part, each accuracy with ± one binomial standard error.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import math
import subprocess

from experiments.psychology import KB_VARIANTS, RECIPES, probe_dir
from lm import report, runs
from tools import knowledge_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KB_SFTS = {"plain": "", "probed": "_probed", "naive": "_naive", "search": "_search"}
PARTS = {
    # `:items`: the run's every held-out kb_qa reply, for the paired over-refusal
    "knowledge": ["chat_tiny_base_kb", "chat_tiny_sft_kb", "probe", "chat_tiny_sft_kb_probed",
                  "chat_tiny_sft_kb_naive", "chat_tiny_sft_kb_search"]
    + [f"chat_tiny_sft_kb{s}:items" for s in ("", "_probed", "_naive")],
    "think": [f"chat_tiny_sft_think_{f}" for f in ("calculator", "reasoning", "answer_first")],
    # the BPE formats first (they need only the chain's base), then the byte-level base and its SFTs
    "spelling": [f"chat_tiny_sft_spell_{f}" for f in ("tool", "spell", "direct")]
    + ["chat_tiny_base_bytes"] + [f"chat_tiny_sft_bytes_spell_{f}" for f in ("tool", "spell",
                                                                            "direct")],
    "self": ["chat_tiny_sft_noid", "base_as_chat", "sft_as_self"],
}
# evaluation-only steps of the self part: the latest run of an experiment asked who it is
# (lm.eval into <run>/eval_self.json), with the table's label
AS_CHAT = {"base_as_chat": ("chat_tiny_base", "chat_tiny_base (as a chat)"),
           "sft_as_self": ("chat_tiny_sft", "chat_tiny_sft (with the identity task)")}
COLUMNS = {
    # the sums in held-out phrasings, then the same sums in training's: a format's arithmetic
    # apart from whether the model reads a new wording as a sum
    "think": ["arithmetic_easy", "mental_d1", "mental_d2", "mental_d3", "mental_d4"]
    + [f"mental_d{d}_seen_phrasings" for d in (1, 2, 3, 4)],
    # spelling_ood asks for the spelled letters and the count, so a `direct` model scores 0 on it
    # by construction: its count alone is spelling_ood_count
    "spelling": ["spelling", "spelling_letters", "everyday_letters", "spelling_ood_count",
                 "spelling_ood"],
    "self": ["whoami_teacher", "whoami_teacher_names_self", "whoami_teacher_names_maker",
             "whoami_teacher_claims_other", "identity"],
}


def complete(name: str, workdir: str) -> bool:
    """Whether the experiment has a finished run (what its name resolves to)."""
    try:
        runs.resolve(name, workdir=workdir)
    except runs.RunError:
        return False
    return True


def step_command(step: str, a: argparse.Namespace) -> list[str] | None:
    """The command of one step, or None when it is done and not to be rerun."""
    py = sys.executable
    if step == "probe":
        out = os.path.join(a.workdir, probe_dir(a.kb, recipe(a)))
        if os.path.exists(os.path.join(out, "fix.jsonl")) and not a.rerun:
            return None
        return [py, "-m", "tools.probe_knowledge", "--run", f"chat_tiny_sft_{a.kb}{recipe(a)}",
                "--workdir", a.workdir, "--out", out, "--threshold", "auto"]
    if step.endswith(":items"):
        ref = runs.resolve(step[:-len(":items")], workdir=a.workdir)
        out = os.path.join(ref.run_dir, knowledge_report.ITEMS)
        if os.path.exists(out) and not a.rerun:
            return None
        return [py, "-m", "lm.eval", "--run", ref.run_dir, "--tasks", "chat:kb_qa", "--limit",
                "0", "--batch_size", "150", "--log_samples", "--no_progress", "--out", out]
    if step in AS_CHAT:
        ref = runs.resolve(AS_CHAT[step][0], workdir=a.workdir)
        if os.path.exists(os.path.join(ref.run_dir, "eval_self.json")) and not a.rerun:
            return None
        return [py, "-m", "lm.eval", "--run", ref.run_dir, "--tasks",
                "chat:whoami_teacher,chat:identity", "--limit", "200", "--out",
                os.path.join(ref.run_dir, "eval_self.json")]
    if complete(step, a.workdir) and not a.rerun:
        return None
    return [py, "-m", "lm.main", "-e", step, "--workdir", a.workdir, "--no_progress"]


def recipe(a: argparse.Namespace) -> str:
    """The SFT recipe's suffix in experiment names ('' or '_light')."""
    return "" if a.recipe == "chain" else f"_{a.recipe}"


def steps(part: str, a: argparse.Namespace) -> list[str]:
    """The part's steps; the knowledge chain's names for the `--kb` variant and `--recipe` (its
    base is the variant's whatever the recipe)."""
    if part != "knowledge":
        return PARTS[part]
    return [s.replace("_sft_kb", f"_sft_{a.kb}{recipe(a)}").replace("_base_kb", f"_base_{a.kb}")
            for s in PARTS[part]]


def final_row(run_dir: str) -> dict:
    """The run's final evaluation (its counts `_n` included), with the tasks that a later
    `python -m lm.eval --run RUN --tasks chat:...` wrote to its eval.json (the later evaluation
    replaces the run's own for the tasks it covers: it is the one asked for, e.g. with a longer
    reply budget)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    rows = [json.loads(x) for x in open(path)] if os.path.exists(path) else []
    finals = [r for r in rows if r.get("final")]
    later = os.path.join(run_dir, "eval.json")
    extra = json.load(open(later)).get("chat", {}) if os.path.exists(later) else {}
    return {**(finals[-1] if finals else report.final_evals(run_dir)), **extra}


def n_of(ev: dict, key: str) -> int | None:
    """The item count of a grade's task: `spelling_ood_count` was graded on `spelling_ood`'s
    items (the longest prefix of the key that has a count)."""
    pieces = key.split("_")
    for k in range(len(pieces), 0, -1):
        n = ev.get(f"eval/{'_'.join(pieces[:k])}_n")
        if n is not None:
            return n
    return None


def cell(ev: dict, key: str, n: int | None) -> dict | None:
    v = ev.get(f"eval/{key}")
    if v is None:
        return None
    n = ev.get(f"eval/{key}_n", n)
    return {"acc": v, "n": n, "se": math.sqrt(v * (1 - v) / n) if n else None}


def table(part: str, workdir: str) -> dict:
    rows = []
    names = [s for s in PARTS[part] if s != "probe" and not s.endswith(":items")]
    for name in names:
        if name in AS_CHAT:
            try:
                ref = runs.resolve(AS_CHAT[name][0], workdir=workdir)
                ev = json.load(open(os.path.join(ref.run_dir, "eval_self.json")))["chat"]
            except (runs.RunError, OSError):
                continue
            label, run_dir = AS_CHAT[name][1], ref.run_dir
        else:
            try:
                ref = runs.resolve(name, workdir=workdir)
            except runs.RunError:
                continue
            ev, label, run_dir = final_row(ref.run_dir), name, ref.run_dir
        base_n = {c: n_of(ev, c) for c in COLUMNS.get(part, [])}
        rows.append({"label": label, "run_dir": run_dir,
                     "eval": {c: cell(ev, c, base_n[c])
                                              for c in COLUMNS.get(part, [])}})
    return {"part": part, "columns": COLUMNS.get(part, []), "rows": rows}


def markdown(t: dict) -> str:
    lines = [f"## {t['part']}", "", "| run | " + " | ".join(t["columns"]) + " |",
             "|---|" + "---|" * len(t["columns"])]
    for r in t["rows"]:
        cells = ["" if c is None else f"{c['acc']:.3f}" + (f" ± {c['se']:.3f}" if c["se"]
                                                          else "")
                 for c in (r["eval"][k] for k in t["columns"])]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(t: dict, path: str) -> bool:
    """The part's table as grouped bars (`lm.report.plot_chain`): one group per evaluation, one
    bar per run, each with its binomial standard error."""
    keys = [f"eval/{c}" for c in t["columns"]]
    rows = [(r["label"], {f"eval/{c}": x for c, x in r["eval"].items() if x}) for r in t["rows"]]
    return report.plot_chain([(label, {k: x["acc"] for k, x in ev.items()}) for label, ev in rows],
                             path, keys=keys, title=t["part"],
                             errors=[{k: x["se"] or 0.0 for k, x in ev.items()} for _, ev in rows])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.psychology",
                                description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {list(PARTS)}")
    p.add_argument("--workdir", default=ROOT)
    p.add_argument("--out", default=None)
    p.add_argument("--rerun", action="store_true", help="run every step again")
    p.add_argument("--kb", default="kb", choices=sorted(KB_VARIANTS),
                   help="the knowledge chain: kb (biographies) or kb_qa (question-answer "
                        "pretraining too)")
    p.add_argument("--recipe", default="chain", choices=["chain"] + [r[1:] for r in RECIPES if r],
                   help="the knowledge chain's SFTs: the chain's recipe, or light (a third of its "
                        "learning rate)")
    p.add_argument("--tables", action="store_true", help="no runs: only the tables")
    a = p.parse_args(argv)
    parts = [x for x in a.parts.split(",") if x]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {unknown}; known: {list(PARTS)}")
    out = a.out or os.path.join(a.workdir, "runs", "psychology")
    if not a.tables:
        for part in parts:
            for step in steps(part, a):
                cmd = step_command(step, a)
                if cmd is None:
                    print(f"[psychology] {step}: done, reused", file=sys.stderr)
                    continue
                print(f"[psychology] {step}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
                r = subprocess.run(cmd, cwd=ROOT)
                if r.returncode != 0:
                    print(f"[psychology] {step} failed (exit {r.returncode})", file=sys.stderr)
                    return r.returncode
    os.makedirs(out, exist_ok=True)
    for part in parts:
        if part == "knowledge":
            names = {k: f"chat_tiny_sft_{a.kb}{recipe(a)}{s}" for k, s in KB_SFTS.items()}
            specs = [f"{k}={n}" for k, n in names.items() if complete(n, a.workdir)]
            if specs:
                knowledge_report.main(["--runs", *specs, "--workdir", a.workdir, "--out",
                                       os.path.join(out, "knowledge" + a.kb[2:] + recipe(a)),
                                       "--into_runs"])
            continue
        t = table(part, a.workdir)
        for folder in [out] + [r["run_dir"] for r in t["rows"]]:   # the set, and each run's dir
            with open(os.path.join(folder, f"{part}.json"), "w") as f:
                json.dump(t, f, indent=1)
            with open(os.path.join(folder, f"{part}.md"), "w") as f:
                f.write(markdown(t))
            plot(t, os.path.join(folder, f"{part}.png"))
        print(markdown(t))
    return 0


if __name__ == "__main__":
    sys.exit(main())
