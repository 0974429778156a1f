"""Word problems from a compositional grammar (`word_problems`): 1-2 step problems in many
everyday shapes, where no single cue word gives the operation away.

A problem is a *schema* (what happens: a change, groups of equal size, a fair share, a
combination, a comparison, a fraction) realised with interchangeable parts: a statement
template, a question template, a question placed before or after the facts, people, things and
their containers or rates, numbers as digits or words ("six", "a dozen", "half"). The same words
serve several operations ("each" multiplies and divides; "gets" adds and multiplies; "left"
follows a subtraction and a division), so the operation has to be read from the structure.

Splits hold out *combinations*: every (schema, statement, question) triple belongs to exactly one
of `train`, `rl` and `test` by a stable hash, so a held-out problem is put together from parts
that training has seen, never in that combination. The reply names the quantities it takes from
the problem before each calculator call, then `#### N`.
"""
from __future__ import annotations

import random

from lm.conversation import conversation
from lm.tasks.arithmetic import NAMES
from lm.tasks.base import Generated, final_number, same_number, stable_hash
from lm.tools_calc import compute

WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight",
         9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
# (thing, its container or unit, plural of it): "each {unit} has {b} {thing}"
GROUPS = [("slices", "pizza", "pizzas"), ("wheels", "car", "cars"), ("legs", "spider", "spiders"),
          ("pages", "book", "books"), ("eggs", "carton", "cartons"), ("pencils", "box", "boxes"),
          ("apples", "bag", "bags"), ("students", "class", "classes"), ("seats", "row", "rows"),
          ("cookies", "tray", "trays"), ("flowers", "vase", "vases"), ("crayons", "pack", "packs"),
          ("cupcakes", "plate", "plates"), ("marbles", "jar", "jars"), ("socks", "drawer",
                                                                        "drawers"),
          ("windows", "house", "houses"), ("petals", "flower", "flowers"), ("stamps", "sheet",
                                                                            "sheets")]
THINGS = ["apples", "stickers", "marbles", "books", "cookies", "cards", "shells", "coins",
          "balloons", "stamps", "pencils", "toy cars", "beads", "tickets", "candies", "rocks",
          "eggs", "crayons", "buttons", "grapes", "dollars", "points", "photos", "pebbles"]
COLOURS = ["red", "blue", "green", "yellow", "white", "striped"]


def number(n: int, rng: random.Random) -> str:
    """A number as digits, or (sometimes, for small ones) as a word."""
    if n == 12 and rng.random() < 0.15:
        return "a dozen"
    if n in WORDS and rng.random() < 0.3:
        return WORDS[n]
    return str(n)


# Each schema: statements (templates with {A} {B} {a} {b} {it} {unit} {units}), questions,
# the calculation as (left, op, right) on the named numbers, and the reply's lead-in.
# Numbers: `a`, `b` are drawn by `draw(rng)` so every result is a whole number >= 0.
SCHEMAS = {
    "gain": dict(
        draw=lambda r: (r.randint(2, 20), r.randint(1, 20)),
        facts=["{A} has {a} {it}. {A} gets {b} more.",
               "{A} had {a} {it}, and then {B} gave {A_obj} {b} more.",
               "There were {a} {it} in the box. Someone put in another {b}.",
               "{A} collected {a} {it} on Monday and {b} more on Tuesday.",
               "{A} owns {a} {it} and buys {b} more at the shop.",
               "After finding {b} more {it}, {A} added them to the {a} {A_pos} already had."],
        questions=["How many {it} does {A} have now?", "How many {it} are there in all?",
                   "What is the total?", "How many {it} altogether?",
                   "How many does {A} end up with?"],
        calc=("a", "+", "b"), lead="{a} to start with and {b} more: "),
    "loss": dict(
        draw=lambda r: (lambda a: (a, r.randint(1, a - 1)))(r.randint(3, 30)),
        facts=["{A} has {a} {it}. {A} gives {b} of them to {B}.",
               "{A} had {a} {it} but lost {b}.",
               "There were {a} {it} on the table. {B} took {b} away.",
               "{A} bought {a} {it} and ate {b} of them.",
               "Out of {a} {it}, {b} were broken.",
               "{A} gets {a} {it} and then sells {b}."],
        questions=["How many {it} are left?", "How many does {A} have now?",
                   "How many {it} remain?", "How many {it} does {A} still have?",
                   "How many are there now?"],
        calc=("a", "-", "b"), lead="{a} minus the {b} that went: "),
    "groups": dict(
        draw=lambda r: (r.randint(2, 12), r.randint(2, 10)),
        facts=["Each {unit} has {b} {it}. There are {a} {units}.",
               "{A} has {a} {units}, and every {unit} holds {b} {it}.",
               "A {unit} comes with {b} {it}. {A} gets {a} {units}.",
               "{A} buys {a} {units} of {it} with {b} in each.",
               "There are {b} {it} in one {unit}, and {A} has {a} of them.",
               "{a} {units} with {b} {it} each are on the shelf."],
        questions=["How many {it} are there in total?", "How many {it} does {A} have?",
                   "How many {it} are in all the {units}?", "How many {it} in {a} {units}?",
                   "What is the number of {it} altogether?"],
        calc=("a", "*", "b"), lead="{a} {units} with {b} {it} each: "),
    "share": dict(
        draw=lambda r: (lambda b, k: (b * k, b))(r.randint(2, 8), r.randint(2, 10)),
        facts=["{A} has {a} {it} and shares them equally among {b} friends.",
               "{a} {it} are split evenly into {b} groups.",
               "{A} puts {a} {it} into {b} bags, the same number in each.",
               "There are {a} {it} for {b} children, and each child gets the same amount.",
               "{B} divides {a} {it} fairly between {b} people."],
        questions=["How many {it} does each one get?", "How many are in each group?",
                   "How many {it} does each friend get?", "How many {it} in each?",
                   "How many does every child get?"],
        calc=("a", "/", "b"), lead="{a} {it} shared by {b}: "),
    "combine": dict(
        draw=lambda r: (r.randint(2, 30), r.randint(2, 30)),
        facts=["{A} has {a} {it} and {B} has {b} {it}.",
               "There are {a} {c1} {it} and {b} {c2} {it} in a basket.",
               "{A} picked {a} {it} and {B} picked {b}.",
               "One shelf has {a} {it}; another shelf has {b}."],
        questions=["How many {it} do they have together?", "How many {it} are there in all?",
                   "How many {it} altogether?", "What is the total number of {it}?"],
        calc=("a", "+", "b"), lead="{a} and {b} together: "),
    "more_than": dict(
        draw=lambda r: (r.randint(2, 25), r.randint(1, 15)),
        facts=["{A} has {a} {it}. {B} has {b} more {it} than {A}.",
               "{A} has {a} {it}, and {B} has {b} more than that.",
               "{B} has {b} more {it} than {A}, who has {a}."],
        questions=["How many {it} does {B} have?", "How many does {B} have?"],
        calc=("a", "+", "b"), lead="{A_name} has {a} and {B_name} has {b} more: "),
    "fewer_than": dict(
        draw=lambda r: (lambda a: (a, r.randint(1, a - 1)))(r.randint(3, 30)),
        facts=["{A} has {a} {it}. {B} has {b} fewer {it} than {A}.",
               "{A} has {a} {it}, and {B} has {b} less than that.",
               "{B} has {b} fewer {it} than {A}, who has {a}."],
        questions=["How many {it} does {B} have?", "How many does {B} have?"],
        calc=("a", "-", "b"), lead="{A_name} has {a} and {B_name} has {b} fewer: "),
    "difference": dict(
        draw=lambda r: (lambda b: (b + r.randint(1, 20), b))(r.randint(1, 20)),
        facts=["{A} has {a} {it} and {B} has {b} {it}.",
               "{A} collected {a} {it}; {B} collected {b}."],
        questions=["How many more {it} does {A} have than {B}?",
                   "How many fewer {it} does {B} have than {A}?",
                   "What is the difference between their numbers of {it}?"],
        calc=("a", "-", "b"), lead="{a} compared with {b}: "),
    "half": dict(
        draw=lambda r: (2 * r.randint(2, 20), 2),
        facts=["{A} had {a} {it} and gave half of them to {B}.",
               "{A} has {a} {it} and loses half of them.",
               "Half of the {a} {it} were eaten."],
        questions=["How many {it} are left?", "How many does {A} have now?",
                   "How many {it} remain?"],
        calc=("a", "/", "b"), lead="half of {a}: "),
    "double": dict(
        draw=lambda r: (r.randint(2, 25), 2),
        facts=["{A} has {a} {it}. {B} has twice as many.",
               "{B} has double the number of {it} that {A} has, and {A} has {a}."],
        questions=["How many {it} does {B} have?", "How many does {B} have?"],
        calc=("a", "*", "b"), lead="twice {a}: "),
}
# two-step problems: a first schema, then a second operation on its result
SECOND = {
    "gain": ("then gets {c} more", "+", "and {c} more: "),
    "loss": ("then gives away {c}", "-", "minus {c}: "),
}


def _split_of(key: str) -> str:
    h = stable_hash(f"word_problems/{key}") % 5
    return "test" if h == 0 else "rl" if h == 1 else "train"


def combos(split: str) -> list[tuple[str, int, int]]:
    """The (schema, statement, question) triples of a split."""
    out = []
    for name, s in SCHEMAS.items():
        for f in range(len(s["facts"])):
            for q in range(len(s["questions"])):
                if _split_of(f"{name}/{f}/{q}") == split:
                    out.append((name, f, q))
    return out


def problem(split: str, rng: random.Random, two_step: bool) -> tuple[str, list[dict], str]:
    """(question, reply parts with calculator calls, final number)."""
    name, fi, qi = rng.choice(combos(split))
    s = SCHEMAS[name]
    a, b = s["draw"](rng)
    he = rng.choice(["He", "She"])
    A = rng.choice(NAMES[he])
    B = rng.choice([n for n in NAMES["He"] + NAMES["She"] if n != A])
    it, unit, units = rng.choice(GROUPS) if name in ("groups",) else (
        rng.choice(THINGS), "box", "boxes")
    c1, c2 = rng.sample(COLOURS, 2)
    slots = dict(A=A, B=B, A_name=A, B_name=B, A_obj="him" if he == "He" else "her",
                 A_pos="he" if he == "He" else "she", it=it, unit=unit, units=units, c1=c1,
                 c2=c2)
    facts = s["facts"][fi].format(a=number(a, rng), b=number(b, rng), **slots)
    question = s["questions"][qi].format(a=number(a, rng), b=number(b, rng), **slots)
    left, op, right = s["calc"]
    nums = {"a": a, "b": b}
    expr = f"{nums[left]} {op} {nums[right]}"
    result = compute(expr.replace(" ", ""))
    parts = [{"type": "text", "text": s["lead"].format(a=a, b=b, **slots)},
             {"type": "python", "text": expr.replace(" ", "")},
             {"type": "output", "text": result},
             {"type": "text", "text": f"{result}.\n"}]
    total = int(result)
    if two_step and name not in ("difference",):
        kind = rng.choice(sorted(SECOND))
        clause, op2, lead2 = SECOND[kind]
        c = rng.randint(1, 15) if op2 == "+" else rng.randint(1, max(1, total - 1))
        if op2 == "-" and total < 2:
            two_step = False
        else:
            who = B if name in ("more_than", "fewer_than", "double") else A
            facts += f" {who} {clause.format(c=number(c, rng))}."
            expr2 = f"{total}{op2}{c}"
            r2 = compute(expr2)
            parts += [{"type": "text", "text": f"{total} " + lead2.format(c=c)},
                      {"type": "python", "text": expr2}, {"type": "output", "text": r2},
                      {"type": "text", "text": f"{r2}.\n"}]
            total = int(r2)
    parts[-1]["text"] += f"#### {total}"
    # the question first and the facts after it, now and then
    text = f"{question} {facts}" if rng.random() < 0.25 else f"{facts} {question}"
    return text, parts, str(total)


class WordProblems(Generated):
    name = "word_problems"
    kind = "generative"
    splits = ("train", "rl", "test")

    def __init__(self, seed: int = 0, two_step: float = 0.35):
        self.seed, self.two_step = seed, two_step

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        text, parts, answer = problem(split, rng, rng.random() < self.two_step)
        return conversation(text, parts, task=self.name, answer=answer)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 128
