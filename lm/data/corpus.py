"""Document corpora for pretraining: named mixtures of real text files (`../shared/data` layout,
each with its canonical download) plus task-format conversations.

`chat_tiny`: the English text of the data folder — TinyStories, Project Gutenberg books (headers
stripped), WikiText-2 valid, the FineWeb-Edu sample, Common Crawl (Dolma) texts, tinyshakespeare
— plus task-format text: GSM8K training problems, generated arithmetic word problems and
spelling/counting questions (training templates and words only) rendered in the chat format, with
calculator calls. Held out from training, for validation and the evaluation harness'
bits per byte: TinyStories' validation file, tinyshakespeare's last 10%, WikiText-2 test (never
read here), one FineWeb-Edu document in five, and GSM8K's test problems.

A corpus is (train documents, validation documents); a document is text (tokenized as
`[bos] + encode(text)`) or a conversation dict (tokenized by `lm.conversation.render`).
"""
from __future__ import annotations

import csv
import gzip
import json
import re
from typing import Callable, Union

from lm import tasks
from lm.conversation import parts_of
from lm.data import sources
from lm.tasks.base import held_out

Doc = Union[str, dict]

GUTENBERG = {  # file under gutenberg/ -> canonical URL
    "11-0.txt": "https://www.gutenberg.org/files/11/11-0.txt",
    "pg1342.txt": "https://www.gutenberg.org/cache/epub/1342/pg1342.txt",
    "pg1661.txt": "https://www.gutenberg.org/cache/epub/1661/pg1661.txt",
    "pg120.txt": "https://www.gutenberg.org/cache/epub/120/pg120.txt",
    "pg161.txt": "https://www.gutenberg.org/cache/epub/161/pg161.txt",
    "829-0.txt": "https://www.gutenberg.org/files/829/829-0.txt",
    "pg2701.txt": "https://www.gutenberg.org/cache/epub/2701/pg2701.txt",
    "pg84.txt": "https://www.gutenberg.org/cache/epub/84/pg84.txt",
}
CC_TEXT = {  # Dolma's test fixtures (CCNet-processed Common Crawl)
    f"cc_en_head-{n}.jsonl.gz": "https://raw.githubusercontent.com/allenai/dolma/main/tests/data/"
                                f"multiple_files/cc_en_head-{n}.jsonl.gz" for n in ("0091", "0174")}
for _f, _u in GUTENBERG.items():
    sources.FILES.setdefault(f"gutenberg/{_f}", sources.RemoteFile(f"gutenberg/{_f}", _u))
for _f, _u in CC_TEXT.items():
    sources.FILES.setdefault(f"cc_text/{_f}", sources.RemoteFile(f"cc_text/{_f}", _u))


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


def chat_tiny(arithmetic_problems: int = 16000, spelling_problems: int = 8000
              ) -> tuple[list[Doc], list[Doc]]:
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
    val: list[Doc] = []
    val += tinystories("tinystories_val")[:200]
    val += chunks(shakespeare[cut:], 2000)
    val += fw_val
    return train, val


CORPORA: dict[str, Callable[[], tuple[list[Doc], list[Doc]]]] = {"chat_tiny": chat_tiny}


def text_of(doc: Doc) -> str:
    """A document as plain text (for tokenizer training): a conversation's turns joined."""
    if isinstance(doc, str):
        return doc
    out = []
    for m in doc["messages"]:
        if m["role"] == "assistant":
            out.append("".join(p["text"] for p in parts_of(m["content"])))
        else:
            out.append(m["content"])
    return "\n".join(out)
