"""Arithmetic word problems generated from templates ("Emily buys 3 apples and 2 oranges..."),
answered step by step with calculator calls and a final `#### N`.

Difficulty: `steps` (operations per problem) and `max_number` (size of the numbers). Registered
levels: `arithmetic_easy` (1–2 steps, numbers up to 20), `arithmetic` (1–3 steps, up to 100),
`arithmetic_hard` (2–3 steps, up to 1000). Infinite and seeded: example i of a split is always the
same problem. The `test` split uses templates (sentence frames) that the `train` split never
shows, not just new numbers, so held-out accuracy measures reading, not recall.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from lm.conversation import conversation
from lm.tasks.base import Task, final_number, same_number
from lm.tools_calc import calculate

NAMES = {"She": ["Emily", "Ava", "Mia", "Zoe", "Sara", "Nina", "Lily", "Maya", "Ella", "Ruby",
                 "Anna", "Ivy", "Rosa", "Grace", "Hana"],
         "He": ["Liam", "Noah", "Lucas", "Omar", "Ben", "Tom", "Jack", "Leo", "Sam", "Max", "Kai",
                "Dan", "Ali", "Finn", "Luis"]}
ITEMS = ["apples", "oranges", "pencils", "stickers", "marbles", "books", "cookies", "cards",
         "shells", "coins", "balloons", "stamps", "eggs", "flowers", "toy cars", "crayons",
         "buttons", "candies", "bottles", "plates", "socks", "rocks", "beads", "tickets"]
BOXES = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"),
         ("drawer", "drawers"), ("bucket", "buckets"), ("crate", "crates"), ("tin", "tins")]


@dataclass(frozen=True)
class Template:
    """A problem frame: `ops` names the operations in order (the step count), `question` and
    `steps` are format strings over the numbers a, b, c, d, the names and the items; each step
    is (text before, expression, text after). Results r1, r2, ... are available to later steps."""
    ops: tuple[str, ...]
    question: str
    steps: tuple[tuple[str, str, str], ...]


def T(ops: str, question: str, *steps) -> Template:
    return Template(tuple(ops.split()), question, tuple(steps))


# Templates the train split uses ...
TRAIN = [
    T("add", "{n1} has {a} {it}. {He} buys {b} more {it}. How many {it} does {n1} have now?",
      ("{n1} has {a} + {b} = ", "{a}+{b}", " {it} now.")),
    T("add", "{n1} picked {a} {it} in the morning and {b} {it} in the afternoon. How many {it} did {n1} pick in all?",
      ("{n1} picked {a} + {b} = ", "{a}+{b}", " {it} in all.")),
    T("add", "There are {a} {it} on the table and {b} {it} on the shelf. How many {it} are there altogether?",
      ("Altogether there are {a} + {b} = ", "{a}+{b}", " {it}.")),
    T("sub", "{n1} had {a} {it}. {He} gave {b} of them to {n2}. How many {it} does {n1} have left?",
      ("{n1} has {a} - {b} = ", "{a}-{b}", " {it} left.")),
    T("sub", "A {box} holds {a} {it}. {n1} takes out {b} {it}. How many {it} are still in the {box}?",
      ("The {box} still holds {a} - {b} = ", "{a}-{b}", " {it}.")),
    T("sub", "{n1} has {a} {it} and {n2} has {b} {it}. How many more {it} does {n1} have than {n2}?",
      ("{n1} has {a} - {b} = ", "{a}-{b}", " more {it}.")),
    T("mul", "{n1} has {a} {boxes} with {b} {it} in each {box}. How many {it} does {n1} have?",
      ("{n1} has {a} * {b} = ", "{a}*{b}", " {it}.")),
    T("mul", "Each of {a} children brings {b} {it} to school. How many {it} do they bring in total?",
      ("They bring {a} * {b} = ", "{a}*{b}", " {it} in total.")),
    T("div", "{n1} shares {a} {it} equally among {b} friends. How many {it} does each friend get?",
      ("Each friend gets {a} / {b} = ", "{a}/{b}", " {it}.")),
    T("div", "{a} {it} are packed into {boxes} of {b}. How many {boxes} are needed?",
      ("That makes {a} / {b} = ", "{a}/{b}", " {boxes}.")),
    T("add add", "{n1} has {a} {it}. {He} finds {b} more and then gets {c} from {n2}. How many {it} does {n1} have now?",
      ("First, {a} + {b} = ", "{a}+{b}", " {it}."), (" Then {r1} + {c} = ", "{r1}+{c}", " {it} now.")),
    T("add sub", "{n1} had {a} {it}. {He} bought {b} more and then lost {c}. How many {it} does {n1} have now?",
      ("After buying, {n1} has {a} + {b} = ", "{a}+{b}", " {it}."), (" After losing some, {r1} - {c} = ", "{r1}-{c}", " {it}.")),
    T("sub add", "A {box} had {a} {it}. {n1} took {b} out and {n2} put {c} in. How many {it} are in the {box} now?",
      ("After {n1}, there are {a} - {b} = ", "{a}-{b}", " {it}."), (" After {n2}, there are {r1} + {c} = ", "{r1}+{c}", " {it}.")),
    T("mul add", "{n1} buys {a} packs of {it} with {b} in each pack, and {c} loose {it}. How many {it} does {n1} buy?",
      ("The packs hold {a} * {b} = ", "{a}*{b}", " {it}."), (" With the loose ones, {r1} + {c} = ", "{r1}+{c}", " {it}.")),
    T("mul sub", "{n1} has {a} rows of {b} {it}. {He} gives away {c} {it}. How many {it} are left?",
      ("The rows hold {a} * {b} = ", "{a}*{b}", " {it}."), (" After giving some away, {r1} - {c} = ", "{r1}-{c}", " {it} are left.")),
    T("add mul", "{n1} has {a} red {it} and {b} blue {it}. {n2} has {c} times as many. How many {it} does {n2} have?",
      ("{n1} has {a} + {b} = ", "{a}+{b}", " {it}."), (" {n2} has {r1} * {c} = ", "{r1}*{c}", " {it}.")),
    T("sub sub", "{n1} had {a} {it}. {He} gave {b} to {n2} and {c} to {n3}. How many {it} does {n1} have left?",
      ("After giving {n2} some, {a} - {b} = ", "{a}-{b}", " {it}."), (" After giving {n3} some, {r1} - {c} = ", "{r1}-{c}", " {it} are left.")),
    T("div add", "{n1} splits {a} {it} into {b} equal piles and adds {c} {it} to one pile. How many {it} are in that pile?",
      ("Each pile has {a} / {b} = ", "{a}/{b}", " {it}."), (" That pile now has {r1} + {c} = ", "{r1}+{c}", " {it}.")),
    T("add add add", "{n1} collects {a} {it} on Monday, {b} on Tuesday, {c} on Wednesday and {d} on Thursday. How many {it} does {n1} collect?",
      ("Monday and Tuesday: {a} + {b} = ", "{a}+{b}", "."), (" With Wednesday: {r1} + {c} = ", "{r1}+{c}", "."), (" With Thursday: {r2} + {d} = ", "{r2}+{d}", " {it}.")),
    T("mul add sub", "{n1} buys {a} bags with {b} {it} each, gets {c} more from {n2}, then eats {d}. How many {it} are left?",
      ("The bags hold {a} * {b} = ", "{a}*{b}", " {it}."), (" With {n2}'s, {r1} + {c} = ", "{r1}+{c}", "."), (" After eating, {r2} - {d} = ", "{r2}-{d}", " {it} are left.")),
    T("add sub sub", "A class has {a} {it}. The teacher brings {b} more. The students use {c} in the morning and {d} in the afternoon. How many {it} are left?",
      ("With the new ones, {a} + {b} = ", "{a}+{b}", " {it}."), (" After the morning, {r1} - {c} = ", "{r1}-{c}", "."), (" After the afternoon, {r2} - {d} = ", "{r2}-{d}", " {it} are left.")),
    T("add mul sub", "{n1} has {a} {it} and gets {b} more. Then the collection grows to {c} times its size, and {n1} gives away {d}. How many {it} are left?",
      ("First, {a} + {b} = ", "{a}+{b}", " {it}."), (" Then {r1} * {c} = ", "{r1}*{c}", "."), (" After giving some away, {r2} - {d} = ", "{r2}-{d}", " {it} are left.")),
]

# ... and templates only the test split uses (new sentence frames for the same operations).
TEST = [
    T("add", "In a {box} there are {a} {it}. {n1} puts {b} more {it} into it. What is the total number of {it} in the {box}?",
      ("The {box} holds {a} + {b} = ", "{a}+{b}", " {it}.")),
    T("sub", "{n1} starts the day with {a} {it} and loses {b} of them on the way home. How many {it} are left at the end of the day?",
      ("{n1} is left with {a} - {b} = ", "{a}-{b}", " {it}.")),
    T("mul", "A shop sells {it} in packs of {b}. {n1} buys {a} packs. How many {it} is that?",
      ("That is {a} * {b} = ", "{a}*{b}", " {it}.")),
    T("div", "There are {a} {it} to hand out and {b} kids want the same number each. How many does every kid receive?",
      ("Every kid receives {a} / {b} = ", "{a}/{b}", " {it}.")),
    T("add sub", "On a shelf sit {a} {it}. Someone adds {b} {it}, then {n1} removes {c}. How many {it} sit on the shelf in the end?",
      ("After adding, {a} + {b} = ", "{a}+{b}", " {it}."), (" After {n1} removes some, {r1} - {c} = ", "{r1}-{c}", " {it}.")),
    T("mul add", "{n1} fills {a} {boxes} with {b} {it} apiece and keeps {c} extra {it} aside. How many {it} are there in total?",
      ("The {boxes} hold {a} * {b} = ", "{a}*{b}", " {it}."), (" With the extra ones, {r1} + {c} = ", "{r1}+{c}", " {it}.")),
    T("sub sub", "A baker made {a} {it}. {b} were sold before noon and {c} after noon. How many {it} did the baker not sell?",
      ("Before noon, {a} - {b} = ", "{a}-{b}", " were left."), (" After noon, {r1} - {c} = ", "{r1}-{c}", " {it} were not sold.")),
    T("add add", "{n1} reads {a} pages on Saturday, {b} pages on Sunday and {c} pages on Monday. How many pages does {n1} read over the three days?",
      ("Saturday and Sunday: {a} + {b} = ", "{a}+{b}", " pages."), (" With Monday, {r1} + {c} = ", "{r1}+{c}", " pages.")),
    T("mul sub", "{n1} plants {a} rows with {b} {it} in every row, but {c} of them do not grow. How many {it} grow?",
      ("{n1} plants {a} * {b} = ", "{a}*{b}", " {it}."), (" Of those, {r1} - {c} = ", "{r1}-{c}", " grow.")),
    T("add add add", "Four friends bring {it} to a party: {n1} brings {a}, {n2} brings {b}, {n3} brings {c} and {n4} brings {d}. How many {it} are at the party?",
      ("{n1} and {n2}: {a} + {b} = ", "{a}+{b}", "."), (" With {n3}: {r1} + {c} = ", "{r1}+{c}", "."), (" With {n4}: {r2} + {d} = ", "{r2}+{d}", " {it}.")),
]

LEVELS = {  # name: (allowed step counts, largest number)
    "arithmetic_easy": ((1, 2), 20),
    "arithmetic": ((1, 2, 3), 100),
    "arithmetic_hard": ((2, 3), 1000),
}


def _numbers(ops: tuple[str, ...], rng: random.Random, top: int) -> dict:
    """Numbers for the operations, so that every intermediate result is a whole number >= 0."""
    small = max(2, min(12, top // 2))
    for _ in range(1000):
        vals = {"a": rng.randint(2, top)}
        acc = vals["a"]
        for k, op in enumerate(ops):
            name = "bcd"[k]
            if op == "add":
                v = rng.randint(1, top)
                acc += v
            elif op == "sub":
                if acc < 2:
                    break
                v = rng.randint(1, acc - 1)
                acc -= v
            elif op == "mul":
                if k == 0:          # a x b: keep one factor small
                    vals["a"] = rng.randint(2, small)
                    acc = vals["a"]
                v = rng.randint(2, small)
                acc *= v
            else:                    # div: a is a multiple of b
                v = rng.randint(2, small)
                if k == 0:
                    q = rng.randint(1, max(1, top // v))
                    vals["a"] = q * v
                    acc = q
                else:
                    if acc % v:
                        break
                    acc //= v
            vals[name] = v
        else:
            return vals
    raise RuntimeError(f"could not draw numbers for {ops}")


def problem(t: Template, rng: random.Random, top: int) -> tuple[str, list[dict], str]:
    """(question, answer parts with calculator calls, final number) for template `t`."""
    vals = _numbers(t.ops, rng, top)
    he = rng.choice(["He", "She"])
    names = rng.sample(NAMES[he], 1) + rng.sample(NAMES["He"] + NAMES["She"], 4)
    names = [names[0]] + [n for n in names[1:] if n != names[0]][:3]
    slots = dict(vals, n1=names[0], n2=names[1], n3=names[2], n4=names[3], He=he,
                 it=rng.choice(ITEMS))
    slots["box"], slots["boxes"] = rng.choice(BOXES)
    parts: list[dict] = []
    result = ""
    for k, (before, expr, after) in enumerate(t.steps):
        e = expr.format(**slots)
        result = calculate(e)
        slots[f"r{k + 1}"] = result
        parts.append({"type": "text", "text": before.format(**slots)})
        parts.append({"type": "python", "text": e})
        parts.append({"type": "output", "text": result})
        parts.append({"type": "text", "text": result + after.format(**slots)})
    parts[-1]["text"] += f"\n#### {result}"
    # merge adjacent text parts
    merged: list[dict] = []
    for p in parts:
        if merged and p["type"] == "text" and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + p["text"]}
        else:
            merged.append(p)
    return t.question.format(**slots), merged, result


class Arithmetic(Task):
    kind = "generative"

    def __init__(self, name: str = "arithmetic_easy", seed: int = 0):
        if name not in LEVELS:
            raise ValueError(f"unknown arithmetic level {name!r}; known: {sorted(LEVELS)}")
        self.name, self.seed = name, seed
        steps, self.top = LEVELS[name]
        self.templates = {split: [t for t in pool if len(t.ops) in steps]
                          for split, pool in (("train", TRAIN), ("test", TEST))}

    def size(self, split: str):
        self._check_split(split)
        return None

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = random.Random(f"{self.name}/{self.seed}/{split}/{i}")
        t = rng.choice(self.templates[split])
        question, parts, result = problem(t, rng, self.top)
        return conversation(question, parts, task=self.name, answer=result)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 160
