"""Distillation data: a teacher's sampled replies to training prompts, as SFT conversations.

Prompts come from a task mixture's `train` split only (`lm.data.sft.Mixture`, the SFT stage's own
deterministic stream), so no held-out problem can enter a student's data. Each prompt gets
`samples` replies from the teacher (tools on: its calculator calls and their outputs are kept as
conversation parts, so the student learns the calls and never the outputs), each marked with
`teacher_correct` (its task's grade; None for tasks without a grader, e.g. Dolly). `select`:

  correct   rejection sampling: the replies graded right (and the ungraded ones)
  all       every reply (right or wrong)

A reply that did not finish (no <|assistant_end|> within its budget), or does not make a valid
conversation (e.g. an empty calculator call), is never kept (counted: `unfinished`, `invalid`). Multiple
choice tasks (graded on logits, not replies) cannot be distilled this way and are refused.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

from tqdm import tqdm

from lm import conversation as chat
from lm import tasks as task_lib
from lm.data.sft import Mixture
from lm.eval.chat import generate_replies
from lm.sampling import Engine

KEEP = ("correct", "all")


def teacher_data(engine: Engine, tok, weights: dict[str, float], *, prompts: int,
                 samples: int = 1, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 64, max_new_tokens: int = 0,
                 progress: bool = False) -> tuple[list[dict], dict]:
    """(conversations, stats): the teacher's finished replies to the first `prompts` items of
    the mixture's training stream, each marked `teacher_correct`."""
    if prompts < 1 or samples < 1:
        raise ValueError("prompts and samples must be >= 1")
    for name in weights:
        if task_lib.get(name).kind == "categorical":
            raise ValueError(f"{name} is multiple choice (graded on logits): it has no replies "
                             f"to distil; leave it out of the mixture")
    mixture = Mixture(weights, "train", seed)        # training prompts only, never held out
    items = [mixture.item(i) for i in range(prompts)]
    by_task: dict[str, list[int]] = {}
    for i, (name, _) in enumerate(items):
        by_task.setdefault(name, []).append(i)
    kept: dict[int, list[dict]] = {}
    stats = Counter()
    per_task: dict[str, Counter] = {}
    bar = tqdm(total=prompts * samples, disable=not progress, desc="teacher replies")
    for name, idx in sorted(by_task.items()):
        task = task_lib.get(name)
        graded = task.kind == "generative"
        convs = [mixture.conversation(i) for i in idx]
        budget = max_new_tokens or task.max_new_tokens()
        replies = generate_replies(engine, tok, convs, max_new_tokens=budget,
                                   batch_size=batch_size, temperature=temperature, seed=seed,
                                   n=samples, first=idx[0])
        c = per_task.setdefault(name, Counter())
        for j, i in enumerate(idx):
            prompt = [m for m in convs[j]["messages"]]
            if prompt[-1]["role"] == "assistant":
                prompt = prompt[:-1]
            for r in replies[j * samples:(j + 1) * samples]:
                c["replies"] += 1
                if not r["format_ok"]:
                    c["unfinished"] += 1
                    continue
                conv = {"messages": prompt + [{"role": "assistant", "content": r["parts"]}]}
                try:                  # e.g. an empty calculator call: not training data
                    chat.validate(conv, require_reply=True)
                except chat.ConversationError:
                    c["invalid"] += 1
                    continue
                right = bool(task.evaluate(convs[j], r["text"])) if graded else None
                c["correct"] += bool(right)
                c["ungraded"] += right is None
                kept.setdefault(i, []).append(dict(conv, task=name, source=i,
                                                   teacher_correct=right))
        bar.update(len(idx) * samples)
    bar.close()
    out = [conv for i in sorted(kept) for conv in kept[i]]
    for c in per_task.values():
        stats.update(c)
    return out, {"prompts": prompts, "samples": samples, "temperature": temperature,
                 "seed": seed, **dict(stats),
                 "by_task": {n: dict(c) for n, c in sorted(per_task.items())}}


def select(convs: list[dict], keep: str) -> list[dict]:
    """The conversations a student of kind `keep` trains on (see the module docstring)."""
    if keep not in KEEP:
        raise ValueError(f"keep: {keep!r} is not one of {KEEP}")
    return [c for c in convs if keep == "all" or c["teacher_correct"] is not False]


def held_out_prompts(names, limit: int = 2000) -> set[str]:
    """The user turns of the named tasks' held-out (test) items: what distillation data must
    never contain (checked by the tests and by tools.distill before writing)."""
    out: set[str] = set()
    for name in names:
        t = task_lib.get(name)
        if "test" not in t.splits:
            continue
        size = t.size("test")
        for k in range(min(limit, size) if size is not None else limit):
            out.add(user_text(t.example("test", k)))
    return out


def user_text(conv: dict) -> str:
    return "\n".join(m["content"] for m in conv["messages"]
                     if m["role"] == "user" and isinstance(m["content"], str))


def check_no_held_out(convs: list[dict], names, limit: int = 2000) -> Optional[str]:
    """None, or the first distilled prompt that is also a held-out one."""
    held = held_out_prompts(names, limit)
    return next((user_text(c) for c in convs if user_text(c) in held), None)
