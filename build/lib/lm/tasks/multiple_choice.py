"""Multiple-choice tasks in the chat format (MMLU, ARC-Easy, ARC-Challenge, HellaSwag), graded by
the logits of the answer letters at the assistant's first position (nanochat's categorical eval).

Rendering puts each letter right after its choice (`- Paris=A`), so the answer is one letter
token, and the reply is that letter. Their likelihood-scored counterparts, as the field scores
base models, are in `lm.eval.likelihood`.

Splits: MMLU `train` = dev (the 5-shot examples, 285 rows), `test` = val (1,531 rows); ARC has its
test split only (`train` is empty); HellaSwag has val only (`test`; `train` is empty).
"""
from __future__ import annotations

import bz2
import csv
import glob
import json
import os
import re
import tarfile
from functools import cached_property

from lm.conversation import conversation
from lm.data import sources
from lm.tasks.base import Task, TaskDataError

LETTERS = "ABCDEFGHIJ"


def mc_prompt(question: str, choices: list[str]) -> str:
    lines = [f"Multiple Choice question: {question}"]
    lines += [f"- {c}={LETTERS[i]}" for i, c in enumerate(choices)]
    return "\n".join(lines) + "\n\nRespond only with the letter of the correct answer."


def mc_conversation(task: str, question: str, choices: list[str], gold: int, **extra) -> dict:
    letters = list(LETTERS[:len(choices)])
    return conversation(mc_prompt(question, choices), letters[gold], task=task, letters=letters,
                        gold=letters[gold], choices=choices, **extra)


class MultipleChoice(Task):
    kind = "categorical"

    def rows(self, split: str) -> list[dict]:
        raise NotImplementedError

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self.rows(split))

    def example(self, split: str, i: int) -> dict:
        r = self.rows(split)[i]
        return mc_conversation(self.name, r["question"], r["choices"], r["gold"],
                               **{k: v for k, v in r.items()
                                  if k not in ("question", "choices", "gold")})

    def evaluate(self, conv: dict, reply: str) -> bool:
        """Generative fallback: the reply's first letter-like token is the gold letter."""
        m = re.search(r"\b([A-J])\b", reply.strip())
        return m is not None and m.group(1) == conv["gold"]

    def max_new_tokens(self) -> int:
        return 4


# ---- MMLU ---------------------------------------------------------------------------------------

def mmlu_dir() -> str:
    """$LM_DATA_DIR/mmlu with dev/ and val/ CSVs (Hendrycks' layout); extracted from the canonical
    data.tar on first use."""
    root = sources.local("mmlu")
    if glob.glob(os.path.join(root, "val", "*_val.csv")):
        return root
    try:
        tar = sources.fetch("mmlu_archive")
    except sources.DataUnavailableError as e:
        raise TaskDataError(f"MMLU: no CSVs under {root}/dev and {root}/val ({e})") from None
    with tarfile.open(tar) as t:
        for m in t.getmembers():
            parts = m.name.split("/")
            if len(parts) >= 3 and parts[-2] in ("dev", "val", "test") and m.name.endswith(".csv"):
                m.name = "/".join(parts[-2:])
                t.extract(m, root)
    return root


def subject_of(path: str) -> str:
    return re.sub(r"_(dev|val|test)\.csv$", "", os.path.basename(path))


def read_mmlu(split_dir: str) -> list[dict]:
    rows = []
    for path in sorted(glob.glob(os.path.join(mmlu_dir(), split_dir, "*.csv"))):
        with open(path, encoding="utf-8", newline="") as f:
            for rec in csv.reader(f):
                if len(rec) != 6:
                    continue
                rows.append({"question": rec[0], "choices": rec[1:5], "gold": "ABCD".index(rec[5]),
                             "subject": subject_of(path)})
    if not rows:
        raise TaskDataError(f"MMLU: no rows in {mmlu_dir()}/{split_dir}")
    return rows


class MMLU(MultipleChoice):
    name = "mmlu"
    baseline = 0.25

    @cached_property
    def _rows(self) -> dict:
        return {"train": read_mmlu("dev"), "test": read_mmlu("val")}

    def rows(self, split: str) -> list[dict]:
        self._check_split(split)
        return self._rows[split]


# ---- ARC ------------------------------------------------------------------------------------------

def read_arc(name: str) -> list[dict]:
    try:
        path = sources.fetch(name)
    except sources.DataUnavailableError as e:
        raise TaskDataError(str(e)) from None
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                q = r["query"]
                q = q[len("Question: "):] if q.startswith("Question: ") else q
                rows.append({"question": q, "choices": r["choices"], "gold": int(r["gold"])})
    return rows


class ARC(MultipleChoice):
    baseline = 0.25

    def __init__(self, name: str = "arc_easy"):
        if name not in ("arc_easy", "arc_challenge"):
            raise ValueError(f"unknown ARC set {name!r}")
        self.name = name

    @cached_property
    def _test(self) -> list[dict]:
        return read_arc(f"{self.name}_test")

    def rows(self, split: str) -> list[dict]:
        self._check_split(split)
        return self._test if split == "test" else []


# ---- HellaSwag -----------------------------------------------------------------------------------

def read_hellaswag() -> list[dict]:
    """The 10,042 validation items: {'ctx', 'endings', 'gold', 'activity_label'} (the shared
    file's klosax preprocessing: `activity_label: ctx`, tags removed)."""
    try:
        path = sources.fetch("hellaswag_val")
    except sources.DataUnavailableError as e:
        raise TaskDataError(str(e)) from None
    with bz2.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    rows = []
    for i in range(0, len(lines) - 5, 6):
        head, gold, *endings = lines[i:i + 6]
        label, _, ctx = head.partition(": ")
        rows.append({"activity_label": label, "ctx": ctx, "endings": endings, "gold": int(gold)})
    return rows


class HellaSwag(MultipleChoice):
    name = "hellaswag"
    baseline = 0.25

    @cached_property
    def _test(self) -> list[dict]:
        return [{"question": f"Which ending is the most likely? {r['activity_label']}: {r['ctx']} ...",
                 "choices": r["endings"], "gold": r["gold"]} for r in read_hellaswag()]

    def rows(self, split: str) -> list[dict]:
        self._check_split(split)
        return self._test if split == "test" else []
