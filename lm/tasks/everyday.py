"""Everyday questions written by hand, in phrasings none of lm's generators make, for evaluation
only (`test` is their one split; no training data ever contains them): `everyday_math` (40 one-
and two-step word problems), `everyday_letters` (30 letter counts, common and tricky words),
`everyday_recall` (10 facts stated one turn earlier). They estimate what a user would see, next
to the held-out splits of the generators (lm/tasks/data/everyday.json).
"""
from __future__ import annotations

import json
import os
from functools import cached_property

from lm.conversation import conversation
from lm.tasks.base import Task, final_number, has_word, same_number

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "everyday.json")
LETTER_ASKS = ["How many {l}'s are in the word {w}?", "how many times does {l} appear in {w}",
               "Count the {l}s in {w}, please.", "How many letter {l} does {w} contain?",
               "{w} - how many {l}?"]


class Everyday(Task):
    kind = "generative"
    splits = ("test",)

    def __init__(self, part: str):
        self.part, self.name = part, f"everyday_{part}"

    @cached_property
    def items(self) -> list:
        with open(DATA, encoding="utf-8") as f:
            return json.load(f)[self.part]

    def size(self, split: str) -> int:
        self._check_split(split)
        return len(self.items)

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        item = self.items[i]
        if self.part == "math":
            return conversation(item[0], None, task=self.name, answer=item[1])
        if self.part == "letters":
            word, letter = item
            q = LETTER_ASKS[i % len(LETTER_ASKS)].format(w=word, l=letter)
            return conversation(q, None, task=self.name, answer=str(word.count(letter)),
                                word=word, letter=letter)
        (said, asked), value = item
        return {"messages": [{"role": "user", "content": said},
                             {"role": "assistant", "content": "Nice to know!"},
                             {"role": "user", "content": asked}],
                "task": self.name, "answer": value}

    def evaluate(self, conv: dict, reply: str) -> bool:
        if self.part == "recall":
            return has_word(reply, conv["answer"])
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 160
