"""The task library: one interface (`lm.tasks.base.Task`) for SFT data, evaluation and RL rewards.

    from lm import tasks
    t = tasks.get("arithmetic_easy")
    conv = t.example("test", 0)           # held-out problem, with its reference answer
    t.evaluate(conv, "... #### 7")        # -> bool

Names: gsm8k, arithmetic_easy, arithmetic, arithmetic_hard, spelling, identity, mmlu, arc_easy,
arc_challenge, hellaswag, dolly, alpaca, and the ones that measure reading the context out of
the generators' distribution: gsm8k_easy (real phrasing), spelling_ood (held-out words of every
length and frequency, held-out phrasings), recall (facts stated earlier in the conversation),
recall_text (a fact inside sentences people wrote, asked for by its kind), copy (repeat
exactly), and with `_seen_phrasings` (recall, copy, spelling_ood) the same held-out
items in training's fixed phrasings, to tell the items from the wording; and word_problems (a
compositional grammar of 1-2 step problems whose held-out split is made of unseen combinations
of seen parts); arithmetic_think (2-4 steps, mostly direct answers in training: for RL to
discover working); everyday_math / _letters / _recall are hand-written questions for evaluation
only; kb_qa, kb_qa_naive, kb_qa_context and kb_search (kb_qa_seen_phrasings: kb_qa's held-out
people in training's phrasings) ask about made-up people of a knowledge base read in
pretraining (`lm.tasks.knowledge`);
arithmetic_easy_<format>, mental_add_<format> and mental_d1-4 put the same arithmetic in three
reply formats (`lm.tasks.thinking`); spelling_spell and spelling_direct are spelling's items
answered without the calculator; spelling_drill spells several training words a reply (the
letters of the tokens; its test split: held-out words; _forms also quoted and capitalised);
digits, picture_describe and picture_draw put images in the
conversation as tokens (`lm.tasks.vision`, `lm.images`), speech_digits(_noisy) and speech_words
spoken words (`lm.tasks.speech`, `lm.audio`). A mixture ("identity:1,spelling:2") is read by
`lm.config.parse_weights(spec, tasks.NAMES, key=...)`.
"""
from __future__ import annotations

import random
from typing import Callable

from lm.tasks.agent_steps import AgentSteps
from lm.tasks.arithmetic import LEVELS, Arithmetic, ArithmeticThink
from lm.tasks.base import SPLITS, Task, TaskDataError, test_indices  # noqa: F401
from lm.tasks.everyday import Everyday
from lm.tasks.files import ConversationsFile
from lm.tasks.function_calling import FunctionCalling
from lm.tasks.gsm8k import GSM8K, GSM8KEasy
from lm.tasks.identity import STUDENT_NAME, Identity
from lm.tasks.knowledge import KnowledgeQA
from lm.tasks.speech import DIGITS, Speech
from lm.tasks.thinking import ArithmeticFormat, MentalAdd
from lm.tasks.vision import Digits, Pictures
from lm.tasks.multiple_choice import ARC, MMLU, HellaSwag
from lm.tasks.open_chat import OpenChat
from lm.tasks.recall import Copy, CopySeenPhrasings, Recall, RecallSeenPhrasings, \
    RecallSeenQuestions, RecallSeenStatements
from lm.tasks.recall_text import RecallText
from lm.tasks.spelling import Spelling, SpellingDrill, SpellingOOD, SpellingOODSeenPhrasings
from lm.tasks.word_problems import WordProblems

FACTORIES: dict[str, Callable[[], Task]] = {
    "gsm8k": GSM8K, "spelling": Spelling, "identity": Identity, "mmlu": MMLU,
    "arc_easy": lambda: ARC("arc_easy"), "arc_challenge": lambda: ARC("arc_challenge"),
    "hellaswag": HellaSwag, "dolly": lambda: OpenChat("dolly"),
    "alpaca": lambda: OpenChat("alpaca"),
    "gsm8k_easy": GSM8KEasy, "spelling_ood": SpellingOOD, "recall": Recall, "copy": Copy,
    "recall_seen_phrasings": RecallSeenPhrasings, "copy_seen_phrasings": CopySeenPhrasings,
    "recall_seen_statements": RecallSeenStatements, "recall_seen_questions": RecallSeenQuestions,
    "recall_text": RecallText,
    "spelling_ood_seen_phrasings": SpellingOODSeenPhrasings,
    "word_problems": WordProblems, "everyday_math": lambda: Everyday("math"),
    "everyday_letters": lambda: Everyday("letters"), "everyday_recall": lambda: Everyday("recall"),
    **{level: (lambda lv: (lambda: Arithmetic(lv)))(level) for level in LEVELS},
    "arithmetic_think": ArithmeticThink,
    # a student's own identity (another name than its teacher's), and who-am-I questions graded
    # on the teacher's name and on the student's (distillation's risk, issue 28)
    "identity_student": lambda: Identity(name="identity_student", assistant=STUDENT_NAME),
    "whoami_teacher": lambda: Identity(name="whoami_teacher", topics=("name",)),
    "whoami_student": lambda: Identity(name="whoami_student", assistant=STUDENT_NAME,
                                       topics=("name",)),
    "function_calling": FunctionCalling, "agent_steps": AgentSteps,
    # made-up people read in pretraining 0-128 times (issue 26: hallucination, working memory)
    "kb_qa": KnowledgeQA, "kb_qa_naive": lambda: KnowledgeQA("kb_qa_naive", mode="naive"),
    "kb_qa_context": lambda: KnowledgeQA("kb_qa_context", mode="context"),
    "kb_search": lambda: KnowledgeQA("kb_search", mode="search"),
    "kb_qa_seen_phrasings": lambda: KnowledgeQA("kb_qa_seen_phrasings", asked_as="train"),
    # models need tokens to think (issue 26): one problem set, three reply formats
    "arithmetic_easy_reasoning": lambda: ArithmeticFormat("reasoning"),
    "arithmetic_easy_answer_first": lambda: ArithmeticFormat("answer_first"),
    **{f"mental_add_{f}": (lambda f: (lambda: MentalAdd(f"mental_add_{f}", f)))(f)
       for f in ("calculator", "reasoning", "answer_first")},
    **{f"mental_d{d}": (lambda d: (lambda: MentalAdd(f"mental_d{d}", digits=d)))(d)
       for d in (1, 2, 3, 4)},
    **{f"mental_d{d}_seen_phrasings": (lambda d: (lambda: MentalAdd(
        f"mental_d{d}_seen_phrasings", digits=d, asked_as="train")))(d) for d in (1, 2, 3, 4)},
    # spelling's words in the other reply formats: spell out and count, or the count alone
    "spelling_drill": SpellingDrill,
    "spelling_drill_forms": lambda: SpellingDrill(forms=True),
    "spelling_spell": lambda: Spelling(fmt="spell"), "spelling_direct": lambda: Spelling(fmt="direct"),
    # images as tokens (issue 31): read a digit, describe a picture, draw one
    "digits": Digits, "picture_describe": lambda: Pictures("describe"),
    "picture_draw": lambda: Pictures("draw"),
    # speech as tokens (issue 31): what was said, in voices training never heard
    "speech_digits": lambda: Speech("speech_digits", DIGITS),
    "speech_digits_noisy": lambda: Speech("speech_digits_noisy", DIGITS, noise_db=10.0),
    "speech_words": lambda: Speech("speech_words"),
}
NAMES = ("gsm8k", "arithmetic_easy", "arithmetic", "arithmetic_hard", "spelling", "identity",
         "mmlu", "arc_easy", "arc_challenge", "hellaswag", "dolly", "alpaca",
         "gsm8k_easy", "spelling_ood", "recall", "recall_seen_phrasings", "recall_seen_statements",
         "recall_seen_questions", "recall_text", "copy",
         "copy_seen_phrasings", "spelling_ood_seen_phrasings", "word_problems", "everyday_math",
         "everyday_letters", "everyday_recall", "arithmetic_think", "identity_student",
         "whoami_teacher", "whoami_student", "function_calling", "agent_steps", "kb_qa",
         "kb_qa_naive", "kb_qa_context", "kb_search", "kb_qa_seen_phrasings",
         "arithmetic_easy_reasoning", "arithmetic_easy_answer_first", "mental_add_calculator",
         "mental_add_reasoning",
         "mental_add_answer_first", "mental_d1", "mental_d2", "mental_d3", "mental_d4",
         "mental_d1_seen_phrasings", "mental_d2_seen_phrasings", "mental_d3_seen_phrasings",
         "mental_d4_seen_phrasings",
         "spelling_spell", "spelling_direct", "spelling_drill", "spelling_drill_forms",
         "digits", "picture_describe", "picture_draw",
         "speech_digits", "speech_digits_noisy", "speech_words")
assert set(NAMES) == set(FACTORIES), "every task has a name and a factory"
_CACHE: dict[str, Task] = {}
FILES: dict[str, str] = {}       # conversation files named for this process (register_file)


def register_file(name: str, path: str) -> None:
    """Name a JSONL file of conversations (lm.tasks.files) as a training task."""
    if name in NAMES:
        raise ValueError(f"sft.files: {name!r} is already a task; choose another name")
    if FILES.get(name, path) != path:
        raise ValueError(f"sft.files: {name!r} already names {FILES[name]}")
    FILES[name] = path
    _CACHE.pop(name, None)


def known() -> tuple:
    """The task names `get` accepts: the library's and the registered files'."""
    return NAMES + tuple(FILES)


class Mixture(Task):
    """Several tasks as one (`"arithmetic_easy:1,word_problems:2"`): example i of a split comes
    from one of them, drawn by weight (seeded), and is graded by the task it came from. For RL
    on several tasks at once (`rl.task`)."""
    kind = "generative"

    def __init__(self, weights: dict[str, float]):
        if not weights or not all(w >= 0 for w in weights.values()) or not sum(weights.values()):
            raise ValueError(f"a task mixture needs positive weights, got {weights}")
        self.parts = {n: get(n) for n in weights}
        self.weights = weights
        self.name = ",".join(f"{n}:{w:g}" for n, w in weights.items())
        self.splits = tuple(s for s in ("train", "rl", "test")
                            if all(s in t.splits for t in self.parts.values()))

    def size(self, split: str):
        self._check_split(split)
        return None

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = random.Random(f"mixture/{self.name}/{split}/{i}")
        name = rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        t = self.parts[name]
        size = t.size(split)
        conv = t.example(split, i if size is None else rng.randrange(size))
        return dict(conv, task=name)

    def evaluate(self, conv: dict, reply: str) -> bool:
        return self.parts[conv["task"]].evaluate(conv, reply)

    def reward(self, conv: dict, reply: str) -> float:
        return self.parts[conv["task"]].reward(conv, reply)

    def max_new_tokens(self) -> int:
        return max(t.max_new_tokens() for t in self.parts.values())


def get(name: str) -> Task:
    """The named task (built once per process; data loads lazily on first use), or a mixture
    "name:weight,name:weight" of named tasks."""
    if ":" in name or "," in name:
        if name not in _CACHE:
            _CACHE[name] = Mixture({n.strip(): float(w or 1) for n, _, w in
                                    (x.partition(":") for x in name.split(",") if x.strip())})
        return _CACHE[name]
    if name in FILES:
        if name not in _CACHE:
            _CACHE[name] = ConversationsFile(name, FILES[name])
        return _CACHE[name]
    if name not in NAMES:
        raise KeyError(f"unknown task {name!r}; known: {list(known())}")
    if name not in _CACHE:
        _CACHE[name] = FACTORIES[name]()
    return _CACHE[name]
