"""Held-out accuracy question by question: which wordings a model reads and which it does not.

Reads the item-level output of `lm.eval --log_samples` (a run's `eval.json`) for one or more
runs and groups each task's items by the question they were asked in: recall's and
spelling's held-out questions are a handful of fixed wordings, and an overall figure hides
that one wording is read nine times in ten and another never. One column a run, the binomial
standard error beside each figure, and with `--wrong K` the K commonest wrong replies of each
question (in the last run).

  python -m lm.eval --run RUN --tasks recall,spelling_ood --limit 600 --log_samples
  python -m tools.by_question 800=RUN_A 1600=RUN_B --tasks recall,spelling_ood --wrong 3

A run is its dir (its `eval.json` is read), or an `eval.json` path, optionally `label=...`.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/by_question.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import collections
import functools
import json
import math
from typing import Callable, Optional

from lm.tasks import recall, spelling


class InputError(ValueError):
    """A file or argument the tool cannot use (said in one line, not a traceback)."""


@functools.cache
def _recall_questions() -> dict[str, str]:
    """frame -> the question as written, for every fixed recall question (test and training):
    a sample's question is named by the wording it was asked in, with the key it named
    abstracted away (`recall.frame`)."""
    out: dict[str, str] = {}
    for _, (_, _, asks) in recall.FACTS.items():
        for split in ("test", "train"):
            for q in asks[split]:
                out.setdefault(recall.frame(q), q)
    return out


SPELLING_TEMPLATES = spelling.OOD_QUESTIONS + spelling.QUESTIONS


def question_of(sample: dict) -> str:
    """The question a logged sample was asked in: for recall tasks the fixed question whose
    frame its last user turn has, for spelling tasks the template that, filled with the item's
    word and letter, is its prompt; otherwise (or with no match) the prompt's frame."""
    task, prompt = sample["task"], sample["prompt"]
    item = sample.get("item", {})
    if task.startswith("recall"):
        f = recall.frame(prompt)
        return _recall_questions().get(f, f)
    if task.startswith("spelling") and "word" in item and "letter" in item:
        w, ltr = item["word"], item["letter"]
        for t in SPELLING_TEMPLATES:
            if t.format(l=ltr, w=w, u=ltr.upper(), c=w.capitalize()) == prompt:
                return t
    return recall.frame(prompt, item.get("answer") if isinstance(item.get("answer"), str)
                        else None, keys=False)


def load_samples(path: str) -> tuple[dict, list[dict]]:
    """(the eval file's `chat` figures, its item-level samples) from a run dir or eval.json."""
    f = os.path.join(path, "eval.json") if os.path.isdir(path) else path
    if not os.path.isfile(f):
        raise InputError(f"{path}: no eval.json here; write one with `python -m lm.eval --run "
                         f"{path} --tasks TASKS --log_samples`")
    try:
        with open(f) as fh:
            d = json.load(fh)
    except json.JSONDecodeError as e:
        raise InputError(f"{f}: not JSON ({e})") from None
    samples = d.get("chat_samples") or []
    if not samples:
        raise InputError(f"{f} holds no chat samples: evaluate chat tasks with --log_samples")
    return d.get("chat", {}), samples


def table(runs: list[tuple[str, str]], tasks: Optional[list[str]] = None,
          wrong: int = 0) -> dict:
    """{"runs": labels, "tasks": {task: {"n": {label: n}, "acc": {label: acc}, "questions":
    [{"question", "n": {label}, "acc": {label}, "wrong": [[reply, count], ...]}]}}}: each
    question's items and accuracy per run, questions by their items in the first run."""
    labels, out = [label for label, _ in runs], {}
    for label, path in runs:
        figures, samples = load_samples(path)
        for task in sorted({s["task"] for s in samples}):
            if tasks and task not in tasks:
                continue
            mine = [s for s in samples if s["task"] == task]
            logged = figures.get(f"eval/{task}_n")
            if logged and len(mine) < logged:
                raise InputError(f"{path}: {len(mine)} of {task}'s {logged} items logged; "
                                 "rerun lm.eval with --log_samples")
            t = out.setdefault(task, {"n": {}, "acc": {}, "questions": {}})
            t["n"][label] = len(mine)
            t["acc"][label] = sum(bool(s["correct"]) for s in mine) / len(mine)
            by_q = collections.defaultdict(list)
            for s in mine:
                by_q[question_of(s)].append(s)
            for q, ss in by_q.items():
                row = t["questions"].setdefault(q, {"question": q, "n": {}, "acc": {}})
                row["n"][label] = len(ss)
                row["acc"][label] = sum(bool(s["correct"]) for s in ss) / len(ss)
                if wrong and label == labels[-1]:
                    c = collections.Counter(s["reply"].strip() for s in ss if not s["correct"])
                    row["wrong"] = [[r, k] for r, k in c.most_common(wrong)]
    if tasks and not out:
        raise InputError(f"none of {', '.join(tasks)} is in the samples")
    for t in out.values():
        t["questions"] = sorted(t["questions"].values(), key=lambda r: (
            -r["n"].get(labels[0], 0), -max(r["n"].values()), r["question"]))
    return {"runs": labels, "tasks": out}


def _cell(acc: Optional[float], n: Optional[int]) -> str:
    if acc is None:
        return ""
    return f"{acc:.2f} ± {math.sqrt(acc * (1 - acc) / n):.2f}" if n else f"{acc:.2f}"


def markdown(tab: dict) -> str:
    labels, lines = tab["runs"], []
    for task, t in tab["tasks"].items():
        lines += [f"### {task}", "", "| question | items | " + " | ".join(labels) + " |",
                  "|---|---|" + "---|" * len(labels)]
        for r in t["questions"]:
            n = "/".join(str(r["n"][la]) for la in labels if la in r["n"])
            q = r["question"].replace("|", "\\|")
            lines.append(f"| {q} | {n} | " + " | ".join(
                _cell(r["acc"].get(la), r["n"].get(la)) for la in labels) + " |")
        lines.append(f"| **all** | {'/'.join(str(t['n'][la]) for la in labels if la in t['n'])}"
                     " | " + " | ".join(f"**{_cell(t['acc'].get(la), t['n'].get(la))}**"
                                        for la in labels) + " |")
        wrongs = [r for r in t["questions"] if r.get("wrong")]
        if wrongs:
            lines += ["", f"Commonest wrong replies ({labels[-1]}):", ""]
            for r in wrongs:
                said = "; ".join(f"{reply[:60]!r} × {k}" for reply, k in r["wrong"])
                lines.append(f"- {r['question']}: {said}")
        lines.append("")
    lines.append("± one binomial standard error, sqrt(p(1-p)/n), of each run's items.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run dirs or eval.json files, optionally label=PATH")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task "
                   "with samples)")
    p.add_argument("--wrong", type=int, default=0, help="list each question's K commonest "
                   "wrong replies (last run)")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    a = p.parse_args(argv)
    report("by_question", lambda: table(run_specs(a.runs), a.tasks.split(",") if a.tasks
                                        else None, a.wrong), markdown, a.json)


def run_specs(args: list[str]) -> list[tuple[str, str]]:
    """(label, path) per `label=PATH` or PATH argument (a bare path is labelled by its name)."""
    return [tuple(r.split("=", 1)) if "=" in r else (os.path.basename(r.rstrip("/")), r)
            for r in args]


def report(tool: str, build: Callable[[], dict], to_markdown: Callable[[dict], str],
           json_path: Optional[str]) -> None:
    """Build a tool's table, a bad input said in one line; write it as JSON if asked; print it."""
    try:
        tab = build()
    except InputError as e:
        sys.exit(f"{tool}: {e}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(tab, f, indent=1)
    print(to_markdown(tab))


if __name__ == "__main__":
    main()
