"""A synthetic labeller: a programmatic preference over replies to the project's own tasks, so the
tiny models get unlimited preference pairs *and* a true reward to measure a reward model and a
policy against (issue 27; RLHF's "human" replaced by rules whose intent is known).

The true reward of a reply (`true_reward`, every rule here and nowhere else):

    correct    +1.0   the task's own grader accepts it (`task.evaluate`)
    on topic   +0.2   it mentions something of the question (a number, or a word of 4+ letters)
    concise    -0.05  per 5 words beyond the reference reply's length + 5 (at most -0.5)

so a correct, on-topic, concise reply scores about 1.2; a wrong reply that restates the
question's numbers 0.2; rambling costs up to half a point. `label` prefers the reply with the
higher true reward and flips the label with probability `noise` (the rate of a careless labeller;
ties give no pair).

`pairs(task_names, n, seed, noise)`: for training prompts of the named tasks, two different
variants of the reference reply (`kinds`: the chosen's and the rejected's) — the reference itself, a wrong final answer, the reference with
rambling appended, a polite opener ("Sure! ...") in front, another example's reply (off topic) —
labelled as above. Held out as every preference source is (`lm.data.preferences.split`).
"""
from __future__ import annotations

import copy
import random
import re
from typing import Any, Optional

from lm import conversation as chat
from lm import tasks as task_lib

RAMBLE = ["I hope this helps.", "Let me know if you have any other questions.",
          "This is a good question to think about.", "There are many ways to look at it.",
          "Thank you for asking me this.", "I am always happy to help with things like this.",
          "It is important to be careful with questions like this one."]
OPENERS = ["Sure! ", "Of course. ", "Happy to help. ", "Great question! "]
VARIANTS = ("reference", "wrong", "rambling", "polite", "off_topic")
_WORD = re.compile(r"[A-Za-z]{4,}|\d+")


def text_of(reply: Any) -> str:
    """A reply (text or chat parts) as the text the grader reads."""
    return reply if isinstance(reply, str) else chat.reply_text(chat.parts_of(reply))


def words(text: str) -> int:
    return len(text.split())


def true_reward(task, conv: dict, reply: Any) -> float:
    """The labeller's reward of `reply` to the conversation `conv` (rules in the module doc)."""
    text = text_of(reply)
    question = " ".join(m["content"] for m in conv["messages"] if m["role"] == "user"
                        and isinstance(m["content"], str))
    r = 1.0 if task.evaluate(conv, text) else 0.0
    asked = {w.lower() for w in _WORD.findall(question)}
    if asked & {w.lower() for w in _WORD.findall(text)}:
        r += 0.2
    last = conv["messages"][-1]
    if last["role"] == "assistant":            # the reference reply sets the length budget
        extra = words(text) - words(text_of(last["content"])) - 5
        r -= min(0.5, 0.05 * (max(0, extra) // 5))
    return r


def _replace_answer(reply: Any, answer: str, wrong: str) -> Any:
    """The reply with its final answer (in its text parts after the last tool output) changed."""
    if isinstance(reply, str):
        return reply.replace(answer, wrong)
    parts = copy.deepcopy(chat.parts_of(reply))
    for p in parts:
        if p["type"] == "text":
            p["text"] = re.sub(rf"(?<!\d){re.escape(answer)}(?!\d)", wrong, p["text"])
        elif p["type"] == "output":
            p["text"] = p["text"].replace(answer, wrong)
    return parts


def variant(kind: str, task, conv: dict, rng: random.Random, other: Optional[dict] = None):
    """One reply to `conv` (whose last message is the reference reply); None if it does not
    apply (a wrong answer needs a numeric one)."""
    ref = conv["messages"][-1]["content"]
    if kind == "reference":
        return ref
    if kind == "wrong":
        ans = str(conv.get("answer", ""))
        if not re.fullmatch(r"-?\d+", ans):
            return None
        return _replace_answer(ref, ans, str(int(ans) + rng.choice([-3, -2, -1, 1, 2, 5, 10])))
    if kind == "rambling":
        tail = " " + " ".join(rng.sample(RAMBLE, rng.randint(3, 6)))
        return ref + tail if isinstance(ref, str) else \
            chat.parts_of(ref) + [{"type": "text", "text": tail}]
    if kind == "polite":
        opener = rng.choice(OPENERS)
        return opener + ref if isinstance(ref, str) else \
            [{"type": "text", "text": opener}] + chat.parts_of(ref)
    if kind == "off_topic":
        return None if other is None else other["messages"][-1]["content"]
    raise ValueError(f"unknown variant {kind!r}; known: {list(VARIANTS)}")


def label(task, conv: dict, a: Any, b: Any, rng: random.Random, noise: float):
    """(chosen, rejected, true margin) by the true reward, the label flipped with probability
    `noise`; None on a tie."""
    ra, rb = true_reward(task, conv, a), true_reward(task, conv, b)
    if ra == rb:
        return None
    chosen, rejected = (a, b) if ra > rb else (b, a)
    if rng.random() < noise:
        chosen, rejected = rejected, chosen
    return chosen, rejected, abs(ra - rb)


def pairs(task_names: list[str], n: int, seed: int = 0, noise: float = 0.1) -> list[dict]:
    """`n` labelled pairs over training prompts of the named tasks, as records of
    `lm.data.preferences.json_pair`'s shape plus the task name (for its true reward)."""
    rng = random.Random(f"labeller/{seed}")
    out, i = [], 0
    while len(out) < n:
        name = task_names[i % len(task_names)]
        task = task_lib.get(name)
        conv = task.example("train", 2_000_000 + i)
        other = task.example("train", 3_000_000 + i)
        i += 1
        kinds = rng.sample(VARIANTS, 2)
        a, b = (variant(k, task, conv, rng, other) for k in kinds)
        if a is None or b is None or a == b:
            continue
        got = label(task, conv, a, b, rng, noise)
        if got is None:
            continue
        chosen, rejected, _ = got
        kind = dict(zip((id(a), id(b)), kinds))
        out.append({"messages": conv["messages"][:-1], "chosen": chosen, "rejected": rejected,
                    "task": name, "answer": conv.get("answer"),
                    "kinds": [kind[id(chosen)], kind[id(rejected)]]})
    return out
