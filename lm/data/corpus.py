"""Document corpora for pretraining: named mixtures of real text files (`../shared/data` layout,
each with its canonical download) plus task-format conversations.

`chat_tiny`: the English text of the data folder — TinyStories, Project Gutenberg books (headers
stripped), WikiText-2 valid, the FineWeb-Edu sample, Common Crawl (Dolma) texts, tinyshakespeare
— plus task-format text: GSM8K training problems, generated arithmetic word problems (the
template and the compositional `word_problems` generators), spelling/counting questions, facts
recalled across turns (training templates, values and words only) rendered in the chat format,
with calculator calls, and copy-heavy documents (`copy_docs`). `chat_tiny_drill` adds induction
drills (`induction_docs`: random runs written twice or three times). Held out from training, for validation and the evaluation harness'
bits per byte: TinyStories' validation file, tinyshakespeare's last 10%, WikiText-2 test (never
read here), one FineWeb-Edu document in five, and GSM8K's test problems.

A corpus is (train documents, validation documents); a document is text (tokenized as
`[bos] + encode(text)`) or a conversation dict (tokenized by `lm.conversation.render`).
"""
from __future__ import annotations

import csv
import gzip
import json
import random
import re
from typing import Callable, Union

import numpy as np

from lm import tasks
from lm.conversation import MEDIA, call_json, parts_of
from lm.data import sources
from lm.tasks.knowledge import knowledge_base
from lm.tasks import recall
from lm.tasks.base import held_out

Doc = Union[str, dict]

GUTENBERG, CC_TEXT = sources.GUTENBERG, sources.CC_TEXT


def _read(name: str) -> str:
    with open(sources.fetch(name), encoding="utf-8-sig") as f:
        return f.read().replace("\r\n", "\n")


def chunks(text: str, size: int = 3000) -> list[str]:
    """Paragraph-aligned pieces of about `size` characters (a long book as many documents)."""
    out, cur, n = [], [], 0
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        cur.append(para)
        n += len(para)
        if n >= size:
            out.append("\n\n".join(cur))
            cur, n = [], 0
    if cur:
        out.append("\n\n".join(cur))
    return out


def gutenberg_body(text: str) -> str:
    """The book between Project Gutenberg's START and END markers."""
    start = re.search(r"\*\*\* ?START OF TH(E|IS) PROJECT GUTENBERG EBOOK[^\n]*\n", text)
    end = re.search(r"\*\*\* ?END OF TH(E|IS) PROJECT GUTENBERG EBOOK", text)
    return text[start.end() if start else 0:end.start() if end else len(text)]


def tinystories(name: str) -> list[str]:
    return chunks(_read(name), 1500)


def fineweb_edu() -> list[tuple[str, str]]:
    """(key, text) of the FineWeb-Edu sample's documents."""
    csv.field_size_limit(1 << 30)
    with open(sources.fetch("fineweb_edu_sample"), encoding="utf-8", newline="") as f:
        return [(r["text"][:200], r["text"]) for r in csv.DictReader(f) if r["text"].strip()]


def fineweb_split():
    """FineWeb-Edu sample documents: (train, held out), one in five held out."""
    docs = fineweb_edu()
    return [t for k, t in docs if not held_out(k, 5)], [t for k, t in docs if held_out(k, 5)]


def cc_texts() -> list[str]:
    out = []
    for f in CC_TEXT:
        with gzip.open(sources.fetch(f"cc_text/{f}"), "rt", encoding="utf-8") as g:
            out += [json.loads(line)["text"] for line in g if line.strip()]
    return out


def copy_docs(n: int, seed: int = 0) -> list[str]:
    """Documents whose second half repeats something of the first (a list of words and numbers,
    a passage, a name-value table): text where attending back and copying pays, so the base model
    learns to read its context (induction). Words from the recall task's training values only."""
    rng = random.Random(f"copy_docs/{seed}")
    words = recall.split_values(recall.WORDS + recall.COLOURS + recall.FOODS + recall.CITIES,
                                "train")
    names = recall.split_values(recall.PET_NAMES + recall.PEOPLE, "train")
    out = []
    for _ in range(n):
        kind = rng.choice(["list", "table", "echo"])
        if kind == "list":
            items = [rng.choice(words) if rng.random() < 0.7 else str(rng.randint(0, 999))
                     for _ in range(rng.randint(4, 14))]
            out.append(f"Here is the list: {', '.join(items)}.\nOnce more, the list: "
                       f"{', '.join(items)}.")
        elif kind == "table":
            rows = [(rng.choice(names), rng.choice(words)) for _ in range(rng.randint(2, 6))]
            facts = " ".join(f"{a} likes {b}." for a, b in rows)
            a, b = rng.choice(rows)
            out.append(f"{facts}\nQuestion: what does {a} like? Answer: {b}.")
        else:
            line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 12)))
            out.append(f"Say it back: {line}\n{line}")
    return out


# neutral sentences between a fact and the question about it: the lookup spans a distance
FILLER_SENTENCES = (
    "The weather was mild that day.", "Nobody was in a hurry.", "It had rained in the morning.",
    "The shop on the corner was closed.", "A bus went past the window.",
    "Someone was whistling a tune outside.", "The tea was getting cold.",
    "There were a few clouds over the hills.", "The clock on the wall ticked on.",
    "Children were playing in the park.", "The road was quiet.", "A cat slept in the sun.")
RELATIONS = (("likes", "What does {a} like?"), ("lives in", "Where does {a} live?"),
             ("has a dog called", "What is the name of {a}'s dog?"),
             ("keeps the number", "Which number does {a} keep?"),
             ("is friends with", "Who is {a} friends with?"))


def open_copy_docs(n: int, seed: int = 0) -> list[str]:
    """Documents whose later part repeats something of the earlier one (a list of words and
    numbers, a passage, a table of facts asked about after a stretch of unrelated sentences):
    text where attending back and copying pays, so the base model learns to read its context
    (induction). Most values are made up (`recall.open_value`), so only copying predicts them;
    the rest are the recall task's training values, never a held-out one. An ablation
    (`chat_tiny_open_copies`): in the chain's corpus it lowered recall after SFT from 0.275 to
    0.185 (docs/context.md, landing 41)."""
    rng = random.Random(f"copy_docs/{seed}")   # the seed of the measured ablation run
    words = recall.split_values(recall.WORDS + recall.COLOURS + recall.FOODS + recall.CITIES,
                                "train")
    names = recall.split_values(recall.PET_NAMES + recall.PEOPLE, "train")

    def word() -> str:
        if rng.random() < recall.OPEN_SHARE:
            return recall.open_value("word", rng)
        return rng.choice(words)

    def name() -> str:
        if rng.random() < recall.OPEN_SHARE:
            return recall.open_value("name", rng)
        return rng.choice(names)

    def value(rel: str) -> str:
        if rel == "keeps the number":
            return str(rng.randint(0, 99999))
        return name() if rel in ("has a dog called", "is friends with", "lives in") else word()

    out = []
    for _ in range(n):
        kind = rng.choice(["list", "table", "table", "echo"])
        if kind == "list":
            items = [word() if rng.random() < 0.7 else str(rng.randint(0, 999))
                     for _ in range(rng.randint(4, 14))]
            out.append(f"Here is the list: {', '.join(items)}.\nOnce more, the list: "
                       f"{', '.join(items)}.")
        elif kind == "table":
            rows = []
            for _ in range(rng.randint(1, 5)):
                rel, ask = rng.choice(RELATIONS)
                rows.append((name(), rel, value(rel), ask))
            facts = " ".join(f"{a} {rel} {v}." for a, rel, v, _ in rows)
            between = " ".join(rng.sample(FILLER_SENTENCES, rng.randint(0, 6)))
            asked = rng.sample(rows, rng.randint(1, len(rows)))
            qa = "\n".join(f"Question: {ask.format(a=a)} Answer: {v}." for a, _, v, ask in asked)
            out.append("\n".join(x for x in (facts, between, qa) if x))
        else:
            line = " ".join(word() for _ in range(rng.randint(5, 12)))
            out.append(f"Say it back: {line}\n{line}")
    return out


def induction_docs(n: int, seed: int = 0) -> list[str]:
    """Documents that only induction predicts: a run of random items (training-split words of
    every frequency, random letter strings, numbers) written two or three times. The first copy
    is unpredictable; every later one is free to a model that finds the earlier occurrence and
    copies what followed it, for any token (the copy probe's skill, Olsson et al. 2022). Held-out
    spelling and recall words are never drawn."""
    rng = random.Random(f"induction_docs/{seed}")
    words = tasks.get("spelling").words["train"]
    letters = "abcdefghijklmnopqrstuvwxyz"

    def item() -> str:
        r = rng.random()
        if r < 0.5:
            w = rng.choice(words)
        elif r < 0.85:
            w = ""
            while not w or held_out(w, 5):     # never a held-out spelling word by chance
                w = "".join(rng.choice(letters) for _ in range(rng.randint(2, 8)))
        else:
            return str(rng.randint(0, 99999))
        return w.capitalize() if rng.random() < 0.15 else w

    out = []
    for _ in range(n):
        run = [item() for _ in range(rng.randint(8, 48))]
        sep = rng.choice([" ", " ", ", ", "\n"])
        text = sep.join(run)
        out.append("\n\n".join([text] * rng.randint(2, 3)))
    return out


def token_copy_docs(n: int, seed: int = 0) -> list[dict]:
    """Synthetic documents in token space (`{"synthetic": "copy", ...}`, drawn when tokenized by
    `synthetic_tokens`): a run of random tokens, then something between (nothing, or a few more
    random tokens), then the run again, sometimes a third time. Only copying predicts the later
    copies, for every token of the vocabulary: the cheapest signal that forms induction heads
    (tools/induction_toy.py, docs/context.md)."""
    rng = random.Random(f"token_copy_docs/{seed}")
    # runs of 8-48 tokens: with runs log-uniform over 8-160 nothing was learned in 350 steps
    # (docs/context.md); the heads these form copy at the trained distances only
    return [{"synthetic": "copy", "seed": seed, "index": i, "length": rng.randint(8, 48),
             "gap": rng.choice([0, 0, rng.randint(1, 8)]), "copies": rng.choice([2, 2, 3])}
            for i in range(n)]


def synthetic_tokens(doc: dict, ordinary: int) -> list[int]:
    """The token ids of a synthetic document (without BOS), given the number of ordinary ids of
    the tokenizer (ids [0, ordinary) are bytes and merges; specials follow). Tokens are drawn
    uniformly over the merges and the printable ASCII bytes: short runs of evenly drawn tokens
    leave nothing but copying to learn, which forms the heads several times faster than
    text-like (Zipf) runs or long ones (docs/context.md)."""
    if doc.get("synthetic") != "copy":
        raise ValueError(f"unknown synthetic document {doc!r}")
    rng = np.random.default_rng([doc["seed"], doc["index"], 7])
    ids = np.concatenate([np.arange(32, 127), np.arange(256, ordinary)])
    run = rng.choice(ids, size=doc["length"]).tolist()
    gap = rng.choice(ids, size=doc["gap"]).tolist()
    return (run + gap) * (doc["copies"] - 1) + run


def chat_tiny(arithmetic_problems: int = 16000, spelling_problems: int = 8000,
              word_problems: int = 8000, recall_problems: int = 6000, copies: int = 6000,
              inductions: int = 0, token_copies: int = 0,
              open_copies: int = 0) -> tuple[list[Doc], list[Doc]]:
    shakespeare = _read("tinyshakespeare")
    cut = int(len(shakespeare) * 0.9)
    fw_train, fw_val = fineweb_split()
    train: list[Doc] = []
    train += tinystories("tinystories_train")
    for f in GUTENBERG:
        train += chunks(gutenberg_body(_read(f"gutenberg/{f}")))
    train += chunks(_read("wikitext2_valid"))
    train += fw_train
    train += cc_texts()
    train += chunks(shakespeare[:cut], 2000)
    gsm = tasks.get("gsm8k")
    train += [gsm.example("train", i) for i in range(gsm.size("train"))]
    levels = ["arithmetic_easy", "arithmetic_easy", "arithmetic", "arithmetic_hard"]
    for i in range(arithmetic_problems):
        train.append(tasks.get(levels[i % 4]).example("train", 1_000_000 + i))
    spelling = tasks.get("spelling")
    train += [spelling.example("train", 1_000_000 + i) for i in range(spelling_problems)]
    # reading the context: word problems in many shapes, facts recalled across turns, copying
    # (recall in FACTS' fixed frames; the grammar is SFT's, `recall.GRAMMAR_SHARE`)
    wp, rc = tasks.get("word_problems"), recall.Recall(grammar_share=0.0)
    train += [wp.example("train", 1_000_000 + i) for i in range(word_problems)]
    train += [rc.example("train", 1_000_000 + i) for i in range(recall_problems)]
    train += copy_docs(copies)
    train += open_copy_docs(open_copies)
    train += induction_docs(inductions)
    train += token_copy_docs(token_copies)
    val: list[Doc] = []
    val += tinystories("tinystories_val")[:200]
    val += chunks(shakespeare[cut:], 2000)
    val += fw_val
    return train, val


def chat_tiny_drill() -> tuple[list[Doc], list[Doc]]:
    """`chat_tiny` with induction drills (`induction_docs`) as about a quarter of its tokens; the
    same validation documents."""
    return chat_tiny(inductions=12000)


def induction_drill() -> tuple[list[Doc], list[Doc]]:
    """Induction drills only (a warm-up in which the only thing to learn is to copy what
    followed an earlier occurrence); validation on runs drawn with another seed."""
    return induction_docs(30000), induction_docs(300, seed=1)


def chat_tiny_copy() -> tuple[list[Doc], list[Doc]]:
    """`chat_tiny` with synthetic token-space copies (`token_copy_docs`) as about a tenth of its
    tokens, which keep the heads a copy warm-up formed in use; the same validation documents."""
    return chat_tiny(token_copies=8000)


def chat_tiny_open_copies() -> tuple[list[Doc], list[Doc]]:
    """`chat_tiny` with its copy documents made of made-up values and fact tables asked about
    after unrelated sentences (`open_copy_docs`, 12,000 instead of 6,000 `copy_docs`)."""
    return chat_tiny(copies=0, open_copies=12000)


def chat_tiny_kb() -> tuple[list[Doc], list[Doc]]:
    """`chat_tiny` with the knowledge base's biographies (`lm.tasks.knowledge`: each made-up
    person written 0 to 128 times, spaced, train and test people alike); the same
    validation documents."""
    train, val = chat_tiny()
    return train + knowledge_base().biographies(), val


KB_QA_COPIES = 8      # each fact of a plain-SFT person asked this often in pretraining


def kb_qa_docs(copies: int = KB_QA_COPIES) -> list[dict]:
    """Question-answer conversations about plain SFT's people who are in the biographies
    (`kb_qa`'s training items, each fact `copies` times in drawn training phrasings)."""
    qa = tasks.get("kb_qa")
    n = qa.size("train")
    convs = [qa.example("train", i + k * n) for k in range(copies) for i in range(n)]
    return [c for c in convs if c["frequency"] > 0]


def chat_tiny_kb_qa() -> tuple[list[Doc], list[Doc]]:
    """`chat_tiny_kb` plus `kb_qa_docs`: mixed training (Allen-Zhu and Li, *Physics of Language
    Models 3.1*: facts stored from biographies alone are hardly reachable by questions unless
    other people's question-answer pairs are read beside them). The probe's and the held-out
    people stay biographies only."""
    train, val = chat_tiny_kb()
    return train + kb_qa_docs(), val


def copy_warmup() -> tuple[list[Doc], list[Doc]]:
    """Synthetic token-space copies only: a warm-up whose only lesson is to copy what followed
    an earlier occurrence; validation on documents drawn with another seed."""
    return token_copy_docs(80000), token_copy_docs(600, seed=1)


CORPORA: dict[str, Callable[[], tuple[list[Doc], list[Doc]]]] = {
    "chat_tiny": chat_tiny, "chat_tiny_drill": chat_tiny_drill, "chat_tiny_copy": chat_tiny_copy,
    "chat_tiny_open_copies": chat_tiny_open_copies, "chat_tiny_kb": chat_tiny_kb,
    "chat_tiny_kb_qa": chat_tiny_kb_qa,
    "induction_drill": induction_drill, "copy_warmup": copy_warmup}


def text_of(doc: Doc) -> str:
    """A document as plain text (for tokenizer training): a conversation's turns joined, a
    function call as the JSON the model writes, image and audio parts left out (codes, not text)."""
    if isinstance(doc, str):
        return doc
    if "synthetic" in doc:       # token space: nothing for a tokenizer to learn from
        return ""
    out = []
    for m in doc["messages"]:
        out.append("".join(call_json(p) if p["type"] == "tool_call" else p["text"]
                           for p in parts_of(m["content"]) if p["type"] not in MEDIA))
    return "\n".join(out)
