"""GSM8K: grade-school math word problems with calculator calls, graded on the number after ####.

Splits: `train` is train.jsonl without its last 500 problems; `test` is test.jsonl (downloaded
from the canonical repository), or, when it cannot be had (offline), those last 500 training
problems, which no split trains on either way (`source` says which one a run used). The answers'
`<<48/2=24>>` annotations become calculator calls whose outputs are what `lm.tools_calc` returns
for the expression (the annotation's own result where the calculator errs), so a model trained on
them sees at inference what it saw in training.
"""
from __future__ import annotations

import json
import sys
from functools import cached_property

from lm.conversation import conversation
from lm.data import sources
from lm.tasks.base import Task, TaskDataError, calc_parts, final_number, same_number
from lm.tools_calc import DATA_LIMITS, calculate

TRAIN_HOLDOUT = 500


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def answer_parts(answer: str) -> list[dict]:
    parts = calc_parts(answer)
    for k, p in enumerate(parts):
        if p["type"] == "python":
            got = calculate(p["text"], DATA_LIMITS)
            if not got.startswith("Error"):
                parts[k + 1] = {"type": "output", "text": got}
    return parts


class GSM8K(Task):
    name = "gsm8k"
    kind = "generative"

    @cached_property
    def _train_all(self) -> list[dict]:
        try:
            return _read(sources.fetch("gsm8k_train"))
        except sources.DataUnavailableError as e:
            raise TaskDataError(str(e)) from None

    @cached_property
    def _test(self) -> tuple[list[dict], str]:
        try:
            return _read(sources.fetch("gsm8k_test")), "test.jsonl"
        except sources.DataUnavailableError:
            print(f"gsm8k: test.jsonl unavailable (offline); the held-out split is the last "
                  f"{TRAIN_HOLDOUT} problems of train.jsonl, which training never uses",
                  file=sys.stderr)
            return self._train_all[-TRAIN_HOLDOUT:], f"train.jsonl[-{TRAIN_HOLDOUT}:]"

    @property
    def source(self) -> str:
        """Which file the test split comes from."""
        return self._test[1]

    def rows(self, split: str) -> list[dict]:
        self._check_split(split)
        return self._train_all[:-TRAIN_HOLDOUT] if split == "train" else self._test[0]

    @cached_property
    def _rows(self) -> dict[str, list[dict]]:
        return {s: self.rows(s) for s in self.splits}

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self._rows[split])

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        row = self._rows[split][i]
        return conversation(row["question"], answer_parts(row["answer"]), task=self.name,
                            answer=final_number(row["answer"]))

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 320


def steps_of(answer: str) -> int:
    """Calculator steps of a GSM8K solution (its `<<...>>` annotations)."""
    return answer.count("<<")


class GSM8KEasy(GSM8K):
    """GSM8K problems whose solutions take at most `max_steps` calculator steps (real human
    phrasing, 1-2 operations). `train` holds those of GSM8K's training part (SFT data); `test`
    those of the held-out part, which no split of any task trains on (pretraining's corpus uses
    `train` only): 186 problems with the offline split."""
    name = "gsm8k_easy"

    def __init__(self, max_steps: int = 2):
        self.max_steps = max_steps

    def rows(self, split: str) -> list[dict]:
        return [r for r in super().rows(split) if 1 <= steps_of(r["answer"]) <= self.max_steps]

    def max_new_tokens(self) -> int:
        return 200
