"""Multi-step tool use (`agent_steps`): requests that need two dependent calls, the second using
the first one's result, then an answer from the last result.

Chains: a price looked up, then a total calculated ("How much do 4 eggs cost?": get_price, then
calculate "4 * 2.35"); a stock price, then converted to another currency; a distance converted,
then multiplied over a week. Function and parameter names come from `function_calling`'s families
(the held-out split uses their held-out variants), the user phrasings have held-out variants, and
one chain (stock → currency) appears only in the held-out split. Every item also offers one
distractor function.

Training conversations hold the whole exchange. Held-out items are graded one step at a time,
each with the earlier steps given: `step1` (the first call), `step2` (the second call: its
argument must be copied from the first result), `final` (the answer quotes the last result).
`steps` and `answer` let `lm.agent.evaluate` run the whole loop end to end with simulated tools.
"""
from __future__ import annotations

import json
import random

from lm.tasks.base import Generated, stable_hash
from lm.tasks.function_calling import FAMILIES, ITEMS, TICKERS, calls_in, number_text, \
    pick_schema, same_args

FAMILY = {f.name: f for f in FAMILIES}
RATES = {"euros": 0.92, "pounds": 0.79, "yen": 149.0}
DISTANCES = [("miles", "kilometers", 1.60934), ("kilometers", "miles", 0.621371)]

CHAINS = {
    "price_total": {
        "train": ["How much do {n} {item} cost?", "I need {n} {item}. What do I pay?",
                  "What is the price of {n} {item} in total?", "{n} {item}, how much?"],
        "test": ["If I buy {n} {item}, what's the bill?",
                 "Tell me what {n} {item} would cost me altogether."]},
    "weekly_distance": {
        "train": ["I walk {value} {from_unit} a day. How many {to_unit} is that in a week?",
                  "{value} {from_unit} every day: how many {to_unit} per week?"],
        "test": ["Each day I cycle {value} {from_unit}; what is a week of that in {to_unit}?"]},
    "stock_in_currency": {
        "test": ["What is one {symbol} share worth in {currency}?",
                 "How many {currency} does a {symbol} share cost?"]},
}


def _chain(kind: str, split: str, rng: random.Random):
    """(values for the request, [(family, schema, keys, args, result)], reply, answer key)."""
    steps = []

    def call(family: str, roles: dict, result: dict):
        tool, keys = pick_schema(FAMILY[family], split, rng)
        steps.append((tool, {keys[r]: v for r, v in roles.items()}, result))

    if kind == "price_total":
        n, item = rng.randint(2, 9), rng.choice(ITEMS)
        price = round(rng.uniform(0.5, 12), 2)
        total = number_text(n * price)
        call("price", {"item": item}, {"price": price, "currency": "EUR"})
        call("calculate", {"expression": f"{n} * {number_text(price)}"}, {"result": float(total)})
        return {"n": n, "item": item}, steps, f"{n} {item} cost {total} euros.", total
    if kind == "weekly_distance":
        frm, to, f = rng.choice(DISTANCES)
        value = rng.randint(2, 15)
        day = number_text(value * f)
        week = number_text(float(day) * 7)
        call("convert", {"value": value, "from_unit": frm, "to_unit": to}, {"result": float(day)})
        call("calculate", {"expression": f"{day} * 7"}, {"result": float(week)})
        return ({"value": value, "from_unit": frm, "to_unit": to}, steps,
                f"That is {week} {to} in a week.", week)
    symbol, currency = rng.choice(TICKERS), rng.choice(sorted(RATES))
    price = round(rng.uniform(5, 400), 2)
    out = number_text(price * RATES[currency])
    call("stock", {"symbol": symbol}, {"price": price, "currency": "dollars"})
    call("currency", {"amount": price, "from_currency": "dollars", "to_currency": currency},
         {"result": float(out)})
    return {"symbol": symbol, "currency": currency}, steps, \
        f"One {symbol} share is {out} {currency}.", out


class AgentSteps(Generated):
    name = "agent_steps"
    kind = "generative"
    splits = ("train", "test")
    KINDS = ("step1", "step2", "final")

    def __init__(self, seed: int = 0):
        self.seed = seed

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        pool = "test" if split == "test" else "train"
        kind = rng.choice([k for k, v in CHAINS.items() if pool in v])
        values, steps, reply, key = _chain(kind, split, rng)
        request = rng.choice(CHAINS[kind][pool]).format(**values)
        others = [f for f in FAMILIES if f.name not in ("price", "calculate", "convert", "stock",
                                                        "currency")
                  and (split == "test" or not f.test_only)]
        tools = [tool for tool, _, _ in steps]
        tools.insert(rng.randint(0, 2), pick_schema(rng.choice(others), split, rng)[0])
        msgs = [{"role": "user", "content": request}]
        for k, (tool, args, result) in enumerate(steps):
            cid = f"call_{stable_hash(f'{split}/{i}/{k}') % 10 ** 8}"
            msgs += [{"role": "assistant", "content": [
                         {"type": "tool_call", "id": cid, "name": tool["function"]["name"],
                          "arguments": args}]},
                     {"role": "tool", "tool_call_id": cid, "content": json.dumps(result)}]
        msgs.append({"role": "assistant", "content": reply})
        item = {"tools": tools, "task": self.name, "chain": kind, "answer": key,
                "steps": [{"name": t["function"]["name"], "arguments": a, "result": r}
                          for t, a, r in steps]}
        if split != "test":
            return {**item, "messages": msgs, "kind": "all"}
        part = self.KINDS[stable_hash(f"{self.name}/{split}/{i}") % 3]
        cut = {"step1": 2, "step2": 4, "final": 6}[part]     # the turn to grade is the last one
        return {**item, "messages": msgs[:cut], "kind": part}

    def grades(self, conv: dict, reply: str) -> dict[str, bool]:
        calls = calls_in(reply)
        if conv["kind"] == "final":
            return {"final": not calls and conv["answer"] in reply}
        want = conv["steps"][0 if conv["kind"] == "step1" else 1]
        call = calls[0] if calls else None
        ok = call is not None and "error" not in call and call["name"] == want["name"] \
            and same_args(call["arguments"], want["arguments"])
        return {conv["kind"]: ok}

    def evaluate(self, conv: dict, reply: str) -> bool:
        return all(self.grades(conv, reply).values())

    def max_new_tokens(self) -> int:
        return 96
