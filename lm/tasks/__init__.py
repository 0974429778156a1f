"""The task library: one interface (`lm.tasks.base.Task`) for SFT data, evaluation and RL rewards.

    from lm import tasks
    t = tasks.get("arithmetic_easy")
    conv = t.example("test", 0)           # held-out problem, with its reference answer
    t.evaluate(conv, "... #### 7")        # -> bool

Names: gsm8k, arithmetic_easy, arithmetic, arithmetic_hard, spelling, identity, mmlu, arc_easy,
arc_challenge, hellaswag, dolly, alpaca, and the ones that measure reading the context out of
the generators' distribution: gsm8k_easy (real phrasing), spelling_ood (held-out words of every
length and frequency, held-out phrasings), recall (facts stated earlier in the conversation),
copy (repeat exactly); and word_problems (a compositional grammar of 1-2 step problems whose
held-out split is made of unseen combinations of seen parts). A mixture ("identity:1,spelling:2") is read by
`lm.config.parse_weights(spec, tasks.NAMES, key=...)`.
"""
from __future__ import annotations

from typing import Callable

from lm.tasks.arithmetic import LEVELS, Arithmetic
from lm.tasks.base import SPLITS, Task, TaskDataError, test_indices  # noqa: F401
from lm.tasks.gsm8k import GSM8K, GSM8KEasy
from lm.tasks.identity import Identity
from lm.tasks.multiple_choice import ARC, MMLU, HellaSwag
from lm.tasks.open_chat import OpenChat
from lm.tasks.recall import Copy, Recall
from lm.tasks.spelling import Spelling, SpellingOOD
from lm.tasks.word_problems import WordProblems

FACTORIES: dict[str, Callable[[], Task]] = {
    "gsm8k": GSM8K, "spelling": Spelling, "identity": Identity, "mmlu": MMLU,
    "arc_easy": lambda: ARC("arc_easy"), "arc_challenge": lambda: ARC("arc_challenge"),
    "hellaswag": HellaSwag, "dolly": lambda: OpenChat("dolly"),
    "alpaca": lambda: OpenChat("alpaca"),
    "gsm8k_easy": GSM8KEasy, "spelling_ood": SpellingOOD, "recall": Recall, "copy": Copy,
    "word_problems": WordProblems,
    **{level: (lambda lv: (lambda: Arithmetic(lv)))(level) for level in LEVELS},
}
NAMES = ("gsm8k", "arithmetic_easy", "arithmetic", "arithmetic_hard", "spelling", "identity",
         "mmlu", "arc_easy", "arc_challenge", "hellaswag", "dolly", "alpaca",
         "gsm8k_easy", "spelling_ood", "recall", "copy", "word_problems")
assert set(NAMES) == set(FACTORIES), "every task has a name and a factory"
_CACHE: dict[str, Task] = {}


def get(name: str) -> Task:
    """The named task (built once per process; data loads lazily on first use)."""
    if name not in NAMES:
        raise KeyError(f"unknown task {name!r}; known: {list(NAMES)}")
    if name not in _CACHE:
        _CACHE[name] = FACTORIES[name]()
    return _CACHE[name]
