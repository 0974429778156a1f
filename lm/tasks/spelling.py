"""Spelling and counting ("How many r are in strawberry?"): the reply spells the word letter by
letter, then counts with the calculator (`' strawberry'.count('r')`) and ends with `#### N`.

Words come from the TinyStories training text (lower-case words of 3–14 letters seen at least
twice); about one word in five, chosen by a stable hash, belongs to the `test` split only, so
held-out accuracy is on words training never spelled. Infinite and seeded.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from functools import cached_property

from lm.conversation import conversation
from lm.data import sources
from lm.tasks.base import Task, TaskDataError, final_number, held_out, same_number

# the word always follows a space, so its tokens in the question are the ones the reply copies
# into the calculator call (`' strawberry'.count('r')`)
QUESTIONS = [
    "How many {l} are in {w}?",
    "How many times does the letter {l} appear in the word {w}?",
    "Count the letter {l} in the word {w}.",
    "How many {l}'s does the word {w} have?",
    "In the word {w}, how many times do you see the letter {l}?",
    "Can you tell me how many '{l}' there are in {w}?",
    "how many {l} in {w}",
    "What is the number of {l}'s in the word {w}?",
]
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def words_from_text(text: str, min_count: int = 2) -> list[str]:
    counts = Counter(re.findall(r"\b[a-z]{3,14}\b", text))
    return sorted(w for w, n in counts.items() if n >= min_count)


def answer_parts(word: str, letter: str) -> tuple[list[dict], str]:
    n = str(word.count(letter))
    expr = f"' {word}'.count('{letter}')"          # the space keeps the word's own tokens
    return [
        {"type": "text", "text": f"Let me spell it: {'-'.join(word)}.\n"
                                 f"Now I count the letter {letter} with the calculator: "},
        {"type": "python", "text": expr},
        {"type": "output", "text": n},
        {"type": "text", "text": f"\nThere {'is' if n == '1' else 'are'} {n} {letter}'s in "
                                 f"the word {word}.\n#### {n}"},
    ], n


class Spelling(Task):
    name = "spelling"
    kind = "generative"

    def __init__(self, seed: int = 0, words: list[str] | None = None):
        self.seed = seed
        self._given = words

    @cached_property
    def words(self) -> dict[str, list[str]]:
        words = self._given
        if words is None:
            try:
                with open(sources.fetch("tinystories_train"), encoding="utf-8") as f:
                    words = words_from_text(f.read().lower())
            except sources.DataUnavailableError as e:
                raise TaskDataError(str(e)) from None
        test = [w for w in words if held_out(w, 5)]
        train = [w for w in words if not held_out(w, 5)]
        return {"train": train, "test": test}

    def size(self, split: str):
        self._check_split(split)
        return None

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = random.Random(f"spelling/{self.seed}/{split}/{i}")
        word = rng.choice(self.words[split])
        present = sorted(set(word))
        letter = rng.choice(present) if rng.random() < 0.85 else rng.choice(
            [c for c in LETTERS if c not in word])
        parts, n = answer_parts(word, letter)
        q = rng.choice(QUESTIONS).format(l=letter, w=word)
        return conversation(q, parts, task=self.name, answer=n, word=word, letter=letter)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 128
