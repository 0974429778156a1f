"""Models need tokens to think (issue 26): the same arithmetic in three reply formats, and mental
addition as the operands grow.

Formats (`FORMATS`), on identical problems:

    calculator     the steps with calculator calls, then `#### N` (the chain's format)
    reasoning      the same steps with every result written by the model itself, then `#### N`
    answer_first   `#### N` first, the steps after it: the answer must come before any thinking

Tasks: `arithmetic_easy_<format>` (arithmetic_easy's problems in that format; `calculator` is
arithmetic_easy itself), `mental_add_<format>` (adding two numbers of 1-4 digits; `reasoning`
adds column by column with the carries written out) for training, and `mental_d1` ... `mental_d4`
for evaluation (held-out phrasings, operands of exactly that many digits; one- and two-digit sums
are too few to hold out: most occur in training), with `mental_dN_seen_phrasings` the same sums
in training's phrasings. All are graded on the number after the last `####` — for `answer_first`
that is the first number of the reply, whatever the steps after it say.
"""
from __future__ import annotations

import random

from lm.conversation import conversation
from lm.tasks.arithmetic import Arithmetic
from lm.tasks.base import Generated, final_number, same_number

FORMATS = ("calculator", "reasoning", "answer_first")
ASK = {"train": ["What is {a} + {b}?", "Compute {a} + {b}.", "Add {a} and {b}.",
                 "{a} plus {b} equals what?", "Calculate the sum of {a} and {b}."],
       "test": ["How much is {a} + {b}?", "Work out {a} + {b}, please.",
                "What do you get when you add {a} to {b}?"]}


def reformat(parts: list[dict], fmt: str, answer: str) -> list[dict] | str:
    """A calculator-format reply (chat parts ending in `#### N`) in format `fmt`."""
    if fmt == "calculator":
        return parts
    if fmt not in FORMATS:
        raise ValueError(f"unknown reply format {fmt!r}; known: {list(FORMATS)}")
    text = "".join(p["text"] for p in parts if p["type"] == "text")   # results typed, no tool
    if fmt == "reasoning":
        return text
    steps = text.rsplit("####", 1)[0].strip()
    return f"#### {answer}\n{steps}"


def column_addition(a: int, b: int) -> str:
    """Adding column by column, carries written out: the tokens a small model needs."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, lines, digits = 0, [], []
    for k in range(max(len(da), len(db))):
        x = int(da[k]) if k < len(da) else 0
        y = int(db[k]) if k < len(db) else 0
        s = x + y + carry
        lines.append(f"{x} + {y}" + (f" + {carry}" if carry else "") + f" = {s}")
        carry, d = divmod(s, 10)
        digits.append(str(d))
    if carry:
        digits.append(str(carry))
    total = "".join(reversed(digits)).lstrip("0") or "0"
    return "; ".join(lines) + f"; so {a} + {b} = {total}."


class ArithmeticFormat(Arithmetic):
    """arithmetic_easy's problems with the reply in another format."""

    def __init__(self, fmt: str, level: str = "arithmetic_easy", seed: int = 0):
        super().__init__(level, seed)
        if fmt not in FORMATS:
            raise ValueError(f"unknown reply format {fmt!r}; known: {list(FORMATS)}")
        self.fmt, self.level = fmt, level
        self.name = f"{level}_{fmt}"

    def rng(self, split: str, i: int, key=None) -> random.Random:
        return super().rng(split, i, key or self.level)       # the same problems as the level's

    def example(self, split: str, i: int) -> dict:
        conv = super().example(split, i)
        msgs = conv["messages"][:-1] + [{"role": "assistant", "content": reformat(
            conv["messages"][-1]["content"], self.fmt, conv["answer"])}]
        return dict(conv, messages=msgs)


class MentalAdd(Generated):
    """a + b, each operand of `digits` digits (None: 1-4, drawn per item), in format `fmt`.
    `asked_as="train"`: every split asked in training's phrasings (the `_seen_phrasings`
    evaluations: the same sums as `mental_dN`'s, so a format's arithmetic is measured apart from
    whether the model recognises a held-out wording as a sum)."""
    kind = "generative"

    def __init__(self, name: str, fmt: str = "calculator", digits: int | None = None,
                 seed: int = 0, asked_as: str | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown reply format {fmt!r}; known: {list(FORMATS)}")
        if asked_as not in (None, *ASK):
            raise ValueError(f"unknown phrasings {asked_as!r}; known: {list(ASK)}")
        self.name, self.fmt, self.digits, self.seed = name, fmt, digits, seed
        self.asked_as = asked_as

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = random.Random(f"mental_add/{self.seed}/{split}/{i}/{self.digits}")
        d = self.digits or rng.randint(1, 4)
        lo = 0 if d == 1 else 10 ** (d - 1)
        a, b = rng.randint(lo, 10 ** d - 1), rng.randint(lo, 10 ** d - 1)
        s = a + b
        q = rng.choice(ASK[self.asked_as or split]).format(a=a, b=b)
        if self.fmt == "calculator":
            reply = [{"type": "text", "text": f"{a} + {b} = "}, {"type": "python",
                      "text": f"{a}+{b}"}, {"type": "output", "text": str(s)},
                     {"type": "text", "text": f"{s}.\n#### {s}"}]
        elif self.fmt == "reasoning":
            reply = f"{column_addition(a, b)}\n#### {s}"
        else:
            reply = f"#### {s}\n{column_addition(a, b)}"
        return conversation(q, reply, task=self.name, answer=str(s), digits=d)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 120
