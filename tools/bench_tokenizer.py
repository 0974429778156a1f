"""Tokenizer throughput: our BPE training vs Hugging Face `tokenizers`, our encoding vs `tiktoken`.

    python -m tools.bench_tokenizer            # a table
    python -m tools.bench_tokenizer --json     # one JSON object

Training: MB of text per second to reach an 8,192-token vocabulary (256 bytes + merges + the 9
special tokens, on both sides), on the same ~5 MB of mixed text (`tools.train_tokenizer`'s "mix"),
with GPT-4's split pattern on both sides and no document cap. The peer is `tokenizers`' BpeTrainer
behind the same regex split and a byte-level alphabet
(install it with: pip install -r requirements-bench.txt).

Encoding: MB/s of our `BPETokenizer` loaded from GPT-2's encoder.json + vocab.bpe against
`tiktoken`'s own `gpt2` encoding built from the same files, on the same documents, one document at a
time on one thread ("single") and as one batch ("batched", one thread per CPU on both sides; the
peer's default of 8 threads is reported too).

Every timing is the best of several rounds (--repeats for training, twice that for encoding); within
a round ours and the peer alternate, so load from other processes hits both alike. Targets: training >= 1.5x the peer's MB/s, encoding
within 10% of the peer's (single-thread MB/s).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_tokenizer.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import platform
import time
from typing import Callable

from tools.train_tokenizer import CorpusUnavailable, default_data_dir, read_corpus


def best_times(fns: dict[str, Callable[[], object]], repeats: int) -> tuple[dict, dict]:
    """Best wall time of each function over `repeats` rounds. The functions alternate within each
    round, so load from other processes on a shared machine hits both sides alike."""
    best = {k: float("inf") for k in fns}
    out = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best, out


def hf_train(docs: list[str], vocab_size: int, pattern: str, specials: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(pattern=Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, min_frequency=0,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=specials)
    tok.train_from_iterator(docs, trainer)
    return tok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark BPE training (vs HF tokenizers) and encoding (vs tiktoken gpt2).")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--mb", type=float, default=5.0, help="MB of text (default %(default)s)")
    ap.add_argument("--vocab-size", type=int, default=8192, help="default %(default)s")
    ap.add_argument("--repeats", type=int, default=3, help="best of N runs (default %(default)s)")
    ap.add_argument("--data-dir", default=None, help="data folder (default: $LM_DATA_DIR, else "
                                                     "../shared/data beside the repository)")
    args = ap.parse_args(argv)

    try:
        import tokenizers
    except ImportError:
        print("error: the peer trainer needs Hugging Face `tokenizers`: "
              "pip install -r requirements-bench.txt", file=sys.stderr)
        return 2
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from lm.tokenizer import (CHAT_SPECIAL_TOKENS, GPT4_SPLIT_PATTERN, BPETokenizer,
                              default_num_threads, train_bpe)

    data_dir = args.data_dir or default_data_dir()
    try:
        docs = read_corpus("mix", data_dir, int(args.mb * 1e6))
    except CorpusUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    log(f"{len(docs):,} documents, {mb:.2f} MB; {default_num_threads()} CPUs; best of "
        f"{args.repeats} (training) / {2 * args.repeats} (encoding) alternating rounds")

    # --- training --------------------------------------------------------------------------------
    specials = list(CHAT_SPECIAL_TOKENS)
    log("training: ours (rustbpe) vs peer (HF tokenizers) ...")
    t, out = best_times({
        "ours": lambda: train_bpe(docs, args.vocab_size, pattern=GPT4_SPLIT_PATTERN,
                                  max_doc_chars=None),
        "peer": lambda: hf_train(docs, args.vocab_size, GPT4_SPLIT_PATTERN, specials),
    }, args.repeats)
    ours, peer = out["ours"], out["peer"]

    # --- encoding --------------------------------------------------------------------------------
    gdir = os.path.join(data_dir, "gpt2_tokenizer")
    enc_json, vocab_bpe = os.path.join(gdir, "encoder.json"), os.path.join(gdir, "vocab.bpe")
    if not os.path.exists(vocab_bpe):
        from lm.data.sources import fetch
        enc_json, vocab_bpe = fetch("gpt2_encoder"), fetch("gpt2_vocab")
    gpt2 = BPETokenizer.from_gpt2_files(enc_json, vocab_bpe)
    os.environ["TIKTOKEN_CACHE_DIR"] = ""  # read the local files directly
    from tiktoken_ext.openai_public import r50k_pat_str
    peer_enc = tiktoken.Encoding(
        name="gpt2", pat_str=r50k_pat_str, special_tokens={"<|endoftext|>": 50256},
        mergeable_ranks=data_gym_to_mergeable_bpe_ranks(vocab_bpe, enc_json))
    assert gpt2.pattern == r50k_pat_str and gpt2.mergeable_ranks == peer_enc._mergeable_ranks
    nthreads = default_num_threads()

    log("encoding: single and batched, ours vs tiktoken ...")
    e, out = best_times({
        "ours": lambda: [gpt2.encode(d) for d in docs],
        "peer": lambda: [peer_enc.encode_ordinary(d) for d in docs],
        "ours_batch": lambda: gpt2.encode_batch(docs),
        "peer_batch": lambda: peer_enc.encode_ordinary_batch(docs, num_threads=nthreads),
        "peer_batch8": lambda: peer_enc.encode_ordinary_batch(docs),
        "trained": lambda: [ours.encode(d) for d in docs],
    }, 2 * args.repeats)
    if not out["ours"] == out["peer"] == out["ours_batch"]:
        print("error: our GPT-2 ids differ from tiktoken's", file=sys.stderr)
        return 1

    r = {
        "text_mb": round(mb, 3),
        "vocab_size": args.vocab_size,
        "train_mb_per_s": mb / t["ours"],
        "peer_train_mb_per_s": mb / t["peer"],
        "encode_mb_per_s": mb / e["ours"],
        "peer_encode_mb_per_s": mb / e["peer"],
        "encode_batch_mb_per_s": mb / e["ours_batch"],
        "peer_encode_batch_mb_per_s": mb / e["peer_batch"],
        "peer_encode_batch_default_8_threads_mb_per_s": mb / e["peer_batch8"],
        "trained_tokenizer_encode_mb_per_s": mb / e["trained"],
        "trained_vocab_size": ours.vocab_size,
        "peer_trained_vocab_size": peer.get_vocab_size(),
        "threads": nthreads,
    }
    r["train_speedup"] = r["train_mb_per_s"] / r["peer_train_mb_per_s"]
    r["encode_ratio"] = r["encode_mb_per_s"] / r["peer_encode_mb_per_s"]
    r["encode_batch_ratio"] = r["encode_batch_mb_per_s"] / r["peer_encode_batch_mb_per_s"]
    r["train_target_met"] = r["train_speedup"] >= 1.5
    r["encode_target_met"] = r["encode_ratio"] >= 0.9
    r["versions"] = {"rustbpe": _version("rustbpe"), "tokenizers": tokenizers.__version__,
                     "tiktoken": _version("tiktoken"), "python": platform.python_version()}
    r = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
    if args.json:
        print(json.dumps(r))
        return 0
    met = {True: "met", False: "NOT met"}
    print(f"{'':<34}{'ours':>10}{'peer':>10}{'ratio':>8}   peer")
    print(f"{'train to %d vocab (MB/s)' % args.vocab_size:<34}{r['train_mb_per_s']:>10.2f}"
          f"{r['peer_train_mb_per_s']:>10.2f}{r['train_speedup']:>7.2f}x   HF tokenizers "
          f"{r['versions']['tokenizers']} (target >= 1.5x: {met[r['train_target_met']]})")
    print(f"{'encode GPT-2, single (MB/s)':<34}{r['encode_mb_per_s']:>10.2f}"
          f"{r['peer_encode_mb_per_s']:>10.2f}{r['encode_ratio']:>7.2f}x   tiktoken gpt2 "
          f"(target >= 0.9x: {met[r['encode_target_met']]})")
    peer8 = r["peer_encode_batch_default_8_threads_mb_per_s"]
    print(f"{'encode GPT-2, batched (MB/s)':<34}{r['encode_batch_mb_per_s']:>10.2f}"
          f"{r['peer_encode_batch_mb_per_s']:>10.2f}{r['encode_batch_ratio']:>7.2f}x   "
          f"tiktoken gpt2, {nthreads} threads (its default 8 threads: {peer8:.2f})")
    print(f"{'encode, our %d vocab (MB/s)' % ours.vocab_size:<34}"
          f"{r['trained_tokenizer_encode_mb_per_s']:>10.2f}")
    print(f"text: {mb:.2f} MB; vocab sizes: ours {r['trained_vocab_size']}, "
          f"peer {r['peer_trained_vocab_size']}")
    return 0


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
