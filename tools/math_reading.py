"""Where a model's worked math replies take their numbers from: the problem, or nowhere.

Reads the item-level output of `lm.eval --log_samples` for one or more runs and, task by task,
classifies every operand of every step (`lm.eval.reading`): from the problem, from an earlier
step, a unit (60, 100, 12, ...), or invented. A reply that invents an operand did not read its
problem; one that reads every operand and is still wrong chose the wrong operation or plan.
`--reference` adds the task's own worked solutions to the same held-out items, the figure a
reader that reads would get (GSM8K's human solutions invent about 5% of their operands: the
steps they do in their head).

  python -m lm.eval --run RUN --tasks gsm8k_easy,word_problems,everyday_math --log_samples \\
      --out RUN/eval_math.json
  python -m tools.math_reading sft=SFT/eval_math.json rl=RL/eval_math.json --reference

A run is its dir (its `eval.json` is read), or an eval file, optionally `label=...`.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/math_reading.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import math
from typing import Optional

from lm import conversation as chat
from lm import tasks as task_lib
from lm.eval import reading
from lm.eval.chat import asked, held_out_indices
from tools.by_question import InputError, load_samples, report, run_specs

REFERENCE = "reference"
ROWS = (  # (label, how to read one run's summary)
    ("accuracy", lambda s: s["acc"]),
    ("shows working", lambda s: s["worked"]),
    ("operands read (not invented)", lambda s: s["read"]),
    ("… from the problem", lambda s: s["operands"].get("problem")),
    ("… from an earlier step", lambda s: s["operands"].get("earlier")),
    ("… a unit or 1", lambda s: s["operands"].get("unit")),
    ("… invented", lambda s: s["operands"].get("invented")),
    ("problem's numbers used", lambda s: s["coverage"]),
    ("replies: read every operand, right", lambda s: s["replies"].get("reads/right", 0.0)),
    ("replies: read every operand, wrong", lambda s: s["replies"].get("reads/wrong", 0.0)),
    ("replies: invented one, right", lambda s: s["replies"].get("invents/right", 0.0)),
    ("replies: invented one, wrong", lambda s: s["replies"].get("invents/wrong", 0.0)),
    ("replies: no step", lambda s: s["replies"].get("no_steps/right", 0.0)
     + s["replies"].get("no_steps/wrong", 0.0)),
)


def reference(task_name: str, n: int) -> Optional[dict]:
    """The task's own worked solutions to its first `n` held-out items as evaluation picks them
    (the same items as an evaluation of `--limit n`); None for a task without one."""
    try:
        task = task_lib.get(task_name)
    except (KeyError, ValueError):
        return None
    items = []
    for i in held_out_indices(task, n):
        conv = task.example("test", i)
        if conv["messages"][-1]["role"] != "assistant":
            return None
        items.append((asked(conv), chat.reply_text(chat.parts_of(conv["messages"][-1]["content"])),
                      True))
    return reading.summary(items)


def table(runs: list[tuple[str, str]], tasks: Optional[list[str]] = None,
          with_reference: bool = False) -> dict:
    """{"runs": labels, "tasks": {task: {label: summary}}} for every task with worked replies."""
    labels, out = [label for label, _ in runs], {}
    for label, path in runs:
        _, samples = load_samples(path)
        for task in sorted({s["task"] for s in samples}):
            if tasks and task not in tasks:
                continue
            mine = [s for s in samples if s["task"] == task]
            s = reading.summary((x["prompt"], x["reply"], bool(x["correct"])) for x in mine)
            if s["operands"] or task in out:
                out.setdefault(task, {})[label] = s
    if tasks and not out:
        raise InputError(f"no worked replies of {', '.join(tasks)} in the samples")
    if with_reference:
        labels.append(REFERENCE)
        for task, row in out.items():
            ref = reference(task, max(s["n"] for s in row.values()))
            if ref is not None:
                row[REFERENCE] = ref
    return {"runs": labels, "tasks": out}


def _cell(x: Optional[float], n: int) -> str:
    if x is None:
        return "–"
    return f"{x:.3f} ± {math.sqrt(x * (1 - x) / n):.3f}" if n else f"{x:.3f}"


def markdown(tab: dict) -> str:
    labels, lines = tab["runs"], []
    for task, row in tab["tasks"].items():
        cols = [la for la in labels if la in row]
        lines += [f"### {task}", "", "| | " + " | ".join(f"{la} ({row[la]['n']})" for la in cols)
                  + " |", "|---|" + "---|" * len(cols)]
        for name, get in ROWS:
            # ± on reply shares only: operands of one reply are not independent draws
            per_reply = name.startswith(("accuracy", "shows", "replies"))
            lines.append(f"| {name} | " + " | ".join(
                _cell(get(row[la]), row[la]["n"] if per_reply else 0) for la in cols) + " |")
        lines.append("")
    lines.append("± one binomial standard error over replies; operand shares pool the operands of "
                 "every reply (lm.eval.reading).")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run dirs or eval files, optionally label=PATH")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: every task "
                   "whose replies compute)")
    p.add_argument("--reference", action="store_true", help="add a column for the task's own "
                   "worked solutions to the same held-out items")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    a = p.parse_args(argv)
    report("math_reading", lambda: table(run_specs(a.runs), a.tasks.split(",") if a.tasks
                                         else None, a.reference), markdown, a.json)


if __name__ == "__main__":
    main()
