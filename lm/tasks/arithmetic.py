"""Arithmetic word problems generated from templates ("Emily buys 3 apples and 2 oranges..."),
answered step by step with calculator calls and a final `#### N`.

Difficulty: `steps` (operations per problem) and `max_number` (size of the numbers). Registered
levels: `arithmetic_easy` (1–2 steps, numbers up to 20), `arithmetic` (1–3 steps, up to 100),
`arithmetic_hard` (2–3 steps, up to 1000). Infinite and seeded: example i of a split is always the
same problem. The `test` split uses templates that the `train` split never shows, not just new
numbers: its opening sentences (the starting amount, the multiplication set-up) and its questions
are phrasings of its own, so no held-out problem reads like a training one. A third split, `rl`,
has phrasings of its own too: RL practises on problems that read like neither SFT's nor the
held-out ones, so a held-out gain after RL is a gain on unseen frames. The sentences that
carry each operation ("gives 3 to Ben", "receives 4 additional") are shared, as the meaning of a
verb never seen with a number is not something these problems can teach.
"""
from __future__ import annotations

import random
from lm.conversation import conversation
from lm.tasks.base import Generated, final_number, same_number
from lm.tools_calc import compute

NAMES = {"She": ["Emily", "Ava", "Mia", "Zoe", "Sara", "Nina", "Lily", "Maya", "Ella", "Ruby",
                 "Anna", "Ivy", "Rosa", "Grace", "Hana"],
         "He": ["Liam", "Noah", "Lucas", "Omar", "Ben", "Tom", "Jack", "Leo", "Sam", "Max", "Kai",
                "Dan", "Ali", "Finn", "Luis"]}
ITEMS = ["apples", "oranges", "pencils", "stickers", "marbles", "books", "cookies", "cards",
         "shells", "coins", "balloons", "stamps", "eggs", "flowers", "toy cars", "crayons",
         "buttons", "candies", "bottles", "plates", "socks", "rocks", "beads", "tickets"]
BOXES = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"),
         ("drawer", "drawers"), ("bucket", "buckets"), ("crate", "crates"), ("tin", "tins")]


# A problem is a start clause, one event clause per operation after the first, and a question.
# Start and question clauses have phrasings of their own in each split (train, rl, test); event
# clauses (one pool for all) say which operation it is. {x} is its number.
START = {
    "train": ["{n1} has {a} {it}.", "{n1} owns {a} {it}.", "{n1} starts with {a} {it}.",
              "There are {a} {it} in {n1}'s {box}.", "{n1} collected {a} {it}.",
              "{n1} had {a} {it} this morning.", "A {box} holds {a} {it}.",
              "{n1} keeps {a} {it} in a {box}.", "{n1} was given {a} {it}."],
    "test": ["In {n1}'s room there are {a} {it}.", "{n1} counts {a} {it} on the table.",
             "At first, {n1} has exactly {a} {it}.", "{n1}'s {box} is filled with {a} {it}."],
    "rl": ["{n1} is holding {a} {it}.", "{n1} brought {a} {it} to school.",
           "{n1} got {a} {it} as a birthday present.", "Inside a {box} lie {a} {it}.",
           "{n1} bought {a} {it} at the market.", "{n1} received {a} {it} from a neighbour.",
           "{n1} saved {a} {it} over the summer.", "There were {a} {it} on {n1}'s desk.",
           "{n1} won {a} {it} at the fair.", "{n1}'s shelf has {a} {it} on it.",
           "{n1} picked {a} {it} from the garden.", "{n1} found {a} {it} in the attic."],
}
_ADD = [
    "{He} buys {x} more.",
    "{He} finds {x} more {it}.",
    "{n2} gives {him} {x} more.",
    "{He} gets {x} more from {n2}.",
    "{He} picks up {x} more.",
    "{x} more {it} are added.",
    "{He} wins {x} more {it}.",
    "{n2} brings {x} more {it}.",
    "{He} makes {x} more.",
    "{n2} hands {him} another {x}.",
    "{He} adds {x} extra {it} to the pile.",
    "{He} receives {x} additional {it}.",
    "{x} new {it} arrive.",
]
ADD = {"train": _ADD, "rl": _ADD, "test": _ADD}
_SUB = [
    "{He} gives {x} to {n2}.",
    "{He} loses {x} of them.",
    "{He} eats {x} of them.",
    "{He} sells {x}.",
    "{x} of them break.",
    "{He} throws away {x}.",
    "{n2} takes {x} of them.",
    "{He} uses {x} of them.",
    "{He} gives away {x}.",
    "{x} of the {it} go missing.",
    "{He} donates {x} to a friend.",
    "{n2} borrows {x} and keeps them.",
    "{He} drops {x} on the way home.",
]
SUB = {"train": _SUB, "rl": _SUB, "test": _SUB}
MUL_START = {
    "train": ["{n1} has {a} {boxes} with {b} {it} in each.",
              "There are {a} {boxes}, and each one holds {b} {it}.",
              "{n1} buys {a} packs of {it} with {b} in every pack.",
              "{n1} makes {a} rows of {it} with {b} in each row.",
              "Each of {a} children has {b} {it}."],
    "test": ["{n1} stacks {a} piles of {it}, {b} in every pile.",
             "{a} bags sit on a shelf, each with {b} {it} inside."],
    "rl": ["{n1} fills {a} {boxes}, putting {b} {it} into each.",
           "{a} shelves carry {b} {it} apiece.",
           "{n1} sets out {a} trays with {b} {it} on each.",
           "{n1} orders {a} {boxes} of {it}, and every one contains {b}.",
           "There are {a} tables with {b} {it} on each table.",
           "{a} friends each bring {b} {it}."],
}
_DIV = [
    "{He} shares them equally among {x} friends.",
    "{He} splits them into {x} equal groups.",
    "{He} puts them into {x} {boxes} with the same number in each.",
    "{He} hands them out evenly to {x} classmates.",
    "{He} divides them fairly between {x} kids.",
]
DIV = {"train": _DIV, "rl": _DIV, "test": _DIV}
ASK_NOW = {   # after adding or multiplying (or a mixed sequence ending with an addition)
    "train": ["How many {it} does {n1} have now?", "How many {it} are there now?",
              "How many {it} are there in total?", "How many {it} does {n1} have in the end?",
              "What is the number of {it} now?"],
    "test": ["What is the total number of {it} at the end?",
             "Count the {it}: how many are there altogether?"],
    "rl": ["How many {it} does {n1} own at this point?", "So how many {it} is that?",
           "How many {it} does {n1} end up with?", "What is {n1}'s count of {it} now?",
           "Find the number of {it} {n1} has."],
}
ASK_LEFT = {  # after taking some away
    "train": ["How many {it} are left?", "How many {it} does {n1} have left?",
              "How many {it} are still there?", "How many {it} remain?"],
    "test": ["How many {it} remain after all that?", "What number of {it} is left over?"],
    "rl": ["How many {it} does {n1} still hold?", "How many {it} are there afterwards?",
           "How many {it} does {n1} keep in the end?", "How many {it} has {n1} got after that?"],
}
ASK_EACH = {
    "train": ["How many {it} does each one get?", "How many {it} are in each group?"],
    "test": ["How many {it} end up in every share?"],
    "rl": ["How many {it} go to each of them?", "How many {it} are in one group?"],
}
THEN = ["Then", "After that", "Later", "Next"]
OPS = {"add": ("+", "Adding the new ones: "), "sub": ("-", "Taking away: "),
       "mul": ("*", "Multiplying: "), "div": ("/", "Sharing: ")}
# operation sequences by step count (a 'mul' only starts a problem, a 'div' only ends one)
SEQUENCES = {1: [("add",), ("sub",), ("mul",), ("div",)],
             2: [("add", "add"), ("add", "sub"), ("sub", "add"), ("sub", "sub"), ("mul", "add"),
                 ("mul", "sub"), ("add", "div")],
             3: [("add", "add", "sub"), ("mul", "add", "sub"), ("add", "sub", "add"),
                 ("sub", "add", "add"), ("mul", "sub", "add"), ("add", "add", "div")],
             4: [("add", "sub", "add", "sub"), ("mul", "add", "sub", "add"),
                 ("sub", "add", "add", "sub"), ("mul", "sub", "add", "div"),
                 ("add", "add", "sub", "div"), ("sub", "sub", "add", "add")]}

LEVELS = {  # name: (allowed step counts, largest number)
    "arithmetic_easy": ((1, 2), 20),
    "arithmetic": ((1, 2, 3), 100),
    "arithmetic_hard": ((2, 3), 1000),
    "arithmetic_think": ((2, 3, 4), 50),   # ArithmeticThink: mostly direct answers in training
}


def _numbers(ops: tuple[str, ...], rng: random.Random, top: int) -> list[int]:
    """[a, x1, x2, ...] such that every intermediate result is a whole number >= 0."""
    small = max(2, min(12, top // 2))
    for _ in range(1000):
        if ops[0] == "mul":
            vals = [rng.randint(2, small), rng.randint(2, small)]
            acc, rest = vals[0] * vals[1], ops[1:]
        elif ops[0] == "div":
            vals, rest, acc = [rng.randint(2, top)], ops, None
            acc = vals[0]
        else:
            vals, rest = [rng.randint(2, top)], ops
            acc = vals[0]
        ok = True
        for op in rest:
            if op == "add":
                v = rng.randint(1, top)
                acc += v
            elif op == "sub":
                if acc < 2:
                    ok = False
                    break
                v = rng.randint(1, acc - 1)
                acc -= v
            else:                                   # div: exact
                divisors = [d for d in range(2, min(small, acc) + 1) if acc % d == 0]
                if not divisors:
                    ok = False
                    break
                v = rng.choice(divisors)
                acc //= v
            vals.append(v)
        if ok:
            return vals
    raise RuntimeError(f"could not draw numbers for {ops}")


def problem(ops: tuple[str, ...], split: str, rng: random.Random, top: int
            ) -> tuple[str, list[dict], str]:
    """(question, answer parts with calculator calls, final number)."""
    vals = _numbers(ops, rng, top)
    he = rng.choice(["He", "She"])
    n1 = rng.choice(NAMES[he])
    others = [n for n in NAMES["He"] + NAMES["She"] if n != n1]
    slots = dict(n1=n1, n2=rng.choice(others), He=he, him="him" if he == "He" else "her",
                 it=rng.choice(ITEMS))
    slots["box"], slots["boxes"] = rng.choice(BOXES)
    pick = lambda pool: rng.choice(pool[split])
    sentences = []
    if ops[0] == "mul":
        sentences.append(pick(MUL_START).format(a=vals[0], b=vals[1], **slots))
        first, rest, nums = vals[0], ops[1:], vals[2:]
        steps = [("mul", vals[0], vals[1])]
    else:
        sentences.append(pick(START).format(a=vals[0], **slots))
        first, rest, nums, steps = vals[0], ops, vals[1:], []
    for k, (op, x) in enumerate(zip(rest, nums)):
        pool = {"add": ADD, "sub": SUB, "div": DIV}[op]
        clause = pick(pool).format(x=x, **slots)
        if k or ops[0] == "mul" or len(rest) > 1:
            clause = rng.choice(THEN) + ", " + clause[0].lower() + clause[1:] \
                if not clause.startswith(tuple(NAMES["He"] + NAMES["She"])) else \
                rng.choice(THEN) + ", " + clause
        sentences.append(clause)
        steps.append((op, None, x))
    ask = {"div": ASK_EACH, "sub": ASK_LEFT}.get(ops[-1], ASK_NOW)
    sentences.append(pick(ask).format(**slots))
    parts: list[dict] = []
    acc = first
    for op, left, right in steps:
        left = acc if left is None else left
        sym, lead = OPS[op]
        expr = f"{left}{sym}{right}"
        result = compute(expr)
        parts.append({"type": "text", "text": f"{lead}{left} {sym} {right} = "})
        parts.append({"type": "python", "text": expr})
        parts.append({"type": "output", "text": result})
        parts.append({"type": "text", "text": f"{result} {slots['it']}.\n"})
        acc = int(result)
    parts[-1]["text"] += f"#### {acc}"
    merged: list[dict] = []
    for p in parts:
        if merged and p["type"] == "text" and merged[-1]["type"] == "text":
            merged[-1] = {"type": "text", "text": merged[-1]["text"] + p["text"]}
        else:
            merged.append(p)
    return " ".join(sentences), merged, str(acc)


class Arithmetic(Generated):
    kind = "generative"
    splits = ("train", "rl", "test")

    def __init__(self, name: str = "arithmetic_easy", seed: int = 0):
        if name not in LEVELS:
            raise ValueError(f"unknown arithmetic level {name!r}; known: {sorted(LEVELS)}")
        self.name, self.seed = name, seed
        steps, self.top = LEVELS[name]
        self.sequences = [seq for n in steps for seq in SEQUENCES[n]]

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        question, parts, result = problem(rng.choice(self.sequences), split, rng, self.top)
        return conversation(question, parts, task=self.name, answer=result)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return same_number(final_number(reply), conv["answer"])

    def max_new_tokens(self) -> int:
        return 160


class ArithmeticThink(Arithmetic):
    """2-4 step problems (numbers up to 50) whose training replies are mostly the answer alone:
    `direct` of them (seeded by the example) are just `#### N`, the rest the worked steps with
    calculator calls. Both behaviours are in an SFT policy; a model this small rarely gets a
    multi-step answer right without the steps, so RL on correctness alone can show working
    appear because it pays (issue 28). Held-out and rl references are the worked replies."""

    def __init__(self, name: str = "arithmetic_think", seed: int = 0, direct: float = 0.8):
        super().__init__(name, seed)
        self.direct = direct

    def example(self, split: str, i: int) -> dict:
        conv = super().example(split, i)
        if split == "train" and random.Random(f"{self.name}/direct/{i}").random() < self.direct:
            msgs = conv["messages"][:-1] + [{"role": "assistant",
                                             "content": f"#### {conv['answer']}"}]
            conv = dict(conv, messages=msgs)
        return conv
