"""The task library: one interface (`lm.tasks.base.Task`) for SFT data, evaluation and RL rewards.

    from lm import tasks
    t = tasks.get("arithmetic_easy")
    conv = t.example("test", 0)           # held-out problem, with its reference answer
    t.evaluate(conv, "... #### 7")        # -> bool

Names: gsm8k, arithmetic_easy, arithmetic, arithmetic_hard, spelling, identity, mmlu, arc_easy,
arc_challenge, hellaswag, dolly, alpaca. `parse_weights("identity:1,spelling:2")` reads a mixture.
"""
from __future__ import annotations

from typing import Callable

from lm.tasks.base import SPLITS, Task, TaskDataError  # noqa: F401


def _factories() -> dict[str, Callable[[], Task]]:
    from lm.tasks.arithmetic import LEVELS, Arithmetic
    from lm.tasks.gsm8k import GSM8K
    from lm.tasks.identity import Identity
    from lm.tasks.multiple_choice import ARC, MMLU, HellaSwag
    from lm.tasks.open_chat import OpenChat
    from lm.tasks.spelling import Spelling
    out: dict[str, Callable[[], Task]] = {
        "gsm8k": GSM8K, "spelling": Spelling, "identity": Identity, "mmlu": MMLU,
        "arc_easy": lambda: ARC("arc_easy"), "arc_challenge": lambda: ARC("arc_challenge"),
        "hellaswag": HellaSwag, "dolly": lambda: OpenChat("dolly"),
        "alpaca": lambda: OpenChat("alpaca"),
    }
    for level in LEVELS:
        out[level] = (lambda lv: (lambda: Arithmetic(lv)))(level)
    return out


NAMES = ("gsm8k", "arithmetic_easy", "arithmetic", "arithmetic_hard", "spelling", "identity",
         "mmlu", "arc_easy", "arc_challenge", "hellaswag", "dolly", "alpaca")
_CACHE: dict[str, Task] = {}


def get(name: str) -> Task:
    """The named task (built once per process; data loads lazily on first use)."""
    if name not in NAMES:
        raise KeyError(f"unknown task {name!r}; known: {list(NAMES)}")
    if name not in _CACHE:
        _CACHE[name] = _factories()[name]()
    return _CACHE[name]


def parse_weights(spec: str, *, key: str = "mixture") -> dict[str, float]:
    """'name:weight,name:weight' (or bare names, weight 1) -> {name: weight}, validated."""
    out: dict[str, float] = {}
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, _, w = item.partition(":")
        name = name.strip()
        if name not in NAMES:
            raise ValueError(f"{key}: unknown task {name!r}; known: {list(NAMES)}")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"{key}: weight of {name!r} must be a number, got {w!r}") from None
        if weight < 0:
            raise ValueError(f"{key}: weight of {name!r} must be >= 0, got {weight}")
        out[name] = weight
    return out
