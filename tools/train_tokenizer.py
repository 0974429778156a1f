"""Train a byte-level BPE tokenizer on a named corpus and save it where experiments find it.

    python -m tools.train_tokenizer --corpus shakespeare_train --vocab-size 2048
    python -m tools.train_tokenizer --corpus mix --vocab-size 8192 --name mix_bpe8192
    python -m tools.train_tokenizer --file my.txt --vocab-size 4096 --name mine

The artifact goes to `lm.tokenizer.tokenizer_path(name)` ($LM_TOKENIZER_DIR, else runs/tokenizers/),
and `lm.tokenizer.load_tokenizer(name)` finds it. The vocabulary size counts the 256 byte tokens and
the 9 special tokens (<|bos|> and the chat set), so it equals the model's embedding size.

Corpora are read from the data folder: --data-dir, else $LM_DATA_DIR, else ../shared/data beside
the repository. `tools.tok_eval` and `tools.bench_tokenizer` use the same corpus readers.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/train_tokenizer.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import csv
import glob
import gzip
import json
import re
import sysconfig
import time
from typing import Callable, Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_data_dir() -> str:
    if os.environ.get("LM_DATA_DIR"):
        return os.environ["LM_DATA_DIR"]
    return os.path.normpath(os.path.join(REPO, "..", "shared", "data"))


class CorpusUnavailable(RuntimeError):
    pass


def _path(data_dir: str, rel: str) -> str:
    path = os.path.join(data_dir, rel)
    if os.path.exists(path):
        return path
    # Files that lm.data.sources knows can be fetched into its cache.
    from lm.data import sources
    for name, spec in sources.FILES.items():
        if spec.relpath == rel:
            try:
                return sources.fetch(name)
            except sources.DataUnavailableError as e:
                raise CorpusUnavailable(str(e)) from None
    raise CorpusUnavailable(f"{path} not found: pass --data-dir (or set LM_DATA_DIR) to a folder "
                            f"laid out like ../shared/data")


def _open(data_dir: str, rel: str):
    path = _path(data_dir, rel)
    return (gzip.open if path.endswith(".gz") else open)(path, "rt", encoding="utf-8")


def _blocks(text: str) -> list[str]:
    """Split at blank lines, keeping each separator with the block before it (joins back exactly)."""
    return [b for b in re.split(r"(?<=\n\n)", text) if b]


def shakespeare(data_dir: str, split: str) -> list[str]:
    """tinyshakespeare split by characters as nanoGPT does: first 90% train, last 10% val."""
    with _open(data_dir, "tinyshakespeare/input.txt") as f:
        text = f.read()
    n = int(0.9 * len(text))
    return _blocks(text[:n] if split == "train" else text[n:])


def gsm8k(data_dir: str) -> list[str]:
    with _open(data_dir, "gsm8k/train.jsonl") as f:
        return [f"{r['question']}\n{r['answer']}" for r in map(json.loads, f)]


def web(data_dir: str) -> list[str]:
    """Article text extracted from real pages, CCNet Common Crawl text and FineWeb-Edu documents."""
    with _open(data_dir, "html_extraction_benchmark/ground-truth.json") as f:
        docs = [v["articleBody"] for v in json.load(f).values()]
    for fn in ("cc_en_head-0091.jsonl.gz", "cc_en_head-0174.jsonl.gz"):
        with _open(data_dir, f"cc_text/{fn}") as f:
            docs += [json.loads(line)["text"] for line in f]
    csv.field_size_limit(sys.maxsize)
    with _open(data_dir, "fineweb_edu_sample/training_data.csv") as f:
        docs += [row["text"] for row in csv.DictReader(f)]
    return docs


def stories(data_dir: str, split: str) -> list[str]:
    files = (["tinystories/tiny_stories.txt", "tinystories/tinystories_10k.txt"] if split == "train"
             else ["tinystories/tinystories_val.txt"])
    docs = []
    for rel in files:
        with _open(data_dir, rel) as f:
            docs += _blocks(f.read())
    return docs


def books(data_dir: str) -> list[str]:
    paths = sorted(glob.glob(os.path.join(data_dir, "gutenberg", "*.txt")))
    if not paths:
        raise CorpusUnavailable(f"no Gutenberg books under {os.path.join(data_dir, 'gutenberg')}")
    docs = []
    for p in paths:
        with open(p, encoding="utf-8-sig") as f:
            docs += _blocks(f.read().replace("\r\n", "\n"))
    return docs


def chat(data_dir: str) -> list[str]:
    with _open(data_dir, "hh_rlhf/helpful-base/test.jsonl.gz") as f:
        return [json.loads(line)["chosen"] for line in f]


CODE_MODULES = ("argparse.py", "dataclasses.py", "functools.py", "textwrap.py", "csv.py",
                "difflib.py", "json/encoder.py", "json/decoder.py", "collections/__init__.py",
                "string.py", "heapq.py", "bisect.py", "fractions.py", "statistics.py")


def code(data_dir: str) -> list[str]:
    """Python source: a fixed set of standard-library modules of the running Python."""
    stdlib = sysconfig.get_paths()["stdlib"]
    docs = []
    for rel in CODE_MODULES:
        p = os.path.join(stdlib, rel)
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                docs.append(f.read())
    if not docs:
        raise CorpusUnavailable(f"no standard-library sources under {stdlib}")
    return docs


CORPORA: dict[str, tuple[str, Callable[[str], list[str]]]] = {
    "shakespeare_train": ("tinyshakespeare, first 90% (nanoGPT's train split)",
                          lambda d: shakespeare(d, "train")),
    "shakespeare_val": ("tinyshakespeare, last 10%", lambda d: shakespeare(d, "val")),
    "gsm8k": ("GSM8K train: math word problems and worked answers", gsm8k),
    "web": ("web text: extracted news articles, Common Crawl (CCNet), FineWeb-Edu", web),
    "code": ("Python source (standard-library modules)", code),
    "stories_train": ("TinyStories train prefixes", lambda d: stories(d, "train")),
    "stories_val": ("TinyStories validation prefix", lambda d: stories(d, "val")),
    "books": ("Project Gutenberg books (8)", books),
    "chat": ("HH-RLHF helpful-base test dialogues", chat),
}
# Corpora without a split of their own get one by document index: every 10th document is "_val".
SPLITTABLE = ("gsm8k", "web", "chat", "books")
MIX = ("books_train", "web_train", "gsm8k_train", "stories_train", "chat_train", "shakespeare_train")


def corpus_names() -> list[str]:
    return [*CORPORA, *(f"{n}_{s}" for n in SPLITTABLE for s in ("train", "val")), "mix"]


def read_corpus(name: str, data_dir: str | None = None, max_chars: int | None = None) -> list[str]:
    """Documents of a named corpus (see CORPORA; "mix" = several kinds interleaved), optionally
    truncated to about `max_chars` characters in total."""
    data_dir = data_dir or default_data_dir()
    if name == "mix":
        parts = [read_corpus(n, data_dir) for n in MIX]
        docs = [d for group in _interleave(parts) for d in group]
    elif name in CORPORA:
        docs = CORPORA[name][1](data_dir)
    elif name.rsplit("_", 1)[0] in SPLITTABLE and name.rsplit("_", 1)[1] in ("train", "val"):
        base, split = name.rsplit("_", 1)
        docs = [d for i, d in enumerate(CORPORA[base][1](data_dir))
                if (i % 10 == 0) == (split == "val")]
    else:
        raise KeyError(f"unknown corpus {name!r}; known: {', '.join(corpus_names())}")
    return _truncate(docs, max_chars)


def _interleave(parts: list[list[str]]) -> Iterator[list[str]]:
    """Round-robin over corpora, 64 documents at a time, so any prefix is a mix."""
    pos = [0] * len(parts)
    while any(p < len(docs) for p, docs in zip(pos, parts)):
        for k, docs in enumerate(parts):
            yield docs[pos[k]:pos[k] + 64]
            pos[k] += 64


def _truncate(docs: list[str], max_chars: int | None) -> list[str]:
    if max_chars is None:
        return docs
    out, n = [], 0
    for d in docs:
        if n >= max_chars:
            break
        out.append(d[:max_chars - n])
        n += len(out[-1])
    return out


def read_files(paths: list[str], field: str | None = None) -> list[str]:
    """Plain text files (split at blank lines) or .jsonl(.gz) files (one document per line, the
    `field` key, default "text")."""
    docs = []
    for p in paths:
        if not os.path.exists(p):
            raise CorpusUnavailable(f"--file {p}: no such file")
        opener = gzip.open if p.endswith(".gz") else open
        with opener(p, "rt", encoding="utf-8") as f:
            if ".jsonl" in p:
                key = field or "text"
                for i, line in enumerate(f):
                    if line.strip():
                        row = json.loads(line)
                        if key not in row:
                            raise CorpusUnavailable(f"{p}:{i + 1}: no field {key!r} "
                                                    f"(fields: {sorted(row)}); use --field")
                        docs.append(row[key])
            else:
                docs += _blocks(f.read())
    return docs


def _progress(docs: list[str], desc: str) -> Iterator[str]:
    from tqdm import tqdm
    with tqdm(total=sum(len(d) for d in docs), unit="char", unit_scale=True, desc=desc,
              file=sys.stderr, disable=None) as bar:
        for d in docs:
            bar.update(len(d))
            yield d


def main(argv: list[str] | None = None) -> int:
    from lm.tokenizer import (DEFAULT_MAX_DOC_CHARS, SPLIT_PATTERNS, tokenizer_path, train_bpe,
                              trained_specials)
    n_special = len(trained_specials())

    corpora_help = "; ".join(f"{k}: {v[0]}" for k, v in CORPORA.items())
    ap = argparse.ArgumentParser(
        description="Train a byte-level BPE tokenizer (rustbpe) and save it as a JSON artifact.",
        epilog=f"Corpora: {corpora_help}; {', '.join(SPLITTABLE)} also as NAME_train (9 in 10 "
               f"documents) and NAME_val (every 10th); mix: {', '.join(MIX)} interleaved.")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--corpus", default="shakespeare_train", choices=corpus_names(),
                     help="named corpus (default: shakespeare_train)")
    src.add_argument("--file", nargs="+", metavar="PATH",
                     help="train on these files instead (.txt split at blank lines, or .jsonl[.gz])")
    ap.add_argument("--field", help="JSONL field holding the text (default: text)")
    ap.add_argument("--vocab-size", type=int, default=2048,
                    help="final vocabulary size incl. 256 bytes and %d special tokens (the chat "
                         "set and reserved ones; default 2048)" % n_special)
    ap.add_argument("--pattern", default="gpt4",
                    help="split regex: 'gpt4' (default), 'gpt2', or a regex of your own")
    ap.add_argument("--max-doc-chars", type=int, default=DEFAULT_MAX_DOC_CHARS,
                    help="cut each document to this many characters (0: no cap; default %(default)s)")
    ap.add_argument("--max-chars", type=int, default=None,
                    help="use only about this many characters of the corpus")
    ap.add_argument("--name", help="artifact name (default: <corpus>_bpe<vocab-size>)")
    ap.add_argument("--out", help="artifact path (default: lm.tokenizer.tokenizer_path(name))")
    ap.add_argument("--data-dir", default=None,
                    help="data folder laid out like ../shared/data (default: $LM_DATA_DIR, else "
                         "../shared/data beside the repository)")
    args = ap.parse_args(argv)

    if args.vocab_size < 256 + n_special:
        ap.error(f"--vocab-size must be at least {256 + n_special} "
                 f"(256 bytes + {n_special} special tokens)")
    pattern = SPLIT_PATTERNS.get(args.pattern, args.pattern)
    try:
        import regex
        regex.compile(pattern)
    except regex.error as e:
        ap.error(f"--pattern is not a valid regex: {e}")
    try:
        if args.file:
            docs = _truncate(read_files(args.file, args.field), args.max_chars)
            default_name = os.path.splitext(os.path.basename(args.file[0]))[0]
        else:
            docs = read_corpus(args.corpus, args.data_dir, args.max_chars)
            default_name = args.corpus
    except CorpusUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not docs:
        print("error: the corpus is empty", file=sys.stderr)
        return 2
    name = args.name or f"{default_name}_bpe{args.vocab_size}"
    out = args.out or tokenizer_path(name)
    nbytes = sum(len(d.encode("utf-8")) for d in docs)
    pattern_name = args.pattern if args.pattern in SPLIT_PATTERNS else "custom"
    print(f"training {name}: {len(docs):,} documents, {nbytes / 1e6:.2f} MB, "
          f"vocab {args.vocab_size}, pattern {pattern_name}", file=sys.stderr)

    t0 = time.perf_counter()
    tok = train_bpe(_progress(docs, "counting chunks"), args.vocab_size, pattern=pattern,
                    max_doc_chars=args.max_doc_chars or None, name=name)
    dt = time.perf_counter() - t0
    tok.save(out)

    ids = tok.encode_batch(docs)
    ntok = sum(map(len, ids))
    longest = sorted(tok.mergeable_ranks, key=len, reverse=True)[:8]
    print(f"trained in {dt:.1f} s ({nbytes / 1e6 / dt:.2f} MB/s): {tok.vocab_size} tokens "
          f"({tok.n_ranks} ranks + {len(tok.special_tokens)} special)")
    print(f"compression on the training text: {nbytes / max(ntok, 1):.3f} bytes/token")
    print("longest tokens: " + ", ".join(repr(b.decode("utf-8", "replace")) for b in longest))
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
