"""Compression (UTF-8 bytes per token; higher is better) of tokenizers on several kinds of text.

    python -m tools.tok_eval                                  # every artifact in runs/tokenizers
    python -m tools.tok_eval --tokenizer shakespeare_train_bpe2048 --tokenizer mix_bpe8192
    python -m tools.tok_eval --cl100k path/to/cl100k_base.tiktoken --json

Columns: each trained tokenizer given with --tokenizer (default: all saved under runs/tokenizers),
GPT-2 (from ../shared/data/gpt2_tokenizer), and GPT-4's cl100k_base when its ranks file is available
offline (--cl100k PATH, or already in tiktoken's cache); otherwise that column is left out and the
table says why. Rows: kinds of text (see --kinds), held out from `tools.train_tokenizer`'s "mix"
(the "_val" parts; code is in no training corpus). Each kind is capped at --max-bytes.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/tok_eval.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import hashlib
import json
import tempfile

from tools.train_tokenizer import CorpusUnavailable, default_data_dir, read_corpus

KINDS = {  # row label -> corpus name in tools.train_tokenizer.CORPORA
    "shakespeare (val)": "shakespeare_val",
    "math (GSM8K val)": "gsm8k_val",
    "web (val)": "web_val",
    "code (Python)": "code",
    "stories (val)": "stories_val",
    "chat (HH-RLHF val)": "chat_val",
}
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def load_cl100k(path: str | None):
    """tiktoken's cl100k_base from a local ranks file or tiktoken's cache, else (None, reason).
    (`tiktoken.get_encoding("cl100k_base")` would try to download it, which fails offline.)"""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    from lm.tokenizer import GPT4_SPLIT_PATTERN

    if path is None:
        cache = (os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or os.path.join(tempfile.gettempdir(), "data-gym-cache"))
        cached = os.path.join(cache, hashlib.sha1(CL100K_URL.encode()).hexdigest())
        if not os.path.exists(cached):
            return None, "cl100k_base ranks not available offline (pass --cl100k PATH)"
        path = cached
    if not os.path.exists(path):
        return None, f"--cl100k {path}: no such file"
    with open(path, "rb") as f:
        if hashlib.sha256(f.read()).hexdigest() != CL100K_SHA256:
            return None, f"{path} is not cl100k_base.tiktoken (sha256 differs)"
    ranks = load_tiktoken_bpe(path)
    # GPT4_SPLIT_PATTERN is cl100k_base's pat_str in tiktoken_ext.openai_public.
    enc = tiktoken.Encoding("cl100k_base", pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=ranks,
                            special_tokens={})
    return enc, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Compare tokenizers' compression (bytes per token) on several kinds of text.")
    ap.add_argument("--tokenizer", action="append", default=[], metavar="PATH_OR_NAME",
                    help="a trained tokenizer (repeatable; default: all under runs/tokenizers)")
    ap.add_argument("--no-gpt2", action="store_true", help="leave GPT-2 out")
    ap.add_argument("--cl100k", metavar="PATH", help="a local cl100k_base.tiktoken ranks file")
    ap.add_argument("--kinds", default=",".join(KINDS.values()),
                    help="comma-separated corpora to use as rows (default: %(default)s)")
    ap.add_argument("--max-bytes", type=int, default=1_000_000,
                    help="characters of text per kind, at most (default %(default)s)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $LM_DATA_DIR, else "
                                                     "../shared/data beside the repository)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = ap.parse_args(argv)

    from tqdm import tqdm

    from lm.paths import tokenizer_dir
    from lm.tokenizer import BPETokenizer, load_tokenizer

    notes = []
    columns: list[tuple[str, object]] = []
    paths = args.tokenizer or sorted(glob.glob(os.path.join(tokenizer_dir(), "*.json")))
    if not paths:
        notes.append(f"no trained tokenizer given and none saved in {tokenizer_dir()} "
                     f"(train one: python -m tools.train_tokenizer)")
    for p in paths:
        try:
            tok = load_tokenizer(p)
        except (OSError, ValueError, KeyError) as e:
            print(f"error: cannot load tokenizer {p!r}: {e}", file=sys.stderr)
            return 2
        columns.append((getattr(tok, "name", os.path.basename(p)), tok))
    if not args.no_gpt2:
        folder = os.path.join(args.data_dir or default_data_dir(), "gpt2_tokenizer")
        try:
            columns.append(("gpt2", load_tokenizer(folder if os.path.isdir(folder) else "gpt2")))
        except Exception as e:  # offline and not in the cache
            notes.append(f"GPT-2 left out: {e}")
    cl100k, why = load_cl100k(args.cl100k)
    if cl100k is not None:
        columns.append(("cl100k_base", cl100k))
    else:
        notes.append(f"GPT-4 (cl100k_base) left out: {why}")
    if not columns:
        print("error: no tokenizer to evaluate", file=sys.stderr)
        return 2

    labels = {v: k for k, v in KINDS.items()}
    rows = []
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    for kind in tqdm(kinds, desc="kinds", file=sys.stderr, disable=None):
        try:
            docs = read_corpus(kind, args.data_dir, args.max_bytes)
        except (CorpusUnavailable, KeyError) as e:
            notes.append(f"{kind} left out: {e}")
            continue
        nbytes = sum(len(d.encode("utf-8")) for d in docs)
        row = {"kind": labels.get(kind, kind), "bytes": nbytes, "tokens": {}, "bytes_per_token": {}}
        for name, tok in columns:
            if isinstance(tok, BPETokenizer):
                ids = tok.encode_batch(docs)
            elif hasattr(tok, "encode_ordinary_batch"):  # a tiktoken.Encoding
                from lm.tokenizer import default_num_threads
                ids = tok.encode_ordinary_batch(docs, num_threads=default_num_threads())
            else:
                try:
                    ids = [tok.encode(d) for d in docs]
                except ValueError:  # a char tokenizer meeting unknown characters
                    row["tokens"][name] = None
                    row["bytes_per_token"][name] = None
                    continue
            ntok = sum(map(len, ids))
            row["tokens"][name] = ntok
            row["bytes_per_token"][name] = nbytes / max(ntok, 1)
        rows.append(row)

    if args.json:
        print(json.dumps({"columns": [n for n, _ in columns], "rows": rows, "notes": notes}))
        return 0
    names = [n for n, _ in columns]
    vocab = {n: getattr(t, "vocab_size", getattr(t, "n_vocab", None)) for n, t in columns}
    width = max(12, *(len(n) for n in names))
    head = f"{'text':<20}{'bytes':>11}" + "".join(f"{n:>{width + 2}}" for n in names)
    print("bytes per token (higher = better compression); ratio to GPT-2 in parentheses")
    print(head)
    print(f"{'(vocab size)':<20}{'':>11}" + "".join(f"{vocab[n]:>{width + 2},}" for n in names))
    print("-" * len(head))
    for r in rows:
        cells = []
        for n in names:
            v = r["bytes_per_token"][n]
            g = r["bytes_per_token"].get("gpt2")
            if v is None:
                cells.append(f"{'n/a':>{width + 2}}")
            elif g and n != "gpt2":
                cells.append(f"{f'{v:.2f} ({v / g:.2f}x)':>{width + 2}}")
            else:
                cells.append(f"{v:>{width + 2}.2f}")
        print(f"{r['kind']:<20}{r['bytes']:>11,}" + "".join(cells))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
