"""Whether a worked math reply reads its problem: where each calculator operand comes from.

A reply that computes `<<8*8=64>>` for "Each pizza has 8 slices. How many slices are in 6
pizzas?" shows its working and is graded wrong, and so is one that computes `<<11+24=35>>` for
"3 buttons, 16 more"; only the second took numbers the problem does not hold. A step is a
calculator call or an equation written out in the text (`2*171 = 342`); each operand is one of:

- `problem`: a number the problem states, in digits ("1,200", "3/4" gives 3 and 4, "25%" gives 25
  and 0.25) or in words ("six", "a dozen", "half", "twice");
- `earlier`: the result of an earlier step of the same reply (the calculator's, or the number the
  reply wrote after it);
- `unit`: a conversion the problem calls for (60 where it speaks of minutes or hours, 100 of per
  cents, 7 of weeks, ...) or 1;
- `invented`: none of these: a number from nowhere.

The problem is the user's turn the reply answers (earlier turns are not searched: every math task
asks in one turn). `read_reply(problem, reply)` classifies one reply; `summary(items)` gives a
task's figures: `read` (the share of operands from the problem, earlier steps or units),
`coverage` (the share of the problem's numbers some step uses) and each reply's kind (`reads`,
`invents`, `no_steps`) crossed with its grade. GSM8K's human solutions are the calibration: on
its 2,399 easy training problems (1-2 calculator steps) they read 93.9% of their operands (the
rest are steps done in the head: "3 sets of 20 minutes in an hour") and use 80% of the stated
numbers; set against another problem (the next one) they read 37% (tests/test_reading.py).
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

STEP = re.compile(r"<<([^<>=]*)=([^<>]*)>>([\d,]*\.?\d*)")
_N = r"\$?(?:\d[\d,]*(?:\.\d+)?|\.\d+)%?"
WRITTEN = re.compile(rf"((?:{_N}\s*[-+*/×x]\s*)+{_N})\s*=\s*\$?(\d[\d,]*(?:\.\d+)?)")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:,\d{3})*(?:\.\d+)?|(?<![\w\d])\.\d+")
_PERCENT = re.compile(r"(\d+(?:\.\d+)?)\s*(?:%|percent)")
_WORDS = {
    "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000, "million": 1e6,
    "dozen": 12, "dozens": 12, "pair": 2, "pairs": 2, "couple": 2, "twice": 2, "double": 2,
    "doubles": 2, "triple": 3, "triples": 3, "thrice": 3, "half": 2, "halves": 2, "third": 3,
    "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4, "fifth": 5, "sixth": 6,
    "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10, "score": 20, "both": 2, "twins": 2,
}
_FRACTION_WORDS = {"half": 0.5, "halves": 0.5, "third": 1 / 3, "quarter": 0.25, "quarters": 0.25}
# conversions a reader brings to a problem, each where the problem names what it converts
UNITS = {
    1.0: "", 7.0: "week day", 12.0: "month year dozen foot feet inch", 24.0: "day hour",
    30.0: "month day", 52.0: "week year", 60.0: "minute hour second", 365.0: "year day",
    100.0: "percent % cent dollar meter metre centur", 0.01: "percent % cent",
    1000.0: "thousand kilo gram meter metre liter litre km kg",
}
KINDS = ("problem", "earlier", "unit", "invented")


def units(problem: str) -> set[float]:
    """The conversions a problem calls for: 60 where it speaks of minutes or hours, 100 of per
    cents or dollars, ... (`UNITS`), and 1."""
    low = problem.lower()
    return {v for v, cues in UNITS.items() if not cues or any(c in low for c in cues.split())}


def _value(text: str) -> float:
    return float(text.replace(",", ""))


def problem_numbers(problem: str) -> set[float]:
    """Every number a problem states, in digits or words (with a per cent's fraction)."""
    found = {_value(m.group(0)) for m in _NUMBER.finditer(problem)}
    found |= {float(m.group(1)) / 100 for m in _PERCENT.finditer(problem)}
    for w in re.findall(r"[a-z]+", problem.lower()):
        if w in _WORDS:
            found.add(float(_WORDS[w]))
        if w in _FRACTION_WORDS:
            found.add(_FRACTION_WORDS[w])
    return found


def steps(reply: str) -> list[tuple[str, Optional[float], Optional[float]]]:
    """A reply's steps before its `####` answer, in order: each calculator call (expression, the
    calculator's result, the number the reply wrote after it) and each equation written out in
    the text between them (`2*171 = 342`: expression, None, 342); None where not a number."""
    work = reply.rsplit("####", 1)[0]
    found = []
    for m in STEP.finditer(work):
        found.append((m.start(), m.group(1), _number_or_none(m.group(2)),
                      _number_or_none(m.group(3))))
    prose = STEP.sub(lambda m: " " * len(m.group(0)), work)      # positions kept
    for m in WRITTEN.finditer(prose):
        found.append((m.start(), m.group(1), None, _number_or_none(m.group(2))))
    return [f[1:] for f in sorted(found, key=lambda f: f[0])]


def _number_or_none(text: str) -> Optional[float]:
    m = _NUMBER.search(text.strip())
    return _value(m.group(0)) if m else None


def _match(x: float, pool: Iterable[float]) -> Optional[float]:
    """The value of `pool` equal to `x` (to a relative 1e-6), or None."""
    return next((v for v in pool if abs(x - v) <= 1e-6 * max(1.0, abs(v))), None)


def read_reply(problem: str, reply: str) -> dict:
    """{'steps': n, 'operands': [kind per operand, in order], 'used': the problem's numbers some
    step uses, 'stated': how many numbers the problem states, 'kind': 'reads' | 'invents' |
    'no_steps'}."""
    given, conversions = problem_numbers(problem), units(problem)
    earlier: list[float] = []
    kinds: list[str] = []
    used: set[float] = set()
    st = steps(reply)
    for expr, result, written in st:
        for m in _NUMBER.finditer(expr):
            x = _value(m.group(0))
            stated = _match(x, given)
            if stated is not None:
                kinds.append("problem")
                used.add(stated)
            elif _match(x, earlier) is not None:
                kinds.append("earlier")
            elif _match(x, conversions) is not None:
                kinds.append("unit")
            else:
                kinds.append("invented")
        earlier += [v for v in (result, written) if v is not None]
    kind = "no_steps" if not kinds else ("invents" if "invented" in kinds else "reads")
    return {"steps": len(st), "operands": kinds, "used": used, "stated": len(given), "kind": kind}


def summary(items: Iterable[tuple[str, str, bool]]) -> dict:
    """A task's figures from (problem, reply, correct) triples: `n`, `acc`, `worked` (share with a
    calculator step), `read` (share of operands not invented), `operands` (per kind, their
    share), `coverage` (mean share of a worked reply's problem numbers it uses), and `replies`:
    the share of replies per '<kind>/<right|wrong>'."""
    n = worked = 0
    right = 0
    per_kind = dict.fromkeys(KINDS, 0)
    coverage: list[float] = []
    replies: dict[str, int] = {}
    for problem, reply, correct in items:
        r = read_reply(problem, reply)
        n += 1
        right += bool(correct)
        for k in r["operands"]:
            per_kind[k] += 1
        if r["steps"]:
            worked += 1
            if r["stated"]:
                coverage.append(len(r["used"]) / r["stated"])
        key = f"{r['kind']}/{'right' if correct else 'wrong'}"
        replies[key] = replies.get(key, 0) + 1
    ops = sum(per_kind.values())
    return {"n": n, "acc": right / n if n else 0.0, "worked": worked / n if n else 0.0,
            "read": 1 - per_kind["invented"] / ops if ops else None,
            "operands": {k: v / ops for k, v in per_kind.items()} if ops else {},
            "coverage": sum(coverage) / len(coverage) if coverage else None,
            "replies": {k: v / n for k, v in sorted(replies.items())}}
