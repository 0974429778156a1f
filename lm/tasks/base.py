"""The Task interface: one object gives training conversations, held-out conversations, and the
grade of a reply (for evaluation and for RL rewards).

    task.size("train" | "test") -> int, or None for generated tasks (infinite, seeded)
    task.splits                  ("train", "test"), or more (arithmetic keeps an "rl" split)
    task.example(split, i) -> conversation dict (lm.conversation), deterministic in (split, i)
    task.evaluate(conv, reply) -> bool       reply: the assistant's text (`reply_text` form)
    task.reward(conv, reply) -> float        default: 1.0 if evaluate else 0.0

Generative tasks are graded on sampled text; categorical ones (multiple choice) by the logits of
the answer letters at the assistant's first position: their conversations carry `letters` (the
choices' letters, each one token) and `gold` (the right letter).
"""
from __future__ import annotations

import hashlib
import random
import re
from typing import Optional

import numpy as np

from lm.data import sources

SPLITS = ("train", "test")


class TaskDataError(RuntimeError):
    """A task's data file is missing or unreadable (the message says where to put it)."""


def read_text_file(name: str) -> str:
    """The text of a named data file (`lm.data.sources.FILES`, downloaded on first use); offline
    and absent, a TaskDataError that says where to put it."""
    try:
        with open(sources.fetch(name), encoding="utf-8-sig") as f:
            return f.read()
    except sources.DataUnavailableError as e:
        raise TaskDataError(str(e)) from None


class Task:
    name: str = "task"
    kind: str = "generative"          # 'generative' | 'categorical' | 'open' (training only)
    baseline: float = 0.0             # accuracy of random guessing (ChatCORE centring)
    splits: tuple = SPLITS

    def size(self, split: str) -> Optional[int]:
        raise NotImplementedError

    def example(self, split: str, i: int) -> dict:
        raise NotImplementedError

    def evaluate(self, conv: dict, reply: str) -> bool:
        raise NotImplementedError

    def reward(self, conv: dict, reply: str) -> float:
        return 1.0 if self.evaluate(conv, reply) else 0.0

    def max_new_tokens(self) -> int:
        """A reply budget that fits this task's reference answers."""
        return 128

    def _check_split(self, split: str) -> None:
        if split not in self.splits:
            raise ValueError(f"{self.name}: unknown split {split!r} (splits: {list(self.splits)})")


class Generated(Task):
    """A task generated from a seed: every split is infinite (`size` None) and item i of a split
    draws from its own PRNG (`rng`), so items do not depend on which others were drawn."""
    seed: int = 0

    def size(self, split: str):
        self._check_split(split)
        return None

    def rng(self, split: str, i: int, key: Optional[str] = None) -> random.Random:
        """Item i's PRNG; `key` (default the task's name) keeps a variant's items equal to the
        task's it derives from."""
        return random.Random(f"{key or self.name}/{self.seed}/{split}/{i}")


# ---- helpers shared by the tasks -------------------------------------------------------------------

_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> Optional[str]:
    """The number after the last '####' (GSM8K's answer marker), commas removed; None if absent."""
    if "####" not in text:
        return None
    m = _NUM.search(text.rsplit("####", 1)[1])
    if m is None:
        return None
    return m.group(0).replace(",", "")


_WORKED = re.compile(r"<<|\d\s*[-+*/×x]\s*\d+\s*=")


def shows_work(reply: str) -> bool:
    """Whether a reply (`reply_text` form) computes something before its final `####` answer:
    a calculator call (`<<expr=result>>`) or a written `a op b =` step."""
    return bool(_WORKED.search(reply.rsplit("####", 1)[0]))


def same_number(a: Optional[str], b: Optional[str]) -> bool:
    if a is None or b is None:
        return False
    try:
        return abs(float(a) - float(b)) < 1e-6
    except ValueError:
        return False


def has_word(reply: str, value: str) -> bool:
    """`value` in `reply` as a whole word, case aside (the recall graders)."""
    return re.search(rf"(?<![\w]){re.escape(value.lower())}(?![\w])", reply.lower()) is not None


def stable_hash(text: str) -> int:
    """A hash that is the same in every process (Python's `hash` of a str is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def test_indices(size: int, limit: int, seed: int = 0) -> list[int]:
    """A fixed spread of `limit` of `size` held-out items (a seeded permutation's first ones), so a
    small limit does not read one MMLU subject only."""
    if limit >= size:
        return list(range(size))
    return sorted(np.random.default_rng(seed).permutation(size)[:limit].tolist())


def held_out(key: str, every: int) -> bool:
    """Deterministic split of a fixed dataset: about 1 item in `every` goes to the test split."""
    return stable_hash(key) % every == 0


def calc_parts(text: str) -> list[dict]:
    """GSM8K-annotated text (`... 48/2 = <<48/2=24>>24 clips`) as conversation parts: each
    `<<expr=result>>` becomes a calculator call and its output."""
    parts: list[dict] = []
    pos = 0
    for m in re.finditer(r"<<([^<>=]*)=([^<>]*)>>", text):
        if m.start() > pos:
            parts.append({"type": "text", "text": text[pos:m.start()]})
        expr = m.group(1).strip()
        if expr:
            parts.append({"type": "python", "text": expr})
            parts.append({"type": "output", "text": m.group(2).strip()})
        pos = m.end()
    if pos < len(text):
        parts.append({"type": "text", "text": text[pos:]})
    return parts
