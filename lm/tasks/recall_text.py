"""Recall from found sentences (`recall_text`): the user's turn is one or two sentences people
wrote (TinyStories, the Gutenberg books), one word of a kind in it (a colour, a food, a person's
name, a number, a city) replaced by a value of that kind, and a later turn asks for the word by
its kind ("Which colour did I mention?").

Why: after the chain's SFT, held-out questions are read (0.93 with training's statements) and
held-out statements are not (0.67 with training's questions): every training statement comes
from a few hundred written frames, and the model finds the value where those frames put it
(docs/context.md, "Four times the SFT steps"). Here no frame says where the value stands; only
what the word is, and where a word of its kind can stand in English, do. Values are training
values (six in ten made up, as in `recall`), so the word itself is no cue beyond its position.

The `test` split takes its sentences from TinyStories' validation file, its values from the held-
out pools and its questions from `recall`'s held-out ones: reading a fact inside prose no
generator wrote.
"""
from __future__ import annotations

import functools
import random
import re
from typing import Optional

from lm.data import sources
from lm.tasks.base import read_text_file
from lm.tasks.recall import (ACKS, ANSWERS, ASK_ENDINGS, ASK_OPENERS, CITIES, COLOURS, FACTS,
                             FILLER, FOODS, PEOPLE, Recall, _sentence, _value, allowed,
                             held_out_values, type_ask)

# the words that mark a sentence as a carrier of a kind (the value replaces them); test values
# among them are replaced like any other, and a carrier that keeps one anywhere is dropped.
# "orange" and "olive" are fruit as often as colours, so neither marks a colour.
MARKERS = {
    "colour": sorted(set(COLOURS) - {"orange", "olive"} | {"gray", "golden", "scarlet"}),
    "food": sorted(set(FOODS) | set(
        "cake cakes cookie cookies bread soup pie apple apples candy sandwich sandwiches cheese "
        "carrots carrot banana bananas pudding porridge meat eggs potatoes stew biscuits jam "
        "honey cereal muffin pancake sausages bacon toast beans peas grapes strawberries cherries "
        "popcorn spaghetti mutton beef pears plums nuts oatmeal".split())),
    "friend": sorted(set(PEOPLE) | set(
        "Lily Ben Tom Timmy Jack Sam Mia Anna Tim Max Sara Lucy Bob Molly John Sarah Sue Jane "
        "Joe Daisy Jill Lila Tommy Benny Sally Jen Jimmy Billy Andy Amy Mary Elly Frank James "
        "Emma Jenny Gary Jake Leo Grace Ella Jim Joy Isabel Alice Elizabeth Darcy "
        "Bingley Harriet Elinor Marianne Edward Henry Robert William Charles George "
        "Catherine Margaret Anne Lydia Kitty Holmes Watson Victor Justine Clerval Ahab Ishmael "
        "Queequeg Starbuck".split())),
    "number": [],          # digit strings and "two" to "twelve" (`_NUMBER`)
    "city": sorted(set(CITIES) | set(
        "London Liverpool Edinburgh Oxford Cambridge Bath Brighton Manchester Venice Florence "
        "Moscow Petersburg Amsterdam Brussels Marseilles Calais Dover Bristol Glasgow".split())),
}
_NUMBER = re.compile(r"\b(?:\d{1,5}|two|three|four|five|six|seven|eight|nine|ten|eleven|"
                     r"twelve)\b")
_CASED = {"friend", "city"}                  # names match as written; other words lower case
# a sentence ends at . ! or ? and a space, but not after a title ("Mr. Darcy")
_SENTENCE_END = re.compile(r"(?<!\bMr\.)(?<!\bMrs\.)(?<!\bDr\.)(?<!\bSt\.)(?<!\bMs\.)"
                           r"(?<=[.!?])\s+")
_CLEAN = re.compile(r"^[A-Za-z0-9 ,.'!?;:\-]+$")
OPENERS = ["", "", "", "", "I just read this: ", "Here is a line from a book: ",
           "Listen to this: ", "Look what I wrote: ", "From my notes: ", "Story time. ",
           "Something I read today: ", "My kid wrote this: "]
TEXTS = {"train": ["tinystories_train"] + [f"gutenberg/{f}" for f in sources.GUTENBERG],
         "test": ["tinystories_val"]}
MIN_CARRIERS = 20    # a kind with fewer carriers in a split is not asked there


def _any_word(words) -> re.Pattern:
    """Any of `words` as a whole word (longest first, so "cakes" is not read as "cake")."""
    alts = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"\b(?:{alts})\b")


_MARKER_RES = {k: _NUMBER if k == "number" else _any_word(MARKERS[k]) for k in MARKERS}


def sentences(text: str) -> list[str]:
    """The text's sentences (quotes straightened, whitespace collapsed), in order."""
    text = text.replace("\u201c", '"').replace("\u201d", '"').replace("\u2019", "'").replace(
        "\u2018", "'").replace("_", "")
    return [s.strip() for s in _SENTENCE_END.split(" ".join(text.split())) if s.strip()]


def find_carriers(texts: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per kind, (text, marker) for every window of one or two sentences of `texts` (25-300
    plain characters, no double quotes) holding exactly one distinct marker of the kind; for a
    name, no other capitalised word past a sentence's first."""
    out: dict[str, list[tuple[str, str]]] = {k: [] for k in MARKERS}
    for raw in texts:
        sents = [s for s in sentences(raw) if "Gutenberg" not in s]
        for i in range(len(sents)):
            for w in (sents[i:i + 1], sents[i:i + 2]):
                text = " ".join(w)
                if len(w) == 2 and i + 1 >= len(sents) or not 25 <= len(text) <= 300 or \
                        not _CLEAN.match(text) or text.isupper():
                    continue
                for kind, pattern in _MARKER_RES.items():
                    found = set(pattern.findall(text if kind in _CASED else text.lower()))
                    if len(found) != 1 or kind == "friend" and _other_caps(text, found):
                        continue
                    out[kind].append((text, found.pop()))
    return out


@functools.cache
def carriers(split: str) -> dict[str, list[tuple[str, str]]]:
    """`find_carriers` over `split`'s texts; the test split's less any whose wording, the
    marker abstracted, is a training carrier's too (stories repeat their openings)."""
    found = find_carriers([read_text_file(name) for name in TEXTS[split]])
    if split == "test":
        seen = {put_value(t, m, k, "{v}") for k, c in carriers("train").items() for t, m in c}
        found = {k: [(t, m) for t, m in c if put_value(t, m, k, "{v}") not in seen]
                 for k, c in found.items()}
    return found


def _other_caps(text: str, names: set) -> bool:
    """Whether `text` has a capitalised word, not first in its sentence, that is not one of
    `names` or "I"."""
    for s in re.split(r"(?<=[.!?;:])\s+", text):
        for w in re.findall(r"[A-Za-z']+", s)[1:]:
            if w[0].isupper() and w not in names and w != "I" and not w.startswith("I'"):
                return True
    return False


@functools.cache
def _held_pattern() -> re.Pattern:
    """Any held-out value of any pool, as a lower-case whole word."""
    return _any_word(held_out_values())


def put_value(text: str, marker: str, kind: str, value: str) -> str:
    """`text` with every whole-word `marker` (of `kind`'s case rule) replaced by `value`,
    capitalised where it starts a sentence."""
    flags = 0 if kind in _CASED else re.IGNORECASE

    def sub(m: re.Match) -> str:
        start = m.start() == 0 or re.search(r"[.!?]\s+$", text[:m.start()]) is not None
        return value[0].upper() + value[1:] if start and m.group(0)[0].isupper() else value
    return re.sub(rf"\b{re.escape(marker)}\b", sub, text, flags=flags)


class RecallText(Recall):
    """A fact inside found sentences, asked for by its kind; graded as `recall` is."""
    name = "recall_text"

    @functools.cached_property
    def kinds(self) -> dict[str, list[str]]:
        return {s: sorted(k for k, c in carriers(s).items() if len(c) >= MIN_CARRIERS)
                for s in self.splits}

    def example(self, split: str, i: int) -> dict:
        self._check_split(split)
        rng = self.rng(split, i)
        test = split == "test"
        while True:
            kind = rng.choice(self.kinds[split])
            text, marker = rng.choice(carriers(split)[kind])
            value = _value(kind, "test" if test else "train", rng)
            said = put_value(text, marker, kind, value)
            if test or not _held_pattern().search(said.lower()) and allowed(
                    put_value(text, marker, kind, "{v}")):
                break
        msgs = [{"role": "user", "content": said if test else rng.choice(OPENERS) + said},
                {"role": "assistant", "content": rng.choice(ACKS)}]
        for _ in range(rng.choice([0, 0, 1, 2])):
            u, a = rng.choice(FILLER)
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        msgs.append({"role": "user", "content": self._question(kind, test, rng)})
        msgs.append({"role": "assistant", "content": rng.choice(ANSWERS).format(v=value)})
        return {"messages": msgs, "task": self.name, "answer": value, "fact": kind,
                "values": [value]}

    @staticmethod
    def _question(kind: str, test: bool, rng: random.Random) -> str:
        if test:
            return rng.choice(FACTS[kind][2]["test"])
        q: Optional[str] = None
        while q is None:
            q = _sentence(type_ask(kind, rng), "", ASK_OPENERS, ASK_ENDINGS, rng)
        return q
