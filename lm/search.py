"""The search tool beside the calculator (issue 26): the model writes
`<|python_start|>search("query")<|python_end|>` and the engine forces the best-matching passage
of a local corpus into its context, as it forces a calculator result.

    SearchIndex(passages)       BM25 over the passages (bm25s) on words and their character
                                trigrams (`terms`: a near-miss spelling still finds its
                                passage); `search(query)` -> the best passage's text, "No
                                results." when it shares under half of the query's terms, or an
                                "Error: ..." the model sees (empty or over-long query)
    from_file(path)             passages from a JSONL file ({"text": ...} per line) or a text
                                file (one passage per line)
    knowledge_index()           the default corpus: one biography of every person of the
                                synthetic knowledge base (`lm.tasks.knowledge`)
    run_tool(text, index)       the engine's tool: a `search("...")` call searches, anything
                                else goes to the safe calculator
    engine_tool(tokenizer, index)   that tool on token ids (the Engine's `tool_fn`; the server
                                and the chat CLI pass `--search-corpus`'s index)

The tool reads nothing but its passages: a query is only ever matched against them (no paths,
no network), and its text stays text (special-token strings in a query are words to match).
"""
from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Optional, Sequence

from lm.tasks.knowledge import knowledge_base
from lm.tool_use import calculator_tool
from lm.tools_calc import calculate

MAX_QUERY_CHARS = 200
MIN_OVERLAP = 0.5            # share of the query's terms the best passage must contain
_WORD = re.compile(r"\w\w+")
SEARCH_CALL = re.compile(r"""^\s*search\(\s*(["'])(.*)\1\s*\)\s*$""", re.S)


class SearchError(ValueError):
    """A search corpus that cannot be used (missing, unreadable, empty)."""


def terms(text: str, stopwords=frozenset()) -> list[str]:
    """BM25 terms: the lower-cased words (less `stopwords`) and, for words of four or more
    characters, their character trigrams (marked `~`). A made-up name a small model miscopies
    ("Brilbrouthdre" -> "Braskbrouth") still shares most of its trigrams with the passage, and
    an exact match still scores highest."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in stopwords:
            continue
        out.append(w)
        if len(w) >= 4:
            out += ["~" + w[i:i + 3] for i in range(len(w) - 2)]
    return out


class SearchIndex:
    def __init__(self, passages: Sequence[str], name: str = "corpus"):
        passages = [p.strip() for p in passages if p and p.strip()]
        if not passages:
            raise SearchError(f"search corpus {name!r} has no passages: give at least one")
        import bm25s    # 1.2 s (scipy): paid by the first index, not by every engine
        self.name, self.passages = name, passages
        self._stop = frozenset(bm25s.stopwords.STOPWORDS_EN)
        self._terms = [set(terms(p, self._stop)) for p in passages]
        self._index = bm25s.BM25()
        self._index.index([terms(p, self._stop) for p in passages], show_progress=False)

    def search(self, query: str) -> str:
        q = query.strip()
        if not q:
            return "Error: empty search query"
        if len(q) > MAX_QUERY_CHARS:
            return f"Error: search query longer than {MAX_QUERY_CHARS} characters"
        want = terms(q, self._stop)
        if not want:
            return "No results."
        docs, scores = self._index.retrieve([want], k=1, show_progress=False)
        best = int(docs[0, 0])
        if float(scores[0, 0]) <= 0.0 or \
                len(set(want) & self._terms[best]) < MIN_OVERLAP * len(set(want)):
            return "No results."
        return self.passages[best]


def from_file(path: str) -> SearchIndex:
    """Passages from JSONL ({"text": ...}) or plain text (one per line)."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SearchError(f"search corpus {path}: {e.strerror or e}") from None
    passages = []
    for n, line in enumerate(lines, 1):
        if path.endswith(".jsonl") and line.strip():
            try:
                passages.append(str(json.loads(line)["text"]))
            except (ValueError, KeyError, TypeError):
                raise SearchError(f"search corpus {path}:{n}: not a JSON object with a "
                                  f"\"text\" field") from None
        else:
            passages.append(line)
    return SearchIndex(passages, name=path)


@lru_cache(maxsize=1)
def knowledge_index() -> SearchIndex:
    return SearchIndex([p.biography(0) for p in knowledge_base().people], name="knowledge base")


def run_tool(text: str, index: Optional[SearchIndex] = None) -> str:
    """A tool call's text -> its result text: `search("...")` searches `index` (default: the
    knowledge base), anything else is a calculator expression."""
    m = SEARCH_CALL.match(text)
    if m is None:
        return calculate(text)
    return (index or knowledge_index()).search(m.group(2))


def search_call(query: str) -> str:
    """The call text the model writes (and SFT data teaches) for `query`."""
    return f'search("{query}")'


def engine_tool(tokenizer, index: Optional[SearchIndex] = None):
    """The engine's tool on token ids: `run_tool` over `index` (default: the knowledge base)."""
    return calculator_tool(tokenizer.encode, tokenizer.decode,
                           calculator=lambda text: run_tool(text, index))
