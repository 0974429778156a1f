"""Identity ("knowledge of self"): synthetic conversations about the assistant's name, maker,
nature, abilities and limits, generated from the editable `identity.json` beside this file.

Train phrasings are the listed ones plus every `frames` x `cores` combination (the frame of a
question is shared by all topics, so it never gives the topic away). The `test` split asks only
the held-out phrasings of each topic; a reply is correct when it contains one of the topic's
keywords (whole words, any case). Infinite and seeded (varied casing, punctuation and openers).
"""
from __future__ import annotations

import json
import os
import re
from functools import cached_property

from lm.conversation import conversation
from lm.tasks.base import Generated

OPENERS = ["Hey, ", "Quick question: ", "Hi! ", "Sorry, ", "Um, ", "OK so ", "Hello. "]
DEFAULT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "identity.json")
STUDENT_NAME = "Pico"     # identity_student: a distilled student that must not be its teacher
# names a model with no identity of its own borrows from the web text it read
OTHER_ASSISTANTS = ("ChatGPT", "GPT-4", "GPT-3", "OpenAI", "Claude", "Anthropic", "Gemini", "Bard",
                    "Google", "Siri", "Alexa", "Cortana", "Copilot", "Llama", "Meta", "Mistral")


class Identity(Generated):
    """`assistant`: another name for the assistant than the file's (a student that must not take
    its teacher's name, issue 28); `topics`: only these topics (e.g. ("name",): who-am-I
    questions, graded on the name)."""
    name = "identity"
    kind = "generative"

    def __init__(self, seed: int = 0, path: str = DEFAULT_FILE, *, name: str = "identity",
                 assistant: str = "", topics: tuple = ()):
        self.seed, self.path, self.name = seed, path, name
        self.assistant, self.topics = assistant, tuple(topics)

    @cached_property
    def spec(self) -> dict:
        with open(self.path, encoding="utf-8") as f:
            spec = json.load(f)
        fill = {k: spec[k] for k in ("name", "maker", "home")}
        if self.assistant:
            fill["name"] = self.assistant
        if self.topics:
            unknown = set(self.topics) - {t["topic"] for t in spec["topics"]}
            if unknown:
                raise ValueError(f"{self.path}: no topic {sorted(unknown)}")
            spec["topics"] = [t for t in spec["topics"] if t["topic"] in self.topics]

        def sub(s: str, capital: bool = False) -> str:
            s = s.format(**fill)
            return s[0].upper() + s[1:] if capital and s else s
        for t in spec["topics"]:
            for k in ("train", "test", "answers", "keywords"):
                t[k] = [sub(x, capital=k == "answers") for x in t[k]]
            framed = [f.format(q=c) for c in t.get("cores", []) for f in spec.get("frames", [])]
            t["train"] = list(dict.fromkeys(t["train"] + [sub(q, capital=True) for q in framed]))
        norm = lambda q: re.sub(r"[^a-z0-9' ]", "", q.lower()).strip()
        test = {norm(q) for t in spec["topics"] for q in t["test"]}
        for t in spec["topics"]:
            both = [q for q in t["train"] if norm(q) in test]
            if both:
                raise ValueError(f"{self.path}: topic {t['topic']!r}: {both[0]!r} is also a "
                                 "held-out (test) phrasing")
        return spec

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i, key="identity")
        topic = rng.choice(self.spec["topics"])
        q = rng.choice(topic[split])
        r = rng.random()
        if r < 0.15:
            q = q.lower()
        elif r < 0.25:
            q = q.rstrip("?!.")
        if rng.random() < 0.2:                  # an opener, as people type them
            q = rng.choice(OPENERS) + q
        return conversation(q, rng.choice(topic["answers"]), task=self.name,
                            topic=topic["topic"], keywords=topic["keywords"])

    def evaluate(self, conv: dict, reply: str) -> bool:
        return any(re.search(rf"\b{re.escape(k)}\b", reply, re.IGNORECASE)
                   for k in conv["keywords"])

    def grades(self, conv: dict, reply: str) -> dict[str, bool]:
        """Knowledge of self (issue 26): does the reply name this assistant, its maker, or
        claim to be another assistant (`OTHER_ASSISTANTS`)?"""
        has = lambda w: re.search(rf"\b{re.escape(w)}\b", reply, re.IGNORECASE) is not None
        name = self.assistant or self.spec["name"]
        return {"names_self": has(name), "names_maker": has(self.spec["maker"]),
                "claims_other": any(has(w) for w in OTHER_ASSISTANTS if w.lower() != name.lower())}

    def max_new_tokens(self) -> int:
        return 96
