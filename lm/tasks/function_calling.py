"""Function calling: conversations that offer a few functions (OpenAI's `tools`), a user request,
the assistant's call, the tool's result and the assistant's answer from it (lm.conversation's
tool_call parts and tool turns).

Schemas are generated from families (weather, unit conversion, a small price table, a
calculator, web search, local time, currency, stocks, timers, translation), each with several
function names, parameter names and descriptions. The held-out (`test`) split offers schemas never
seen in training: its function names and parameter names are the families' held-out variants, two
families (timers, translation) appear only there, and its user phrasings are its own. Every item
also offers 1-2 other functions as distractors; about one in seven asks for something none of them
does (the right reply is an answer, not a call).

Held-out items are of two kinds: `call` (the prompt is the request; graded on the call) and
`answer` (the prompt ends with the tool's result; graded on the answer quoting it). `grades`
gives the parts of a grade: a call was made when one was due (`decision`), it parses as a call
(`valid`), names the right function (`function`), and has exactly the expected arguments
(`arguments`); `evaluate` is all of them (for `answer` items: the result's value is in the reply
and no call is made).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Callable

from lm import conversation as chat
from lm.tasks.base import Generated, stable_hash

CITIES = ["Oslo", "Lima", "Cairo", "Tokyo", "Denver", "Madrid", "Nairobi", "Perth", "Quebec",
          "Seoul", "Dublin", "Hanoi", "Austin", "Zurich", "Bogota", "Lagos", "Vienna", "Manila"]
ITEMS = ["apples", "bread", "coffee", "eggs", "rice", "tea", "milk", "cheese", "butter", "soap"]
TICKERS = ["ACME", "GLOBX", "INITECH", "UMBRL", "STARK", "WAYNE", "HOOLI", "VANDL"]
UNITS = [("meters", "feet", 3.28084), ("kilograms", "pounds", 2.20462), ("miles", "kilometers",
         1.60934), ("liters", "gallons", 0.264172), ("inches", "centimeters", 2.54)]
CURRENCIES = [("dollars", "euros", 0.92), ("euros", "yen", 161.0), ("pounds", "dollars", 1.27),
              ("yen", "dollars", 0.0067)]
LANGUAGES = ["French", "Spanish", "German", "Italian", "Swahili"]
PHRASES = ["good morning", "thank you", "where is the station", "how much is this", "goodbye"]
SKIES = ["sunny", "cloudy", "rainy", "windy", "snowy"]


@dataclass
class Family:
    """One kind of function: name and parameter-name variants (the last third of each list is
    held out), a request generator and a result generator."""
    name: str
    names: list[str]
    description: str
    params: dict[str, list[str]]        # role -> parameter-name variants
    types: dict[str, str]               # role -> JSON Schema type
    ask: dict[str, list[str]]           # split -> request phrasings ({role} slots)
    draw: Callable[[random.Random], dict]          # role -> value
    result: Callable[[dict, random.Random], dict]  # values -> the tool's result
    answer: Callable[[dict, dict], tuple[str, str]]  # (values, result) -> (reply, key value)
    test_only: bool = False


def _held(variants: list, split: str) -> list:
    """Training variants: the first two thirds; held-out ones: the rest."""
    k = max(1, (2 * len(variants)) // 3)
    return variants[:k] if split != "test" else variants[k:]


def number_text(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


FAMILIES = [
    Family("weather", ["get_weather", "current_weather", "weather_now", "fetch_weather",
                       "lookup_weather", "weather_report"],
           "Current weather conditions for a city",
           {"city": ["city", "location", "place", "town", "city_name", "where"]},
           {"city": "string"},
           {"train": ["What's the weather in {city}?", "Is it cold in {city} right now?",
                      "Tell me the weather for {city}.", "weather {city}",
                      "How is the weather in {city} today?", "Do I need an umbrella in {city}?"],
            "test": ["Could you check what it's like outside in {city}?",
                     "I'm flying to {city} tonight, what's the weather there?",
                     "how warm is {city} at the moment"]},
           lambda r: {"city": r.choice(CITIES)},
           lambda v, r: {"temp_c": r.randint(-15, 38), "sky": r.choice(SKIES)},
           lambda v, res: (f"It is {res['temp_c']} °C and {res['sky']} in {v['city']}.",
                           str(res["temp_c"]))),
    Family("convert", ["convert_units", "unit_convert", "convert_measure", "to_unit",
                       "measure_convert", "convert_quantity"],
           "Convert a quantity from one unit to another",
           {"value": ["value", "amount", "quantity", "number", "qty", "size"],
            "from_unit": ["from_unit", "from", "source_unit", "unit_in", "in_unit", "src"],
            "to_unit": ["to_unit", "to", "target_unit", "unit_out", "out_unit", "dst"]},
           {"value": "number", "from_unit": "string", "to_unit": "string"},
           {"train": ["How many {to_unit} is {value} {from_unit}?",
                      "Convert {value} {from_unit} to {to_unit}.",
                      "{value} {from_unit} in {to_unit}?",
                      "What is {value} {from_unit} in {to_unit}?"],
            "test": ["I have {value} {from_unit}; how much is that in {to_unit}?",
                     "Please express {value} {from_unit} as {to_unit}."]},
           lambda r: dict(zip(("from_unit", "to_unit", "_f"), r.choice(UNITS)),
                          value=r.randint(2, 90)),
           lambda v, r: {"result": float(number_text(v["value"] * v["_f"]))},
           lambda v, res: (f"{v['value']} {v['from_unit']} is {number_text(res['result'])} "
                           f"{v['to_unit']}.", number_text(res["result"]))),
    Family("price", ["get_price", "price_lookup", "item_price", "lookup_price", "price_of",
                     "shop_price"],
           "The price of an item in the shop's price table",
           {"item": ["item", "product", "name", "article", "goods", "item_name"]},
           {"item": "string"},
           {"train": ["How much do {item} cost?", "What's the price of {item}?",
                      "price of {item}", "Are {item} expensive here?"],
            "test": ["What would I pay for {item} in your shop?",
                     "Check the shop's price for {item}, please."]},
           lambda r: {"item": r.choice(ITEMS)},
           lambda v, r: {"price": round(r.uniform(0.5, 20), 2), "currency": "EUR"},
           lambda v, res: (f"{v['item'].capitalize()} cost {number_text(res['price'])} euros.",
                           number_text(res["price"]))),
    Family("calculate", ["calculate", "calculator", "eval_math", "compute", "math_eval",
                         "arithmetic"],
           "Evaluate an arithmetic expression",
           {"expression": ["expression", "expr", "formula", "input", "math", "calc"]},
           {"expression": "string"},
           {"train": ["What is {expression}?", "Calculate {expression}.",
                      "Can you work out {expression}?", "{expression} = ?"],
            "test": ["Quick sum for me: {expression}", "What do you get from {expression}?"]},
           lambda r: {"expression": f"{r.randint(11, 99)} * {r.randint(11, 99)}"},
           lambda v, r: {"result": eval(v["expression"])},  # noqa: S307 - our own a * b
           lambda v, res: (f"{v['expression']} = {res['result']}.", str(res["result"]))),
    Family("search", ["web_search", "search", "search_web", "internet_search", "find_online",
                      "lookup_web"],
           "Search the web and return the top result",
           {"query": ["query", "q", "search_query", "terms", "text", "keywords"]},
           {"query": "string"},
           {"train": ["Search the web for {query}.", "Look up {query} online.",
                      "Find something about {query}.", "google {query}"],
            "test": ["Can you find me a page on {query}?", "I need web results about {query}."]},
           lambda r: {"query": r.choice(["tide tables", "bread recipes", "chess openings",
                                         "bike repair", "moon phases", "tax forms",
                                         "bird songs", "knot tying"])},
           lambda v, r: {"title": f"A guide to {v['query']}", "url":
                         f"https://example.org/{v['query'].replace(' ', '-')}"},
           lambda v, res: (f"The top result is \"{res['title']}\" ({res['url']}).",
                           res["url"])),
    Family("time", ["get_time", "local_time", "time_in", "current_time", "clock", "time_now"],
           "The local time in a city",
           {"city": ["city", "location", "place", "zone", "where", "town"]},
           {"city": "string"},
           {"train": ["What time is it in {city}?", "Current time in {city}?",
                      "Tell me the time in {city}."],
            "test": ["Is it late in {city} now?", "What's the clock showing in {city}?"]},
           lambda r: {"city": r.choice(CITIES)},
           lambda v, r: {"time": f"{r.randint(0, 23):02d}:{r.choice(['00', '15', '30', '45'])}"},
           lambda v, res: (f"It is {res['time']} in {v['city']}.", res["time"])),
    Family("currency", ["convert_currency", "exchange", "fx_convert", "currency_convert",
                        "money_exchange", "to_currency"],
           "Convert an amount of money between currencies",
           {"amount": ["amount", "value", "sum", "money", "qty", "total"],
            "from_currency": ["from_currency", "from", "base", "source", "have", "src"],
            "to_currency": ["to_currency", "to", "target", "quote", "want", "dst"]},
           {"amount": "number", "from_currency": "string", "to_currency": "string"},
           {"train": ["How many {to_currency} is {amount} {from_currency}?",
                      "Convert {amount} {from_currency} to {to_currency}.",
                      "{amount} {from_currency} in {to_currency}"],
            "test": ["If I change {amount} {from_currency}, how many {to_currency} do I get?",
                     "Exchange {amount} {from_currency} into {to_currency} for me."]},
           lambda r: dict(zip(("from_currency", "to_currency", "_f"), r.choice(CURRENCIES)),
                          amount=r.randint(5, 500)),
           lambda v, r: {"result": float(number_text(v["amount"] * v["_f"]))},
           lambda v, res: (f"{v['amount']} {v['from_currency']} is {number_text(res['result'])} "
                           f"{v['to_currency']}.", number_text(res["result"]))),
    Family("stock", ["get_stock_price", "stock_quote", "share_price", "quote", "ticker_price",
                     "stock_price"],
           "The latest price of a stock",
           {"symbol": ["symbol", "ticker", "stock", "code", "company", "sym"]},
           {"symbol": "string"},
           {"train": ["What is {symbol} trading at?", "Price of {symbol} stock?",
                      "How much is one {symbol} share?"],
            "test": ["Where is {symbol} right now on the market?",
                     "Give me the latest quote for {symbol}."]},
           lambda r: {"symbol": r.choice(TICKERS)},
           lambda v, r: {"price": round(r.uniform(5, 400), 2)},
           lambda v, res: (f"{v['symbol']} is at {number_text(res['price'])}.", number_text(res["price"]))),
    Family("timer", ["set_timer", "start_timer", "timer", "countdown"], "Start a timer",
           {"minutes": ["minutes", "duration_min", "mins", "length"]}, {"minutes": "integer"},
           {"test": ["Set a timer for {minutes} minutes.", "Remind me in {minutes} minutes.",
                     "Start a {minutes} minute countdown."]},
           lambda r: {"minutes": r.randint(2, 90)},
           lambda v, r: {"status": "started", "minutes": v["minutes"]},
           lambda v, res: (f"Your {v['minutes']} minute timer is running.", str(v["minutes"])),
           test_only=True),
    Family("translate", ["translate", "translate_text", "translation", "to_language"],
           "Translate a phrase into a language",
           {"text": ["text", "phrase", "sentence", "words"],
            "language": ["language", "target_language", "lang", "into"]},
           {"text": "string", "language": "string"},
           {"test": ["How do you say \"{text}\" in {language}?",
                     "Translate \"{text}\" into {language}.",
                     "What's \"{text}\" in {language}?"]},
           lambda r: {"text": r.choice(PHRASES), "language": r.choice(LANGUAGES)},
           lambda v, r: {"translation": f"[{v['language']}] {v['text']}"},
           lambda v, res: (f"In {v['language']}: {res['translation']}.", res["translation"]),
           test_only=True),
]
NO_TOOL = {   # requests no offered function serves: the reply is an answer, not a call
    "train": [("What is your name?", "I'm a small assistant."),
              ("Tell me a joke.", "Why did the bicycle fall over? It was two tired."),
              ("Say hello!", "Hello!"), ("Thanks, that's all.", "You're welcome!"),
              ("What's the capital of France?", "Paris."),
              ("Write a haiku about rain.", "Soft rain on the roof,\nthe garden drinks slowly,\n"
                                            "puddles hold the sky.")],
    "test": [("Can you recommend a good book?", "Try \"The Hobbit\"."),
             ("Good night!", "Good night!"), ("Who wrote Hamlet?", "Shakespeare.")],
}


def schema(family: Family, name: str, keys: dict[str, str]) -> dict:
    """An OpenAI tool definition of `family` under `name`, with parameter names `keys`."""
    props = {key: {"type": family.types[role]} for role, key in keys.items()}
    return {"type": "function", "function": {
        "name": name, "description": family.description,
        "parameters": {"type": "object", "properties": props, "required": list(props)}}}


def pick_schema(family: Family, split: str, rng: random.Random) -> tuple[dict, dict]:
    """(tool definition, role -> parameter name) of `family` in `split`'s variants."""
    pool = "test" if split == "test" else "train"
    name = rng.choice(_held(family.names, pool))
    keys = {role: rng.choice(_held(v, pool)) for role, v in family.params.items()}
    return schema(family, name, keys), keys


class FunctionCalling(Generated):
    name = "function_calling"
    kind = "generative"
    splits = ("train", "test")

    def __init__(self, seed: int = 0, no_tool: float = 0.15, answer_items: float = 0.3):
        self.seed, self.no_tool, self.answer_items = seed, no_tool, answer_items

    def families(self, split: str) -> list[Family]:
        return [f for f in FAMILIES if split == "test" or not f.test_only]

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        fams = self.families(split)
        target = rng.choice(fams)
        others = rng.sample([f for f in fams if f is not target], rng.randint(1, 2))
        offered = [pick_schema(f, split, rng)[0] for f in others]
        if rng.random() < self.no_tool:
            q, a = rng.choice(NO_TOOL[split])
            rng.shuffle(offered)
            return {"tools": offered, "messages": [{"role": "user", "content": q},
                                                   {"role": "assistant", "content": a}],
                    "task": self.name, "kind": "no_call", "expected": None}
        tool, keys = pick_schema(target, split, rng)
        offered.insert(rng.randint(0, len(offered)), tool)
        values = target.draw(rng)
        shown = {k: v for k, v in values.items() if not k.startswith("_")}
        request = rng.choice(target.ask[split]).format(**shown)
        args = {keys[role]: v for role, v in shown.items()}
        result = target.result(values, rng)
        reply, key = target.answer(values, result)
        call_id = f"call_{stable_hash(f'{split}/{i}') % 10 ** 8}"
        msgs = [{"role": "user", "content": request},
                {"role": "assistant", "content": [{"type": "tool_call", "id": call_id,
                                                   "name": tool["function"]["name"],
                                                   "arguments": args}]},
                {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
                {"role": "assistant", "content": reply}]
        kind = "answer" if split == "test" and rng.random() < self.answer_items else "call"
        if kind == "call" and split == "test":
            msgs = msgs[:2]
        return {"tools": offered, "messages": msgs, "task": self.name, "kind": kind,
                "family": target.name, "expected": {"name": tool["function"]["name"],
                                                    "arguments": args},
                "answer": key}

    # -- grading -----------------------------------------------------------------------------
    def grades(self, conv: dict, reply: str) -> dict[str, bool]:
        """The parts of a grade (module docstring); `reply` is in reply_text form."""
        calls = calls_in(reply)
        if conv["kind"] == "answer":
            return {"answer": not calls and conv["answer"] in reply}
        if conv["kind"] == "no_call":
            return {"decision": not calls}
        exp = conv["expected"]
        call = calls[0] if calls else None
        valid = call is not None and "error" not in call
        function = valid and call["name"] == exp["name"]
        return {"decision": call is not None, "valid": valid, "function": function,
                "arguments": function and same_args(call["arguments"], exp["arguments"])}

    def evaluate(self, conv: dict, reply: str) -> bool:
        return all(self.grades(conv, reply).values())

    def max_new_tokens(self) -> int:
        return 96


def calls_in(reply: str) -> list[dict]:
    """The function calls in a reply_text: each `[call ...]` parsed (lm.conversation)."""
    out, pos = [], 0
    while True:
        start = reply.find("[call ", pos)
        if start < 0:
            return out
        end = reply.rfind("]", start)
        text = reply[start + 6:end if end > start else len(reply)]
        # a call's JSON ends where its braces balance
        depth, stop = 0, None
        for k, ch in enumerate(text):
            depth += ch == "{"
            depth -= ch == "}"
            if depth == 0 and ch == "}":
                stop = k + 1
                break
        out.append(chat.parse_call(text[:stop] if stop else text))
        pos = start + 6 + (stop or len(text))


def same_args(got: dict, want: dict) -> bool:
    if set(got) != set(want):
        return False
    for k, w in want.items():
        g = got[k]
        if isinstance(w, (int, float)) and not isinstance(w, bool):
            try:
                if abs(float(g) - float(w)) > 1e-6:
                    return False
            except (TypeError, ValueError):
                return False
        elif str(g).strip().lower() != str(w).strip().lower():
            return False
    return True

