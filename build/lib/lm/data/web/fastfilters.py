"""Faster blocks that make the same decisions as datatrove's, for the recipe's fast profile.

Why they exist (measured on the shared WARCs + benchmark pages, one core): once extraction is fast
(resiliparse ~4 ms/page), datatrove's Gopher repetition, C4 and FineWeb filters cost ~40 ms/page
together, and the URL filter ~4 s per task to load its block lists. Each class here subclasses the
datatrove block (same constructor, same thresholds, same drop reasons, same check order) and
changes only *how* the same quantities are computed:

- **Words.** datatrove's English word splitter runs the whole spaCy pipeline (`spacy.blank("en")`
  + sentencizer) on every document, again in each filter. spaCy's tokenizer splits the text at
  whitespace runs and tokenizes each chunk independently (its own cache is keyed by chunk), and
  datatrove drops whitespace tokens; so `fast_words(text)` = concatenation over `text.split()` of the
  chunk's spaCy tokens, with a process-wide chunk cache. Same list of words, ~10-30× faster.
- **C4 sentences.** datatrove runs the spaCy sentencizer on every kept line, but the count only
  matters while it is below `min_num_sentences` (5): we stop counting there.
- **n-grams.** Gopher's n-gram keys are slices of one pre-joined string instead of fresh joins.
- **URL block lists.** The 4.5M blocklisted domains/URLs of datatrove's bundled UT1 tarball become a
  sorted array of 64-bit hashes, built once per machine and memory-mapped by every task; membership
  is a binary search (a false positive needs a 64-bit collision). tldextract uses its bundled
  suffix snapshot without trying the network (what datatrove's URLFilter falls back to offline).

`tests/test_web.py` checks decision (and drop-reason, and output-text) equality with datatrove's
blocks on every page of the shared data and on crafted edge cases.
"""
from __future__ import annotations

import hashlib
import os
import tarfile
from collections import Counter

import numpy as np
from datatrove.io import safely_create_file
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    URLFilter,
)
from datatrove.pipeline.filters.c4_filters import (
    CITATION_REGEX,
    ELLIPSIS,
    END_PUNCTUATION,
    POLICY_SUBSTRINGS,
)
from datatrove.pipeline.filters.gopher_quality_filter import STOP_WORDS  # noqa: F401
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.pipeline.filters.url_filter import get_list
from datatrove.utils._import_utils import ASSETS_PATH
from datatrove.utils.text import PUNCTUATION_SET, split_into_sentences
from datatrove.utils.word_tokenizers import load_word_tokenizer
from tldextract import TLDExtract

# ---- words ---------------------------------------------------------------------------------------

_CHUNKS: dict[str, tuple[str, ...]] = {}
_CHUNK_CACHE_MAX = 2_000_000
_NLP = {}


def _spacy(language: str):
    nlp = _NLP.get(language)
    if nlp is None:
        nlp = _NLP[language] = load_word_tokenizer(language).tokenizer  # the same spaCy object
    return nlp


def fast_words(text: str, language: str = "en") -> list[str]:
    """== datatrove.utils.text.split_into_words(text, language) for spaCy-tokenized languages."""
    cache = _CHUNKS
    out: list[str] = []
    tok = None
    for chunk in text.split():
        words = cache.get(chunk)
        if words is None:
            if tok is None:
                tok = _spacy(language).tokenizer
            words = tuple(w for w in (t.text.strip() for t in tok(chunk)) if w)
            if len(cache) >= _CHUNK_CACHE_MAX:
                cache.clear()
            cache[chunk] = words
        out.extend(words)
    return out


# ---- Gopher repetition --------------------------------------------------------------------------

def _windows(words: list[str], n: int, sep: str):
    """Keys sep.join(words[i:i+n]) for every i, as slices of one joined string."""
    joined = sep.join(words)
    starts = [0] * (len(words) + 1)
    pos = 0
    step = len(sep)
    for i, w in enumerate(words):
        starts[i] = pos
        pos += len(w) + step
    starts[len(words)] = pos
    return joined, starts, step


def _top_ngram_chars(words: list[str], n: int) -> int:
    joined, starts, step = _windows(words, n, " ")
    m = len(words) - n + 1
    counts = Counter(joined[starts[i]:starts[i + n] - step] for i in range(m))
    gram, count = counts.most_common(1)[0]
    return len(gram) * count


def _all_dup_chars(words: list[str], n: int, text_len: int, frac: float) -> int:
    """datatrove's find_all_duplicate (greedy, skips n words after a repeat); stops as soon as the
    repeated fraction exceeds `frac` (it only grows)."""
    joined, starts, _ = _windows(words, n, "")
    n_words = len(words)
    seen = set()
    repeated, idx = 0, 0
    while idx < n_words - n + 1:
        gram = joined[starts[idx]:starts[idx + n]]
        if gram in seen:
            repeated += len(gram)
            if repeated / text_len > frac:
                return repeated
            idx += n
        else:
            seen.add(gram)
            idx += 1
    return repeated


class FastGopherRepetitionFilter(GopherRepetitionFilter):
    name = "👯 Gopher Repetition (fast)"

    def filter(self, doc):
        text = doc.text
        if not text:
            return False, "empty"
        paragraphs = self.paragraph_exp.split(text.strip())
        dup_paras, dup_chars = find_duplicates(paragraphs)
        if self.dup_para_frac and dup_paras / len(paragraphs) > self.dup_para_frac:
            return False, "dup_para_frac"
        if self.dup_para_char_frac and dup_chars / len(text) > self.dup_para_char_frac:
            return False, "dup_para_char_frac"
        lines = self._line_splitter.split(text)
        dup_lines, dup_chars = find_duplicates(lines)
        if self.dup_line_frac and dup_lines / len(lines) > self.dup_line_frac:
            return False, "dup_line_frac"
        if self.dup_line_char_frac and dup_chars / len(text) > self.dup_line_char_frac:
            return False, "dup_line_char_frac"
        words = fast_words(text, self.language)
        for n, frac in self.top_n_grams:
            if len(words) - n + 1 <= 0:
                continue
            if _top_ngram_chars(words, n) / len(text) > frac:
                return False, f"top_{n}_gram"
        for n, frac in self.dup_n_grams:
            if _all_dup_chars(words, n, len(text), frac) / len(text) > frac:
                return False, f"duplicated_{n}_n_grams"
        return True


# ---- Gopher quality ------------------------------------------------------------------------------

class FastGopherQualityFilter(GopherQualityFilter):
    name = "🥇 Gopher Quality (fast)"

    def filter(self, doc):
        text = doc.text
        words = fast_words(text, self.language)
        n_words = len(words)
        non_symbol = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
        n_non_symbol = len(non_symbol)
        if self.min_doc_words and n_non_symbol < self.min_doc_words:
            return False, "gopher_short_doc"
        if self.max_doc_words and n_non_symbol > self.max_doc_words:
            return False, "gopher_long_doc"
        avg = np.mean([len(w) for w in non_symbol])
        if self.min_avg_word_length and avg < self.min_avg_word_length:
            return False, "gopher_below_avg_threshold"
        if self.max_avg_word_length and avg > self.max_avg_word_length:
            return False, "gopher_above_avg_threshold"
        if self.max_symbol_word_ratio and text.count("#") / n_words > self.max_symbol_word_ratio:
            return False, "gopher_too_many_hashes"
        if self.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > \
                self.max_symbol_word_ratio:
            return False, "gopher_too_many_ellipsis"
        lines = text.splitlines()
        if self.max_bullet_lines_ratio and sum(
                s.lstrip().startswith(("•", "-")) for s in lines) / len(lines) > self.max_bullet_lines_ratio:
            return False, "gopher_too_many_bullets"
        if self.max_ellipsis_lines_ratio and sum(
                s.rstrip().endswith(("...", "…")) for s in lines) / len(lines) > self.max_ellipsis_lines_ratio:
            return False, "gopher_too_many_end_ellipsis"
        if self.max_non_alpha_words_ratio and sum(
                any(c.isalpha() for c in w) for w in words) / n_words < self.max_non_alpha_words_ratio:
            return False, "gopher_below_alpha_threshold"
        if self.min_stop_words and len(self.stop_words.intersection(words)) < self.min_stop_words:
            return False, "gopher_enough_stop_words"
        return True


# ---- C4 ------------------------------------------------------------------------------------------

_SENTS: dict[str, int] = {}


def _n_sentences(line: str, language: str) -> int:
    n = _SENTS.get(line)
    if n is None:
        n = len(split_into_sentences(line, language))
        if len(_SENTS) > 200_000:
            _SENTS.clear()
        _SENTS[line] = n
    return n


class FastC4QualityFilter(C4QualityFilter):
    name = "⛰ C4 Quality (fast)"

    def filter(self, doc):
        if not self.split_paragraph:  # sentence mode: nothing to gain, use datatrove's
            return super().filter(doc)
        num_sentences = 0
        kept = []
        need = self.min_num_sentences
        for line in doc.text.splitlines():
            line = line.strip()
            words = line.split()
            self.stat_update("line-total")
            if self.max_word_length != -1 and any(len(w) > self.max_word_length for w in words):
                self.stat_update("line-filter-too_long_word")
                continue
            if self.remove_citations:
                line = CITATION_REGEX.sub("", line)
            if self.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                self.stat_update("line-filter-no_terminal_punc")
                continue
            if len(words) < self.min_words_per_line:
                self.stat_update("line-filter-too_few_words")
                continue
            low = line.lower()
            if self.filter_lorem_ipsum and "lorem ipsum" in low:
                return False, "lorem_ipsum"
            if self.filter_javascript and "javascript" in low:
                self.stat_update("line-filter-javascript")
                continue
            if self.filter_curly_bracket and "{" in line:
                return False, "curly_bracket"
            if self.filter_policy and any(p in low for p in POLICY_SUBSTRINGS):
                self.stat_update("line-filter-policy")
                continue
            if need != -1 and num_sentences < need:  # the count matters only below the threshold
                num_sentences += _n_sentences(line, self.language)
            kept.append(line)
            self.stat_update("line-kept")
        if num_sentences < need:
            return False, "too_few_sentences"
        doc.text = "\n".join(kept).strip()
        return True


# ---- FineWeb quality -----------------------------------------------------------------------------

class FastFineWebQualityFilter(FineWebQualityFilter):
    name = "🍷 FineWeb Quality (fast)"

    def filter(self, doc):
        text = doc.text
        lines = [line for line in text.split("\n") if line.strip() != ""]
        if not lines:
            return False, "empty"
        ratio = sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines)
        if ratio < self.line_punct_thr and not (ratio == 0 and self.line_punct_exclude_zero):
            return False, "line_punct_ratio"
        ratio = sum(1 for line in lines if len(line) <= self.short_line_length) / len(lines)
        if ratio > self.short_line_threshold:
            return False, "short_line_ratio"
        ratio = find_duplicates(lines)[1] / len(text.replace("\n", ""))
        if ratio > self.char_duplicates_ratio:
            return False, "char_dup_ratio"
        words = fast_words(text, self.language)
        if text.count("\n") / len(words) > self.new_line_ratio:
            return False, "list_ratio"
        return True


# ---- URL filter ----------------------------------------------------------------------------------

def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little")


def _cache_dir() -> str:
    d = os.environ.get("LM_WEB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lm", "web")
    os.makedirs(d, exist_ok=True)
    return d


def blocklist_index(name: str) -> np.ndarray:
    """Sorted uint64 hashes of datatrove's bundled `domains` or `urls` list, built once per machine."""

    tar_path = os.path.join(ASSETS_PATH, "url_filterblacklistsv0_3_0.tar.gz")
    st = os.stat(tar_path)
    out = os.path.join(_cache_dir(), f"ut1_{name}_{st.st_size}_{int(st.st_mtime)}.npy")

    def build():

        hashes = []
        with tarfile.open(tar_path, "r:gz") as tar:
            for member in tar:
                if os.path.basename(member.name) != name or not member.isfile():
                    continue
                for raw in tar.extractfile(member):
                    line = raw.decode("utf-8", "surrogateescape")
                    if line[:1] == "#":  # datatrove's parse_list: skip comments, strip the rest
                        continue
                    hashes.append(_h64(line.strip()))
        arr = np.unique(np.asarray(hashes, dtype=np.uint64))
        tmp = out + f".tmp{os.getpid()}.npy"
        np.save(tmp, arr)
        os.replace(tmp, out)

    safely_create_file(out, build)
    return np.load(out, mmap_mode="r")


class _HashSet:
    def __init__(self, arr: np.ndarray, extra=()):
        self.arr = arr
        self.extra = set(extra)

    def __contains__(self, s) -> bool:
        if s in self.extra:
            return True
        if s is None:
            return False
        h = np.uint64(_h64(s))
        i = int(np.searchsorted(self.arr, h))
        return i < len(self.arr) and self.arr[i] == h


class FastURLFilter(URLFilter):
    """datatrove's URLFilter with the block lists as memory-mapped hash indexes (no 4 s load per task)."""

    name = "😈 Url-filter (fast)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tldextractor = TLDExtract(suffix_list_urls=())  # bundled snapshot, no network attempt

    def download_data(self):
        if self._downloaded or not self.use_integrated_lists:
            return

        self.block_listed_domains = _HashSet(blocklist_index("domains"), self.block_listed_domains)
        self.block_listed_url = _HashSet(blocklist_index("urls"), self.block_listed_url)
        self.banned_words = get_list(ASSETS_PATH, "banned_words.txt", self.banned_words)
        self.banned_subwords = get_list(ASSETS_PATH, "banned_subwords.txt", self.banned_subwords)
        self.soft_banned_words = get_list(ASSETS_PATH, "soft_banned_words.txt", self.soft_banned_words)
        for word in self.banned_subwords:
            self.banned_subwords_automaton.add_word(word, len(self.banned_subwords_automaton))
        self.banned_subwords_automaton.make_automaton()
        self._downloaded = True
