"""FineWeb-Edu (or any parquet/JSONL with a `text` column) -> the trainer's token shards.

  python -m tools.prepare_fineweb --subset sample-10BT --out data/fineweb_edu10B --workers 16
  python -m tools.prepare_fineweb --input 'runs/web/tiny/output/*.jsonl.gz' --out data/web_shards
  python -m tools.prepare_fineweb --subset sample-10BT --out DIR --limit-docs 20000   # a taste

The subset's parquet files come from the dataset's canonical location, the Hugging Face dataset
repository `HuggingFaceFW/fineweb-edu` (through `huggingface_hub`), cached under
`$LM_DATA_DIR/fineweb-edu/`. Documents are tokenized in parallel (`--workers` processes) with the
run's tokenizer (`--tokenizer`, GPT-2 by default, as gpt2_124m) as `[bos] + tokens`, in input order:
the first `--val-docs` documents make the held-out `val_*.npy` shard(s), the rest `shard_*.npy` of
about `--shard-tokens` tokens each, plus `index.json` (the web pipeline's format, `lm.data.shards`).

Resumable: `progress.json` records where each finished shard ends in the input, so a rerun after
a kill finishes the missing shards and writes the same files an uninterrupted run writes.
Train with `--set data.shards='DIR/shard_*.npy' --set data.val_shards='DIR/val_*.npy'`.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/prepare_fineweb.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import gzip
import json
import time
from typing import Iterator

import numpy as np

from lm import paths

REPO = "HuggingFaceFW/fineweb-edu"
SUBSETS = {"sample-10BT": "sample/10BT", "sample-100BT": "sample/100BT",
           "sample-350BT": "sample/350BT"}


class PrepareError(RuntimeError):
    pass


def subset_files(subset: str) -> list[str]:
    """The subset's parquet files: from the cache, else downloaded with huggingface_hub."""
    if subset not in SUBSETS:
        raise PrepareError(f"--subset {subset!r}: known subsets {sorted(SUBSETS)}")
    root = os.path.join(paths.data_dir(), "fineweb-edu")
    pattern = os.path.join(root, SUBSETS[subset], "*.parquet")
    files = sorted(glob.glob(pattern))
    if files:
        return files
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(repo_id=REPO, repo_type="dataset", local_dir=root,
                          allow_patterns=[f"{SUBSETS[subset]}/*.parquet"])
    except Exception as e:  # noqa: BLE001 - offline / hub errors: say where the files go
        raise PrepareError(
            f"could not download {REPO} ({SUBSETS[subset]}/*.parquet): {type(e).__name__}: "
            f"{str(e)[:300]}\nPut the parquet files at {pattern} (or set LM_DATA_DIR), or pass "
            f"local files with --input 'glob'.") from None
    files = sorted(glob.glob(pattern))
    if not files:
        raise PrepareError(f"the download left no files matching {pattern}")
    return files


def read_docs(path: str, start: int = 0) -> Iterator[str]:
    """The `text` of each record of a parquet or JSONL(.gz) file, from record `start` on."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq
        f = pq.ParquetFile(path)
        if "text" not in f.schema_arrow.names:
            raise PrepareError(f"{path}: no 'text' column (columns: {f.schema_arrow.names})")
        seen = 0
        for rg in range(f.num_row_groups):
            n = f.metadata.row_group(rg).num_rows
            if seen + n <= start:
                seen += n
                continue
            col = f.read_row_group(rg, columns=["text"]).column("text").to_pylist()
            for j, t in enumerate(col):
                if seen + j >= start:
                    yield t or ""
            seen += n
        return
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < start or not line.strip():
                continue
            rec = json.loads(line)
            if "text" not in rec:
                raise PrepareError(f"{path}: record {i} has no 'text' field")
            yield rec["text"] or ""


def positioned_docs(files: list[str], pos: tuple[int, int]) -> Iterator[tuple[tuple[int, int], str]]:
    """((file index, record index after this one), text) from position `pos` on."""
    fi, ri = pos
    for i in range(fi, len(files)):
        start = ri if i == fi else 0
        for j, text in enumerate(read_docs(files[i], start)):
            yield (i, start + j + 1), text


_TOK = None


def _init(spec: str, data_dir: str | None):
    global _TOK
    if data_dir:
        os.environ["LM_DATA_DIR"] = data_dir
    _TOK = _load_tokenizer(spec)


def _load_tokenizer(spec: str):
    from lm.tokenizer import load_tokenizer, named_tokenizer
    return load_tokenizer(spec) if os.path.exists(spec) else named_tokenizer(spec)


def _encode(texts: list[str]) -> list[np.ndarray]:
    bos = int(_TOK.bos_id)
    ids = _TOK.encode_batch(texts, num_threads=1)
    return [np.asarray([bos] + x, np.int64) for x in ids]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--subset", help=f"FineWeb-Edu subset ({', '.join(SUBSETS)})")
    src.add_argument("--input", action="append", help="local parquet/JSONL(.gz) glob (repeatable)")
    p.add_argument("--out", required=True)
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--limit-docs", type=int, default=0, help="stop after this many documents")
    p.add_argument("--val-docs", type=int, default=10_000, help="documents in the held-out shard")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--batch-docs", type=int, default=256, help="documents per worker task")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)
    if a.workers < 1 or a.shard_tokens < 1 or a.val_docs < 0 or a.limit_docs < 0:
        p.error("--workers and --shard-tokens must be >= 1, --val-docs and --limit-docs >= 0")
    try:
        return prepare(a)
    except (PrepareError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def prepare(a) -> int:
    from multiprocessing import get_context
    from tqdm.auto import tqdm
    from lm.data.shards import save_atomic, token_dtype, write_index, write_json_atomic
    if a.input:
        files = sorted({f for g in a.input for f in glob.glob(g)})
        if not files:
            raise PrepareError(f"--input: no files match {a.input}")
    else:
        files = subset_files(a.subset)
    tok = _load_tokenizer(a.tokenizer)
    dtype = token_dtype(tok.vocab_size)
    os.makedirs(a.out, exist_ok=True)
    settings = {"files": [os.path.abspath(f) for f in files], "tokenizer": a.tokenizer,
                "val_docs": a.val_docs, "shard_tokens": a.shard_tokens,
                "limit_docs": a.limit_docs}
    prog_path = os.path.join(a.out, "progress.json")
    progress = {"settings": settings, "val": [], "shards": [], "pos": [0, 0], "docs": 0}
    if os.path.exists(prog_path):
        with open(prog_path) as f:
            old = json.load(f)
        if old["settings"] != settings:
            raise PrepareError(f"{a.out} was prepared with other settings ({prog_path}); use "
                               f"another --out or delete it")
        progress = old
        print(f"resuming: {len(progress['val'])} val and {len(progress['shards'])} train shards "
              f"done, {progress['docs']:,} documents", file=sys.stderr)
    if progress.get("complete"):
        print(f"{a.out} is complete ({len(progress['shards'])} shards)", file=sys.stderr)
        return 0

    docs_done = progress["docs"]
    limit = a.limit_docs or None
    stream = positioned_docs(files, tuple(progress["pos"]))

    def batches():
        buf, pos = [], None
        n = docs_done
        for pos, text in stream:
            if limit is not None and n >= limit:
                break
            buf.append((pos, text))
            n += 1
            if len(buf) == a.batch_docs:
                yield buf
                buf = []
        if buf:
            yield buf

    ctx = get_context("spawn")
    pool = ctx.Pool(a.workers, initializer=_init,
                    initargs=(a.tokenizer, os.environ.get("LM_DATA_DIR")))
    bar = tqdm(total=limit, initial=docs_done, unit="doc", disable=a.no_progress,
               dynamic_ncols=True, desc="fineweb")
    t0, tokens_seen = time.perf_counter(), 0
    cur, cur_tokens, cur_docs, last_pos = [], 0, 0, tuple(progress["pos"])

    def flush(kind: str):
        nonlocal cur, cur_tokens, cur_docs
        if not cur:
            return
        k = len(progress["val" if kind == "val" else "shards"])
        name = f"{'val' if kind == 'val' else 'shard'}_{k:05d}.npy"
        arr = np.concatenate(cur).astype(dtype)
        save_atomic(os.path.join(a.out, name), arr)
        progress["val" if kind == "val" else "shards"].append(
            {"file": name, "docs": cur_docs, "tokens": int(arr.size)})
        progress["pos"] = list(last_pos)
        progress["docs"] = docs_done
        write_json_atomic(prog_path, progress)
        cur, cur_tokens, cur_docs = [], 0, 0

    try:
        jobs = ((b, pool.apply_async(_encode, ([t for _, t in b],))) for b in batches())
        for b, job in _ordered(jobs, 2 * a.workers):
            for (pos, _), ids in zip(b, job):
                in_val = docs_done < a.val_docs
                cur.append(ids)
                cur_tokens += len(ids)
                cur_docs += 1
                docs_done += 1
                tokens_seen += len(ids)
                last_pos = pos
                if in_val and docs_done == a.val_docs:
                    flush("val")
                elif not in_val and cur_tokens >= a.shard_tokens:
                    flush("train")
            bar.update(len(b))
            bar.set_postfix(tok_s=f"{tokens_seen / max(time.perf_counter() - t0, 1e-9):,.0f}",
                            shards=len(progress["shards"]))
        flush("val" if docs_done <= a.val_docs else "train")
    finally:
        pool.terminate()
        bar.close()
    progress["complete"] = True
    write_json_atomic(prog_path, progress)
    write_index(a.out, tokenizer=a.tokenizer, vocab_size=tok.vocab_size, bos_id=tok.bos_id,
                shards=progress["shards"], val=progress["val"],
                source=[os.path.basename(f) for f in files])
    total = sum(s["tokens"] for s in progress["shards"])
    print(f"wrote {len(progress['shards'])} train shards ({total:,} tokens) and "
          f"{len(progress['val'])} val shard(s) to {a.out}", file=sys.stderr)
    return 0


def _ordered(jobs, depth: int):
    """(batch, result) in submission order, keeping up to `depth` tasks in flight."""
    import collections
    q = collections.deque()
    for item in jobs:
        q.append(item)
        if len(q) >= depth:
            b, j = q.popleft()
            yield b, j.get()
    while q:
        b, j = q.popleft()
        yield b, j.get()


if __name__ == "__main__":
    sys.exit(main())
