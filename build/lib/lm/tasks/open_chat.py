"""Open conversation written by people: Dolly-15k and Alpaca, for SFT (no grader: `kind='open'`).

Each record becomes one user turn (instruction, plus its context/input) and one assistant turn
(the response). About 1 record in 50, by a stable hash of the instruction, is held out (`test`),
for a validation loss on conversations training never saw. The canonical files are downloaded;
the shared data's stand-ins (Dolly split into 11 files, a 5,000-record Alpaca subset) are used
when the canonical file is absent.
"""
from __future__ import annotations

import json
from functools import cached_property

from lm.conversation import conversation
from lm.data import sources
from lm.tasks.base import Task, TaskDataError, held_out


def _read_records(name: str) -> list[dict]:
    try:
        paths = sources.fetch_or_alternatives(name)
    except sources.DataUnavailableError as e:
        raise TaskDataError(str(e)) from None
    rows: list[dict] = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            if p.endswith(".jsonl"):
                rows += [json.loads(line) for line in f if line.strip()]
            else:
                rows += json.load(f)
    return rows


class OpenChat(Task):
    kind = "open"

    def __init__(self, name: str):
        if name not in ("dolly", "alpaca"):
            raise ValueError(f"unknown open-chat set {name!r}")
        self.name = name

    @cached_property
    def _rows(self) -> dict[str, list[dict]]:
        if self.name == "dolly":
            recs = [(r["instruction"], r.get("context", ""), r["response"])
                    for r in _read_records("dolly15k")]
        else:
            recs = [(r["instruction"], r.get("input", ""), r["output"])
                    for r in _read_records("alpaca")]
        recs = [r for r in recs if r[0].strip() and r[2].strip()]
        out = {"train": [], "test": []}
        for r in recs:
            out["test" if held_out(r[0], 50) else "train"].append(r)
        return out

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self._rows[split])

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        instruction, context, response = self._rows[split][i]
        user = instruction.strip() + (f"\n\n{context.strip()}" if context.strip() else "")
        return conversation(user, response.strip(), task=self.name)

    def evaluate(self, conv: dict, reply: str) -> bool:
        raise TypeError(f"{self.name} has no grader (open conversation: use its validation loss)")
