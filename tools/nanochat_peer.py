"""Feed nanochat (`../shared/peers/nanochat`, Karpathy's PyTorch chat pipeline, unchanged) our data.

nanochat reads its pretraining text from parquet files under `$NANOCHAT_BASE_DIR`
(`nanochat/dataset.py`: the folder `base_data_climbmix/`, files sorted by name, one `text` column,
read a row group at a time; the LAST file is its validation split) and its tokenizer from
`$NANOCHAT_BASE_DIR/tokenizer/` (written by its own `scripts.tok_train`). This module writes the
`chat_tiny` corpus (`lm.data.corpus`) in that layout: the training documents as text
(`corpus.text_of`, so a conversation becomes its turns joined, without our chat specials) in
`shard_00000.parquet ...`, and exactly the held-out documents (`val_docs`, the ones our `val_bpb`
is computed on) as the last shard, so both sides are scored on the same held-out documents. Both
lists are shuffled with a fixed seed first (nanochat reads in file order: a prefix must be a fair
sample of the mixture, not the first source). The same input gives byte-identical files.

    python -m tools.nanochat_peer export --out DIR      # DIR is then a NANOCHAT_BASE_DIR
    python -m tools.nanochat_peer tokenizer --out DIR --vocab_size 4096   # + nanochat's tok_train
    python -m tools.nanochat_peer check --out DIR       # nanochat's own reader reads it back

Needs pyarrow (requirements.txt); the tokenizer and the check run nanochat itself, which needs
torch, rustbpe, tiktoken, wandb, filelock, psutil (requirements.txt + requirements-bench.txt).
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/nanochat_peer.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import contextlib
import hashlib
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lm.data import corpus, pipeline
from lm.data.sources import DataUnavailableError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.normpath(os.path.join(ROOT, "..", "shared", "peers", "nanochat"))
DATA_SUBDIR = "base_data_climbmix"       # nanochat/dataset.py: DATA_DIR under the base dir
TOKENIZER_SUBDIR = "tokenizer"           # nanochat/tokenizer.py: get_tokenizer()
MANIFEST = "lm_export.json"              # ours, beside the data folder (nanochat ignores it)
SHARD_ROWS = 8192                        # documents per training shard
ROW_GROUP = 1024                         # documents per row group (nanochat reads row groups)
SEED = 0
# what `scripts.base_train` / `scripts.tok_train` import on their way (module -> pip name)
PEER_MODULES = {"torch": "torch", "pyarrow": "pyarrow", "rustbpe": "rustbpe",
                "tiktoken": "tiktoken", "wandb": "wandb", "filelock": "filelock",
                "psutil": "psutil", "requests": "requests", "jinja2": "jinja2", "yaml": "pyyaml"}
INSTALL = "pip install -r requirements.txt -r requirements-bench.txt"


class PeerUnavailable(RuntimeError):
    """nanochat or one of its dependencies is missing (the message says what to install)."""


def missing_modules(modules: Sequence[str] = tuple(PEER_MODULES)) -> list[str]:
    return [PEER_MODULES.get(m, m) for m in modules if importlib.util.find_spec(m) is None]


def check_peer(modules: Sequence[str] = tuple(PEER_MODULES)) -> None:
    """Raise PeerUnavailable (with what to do) unless nanochat and `modules` are importable."""
    if not os.path.isfile(os.path.join(PEER, "scripts", "base_train.py")):
        raise PeerUnavailable(f"the nanochat peer is not at {PEER} (a copy of karpathy/nanochat "
                              f"is expected there, see its PEER.md)")
    missing = missing_modules(modules)
    if missing:
        raise PeerUnavailable(f"nanochat needs {', '.join(missing)}: {INSTALL}")


def peer_env(base_dir: str, env: Optional[dict] = None) -> dict:
    """The environment of a nanochat process whose data/tokenizer/checkpoints live in base_dir."""
    env = dict(os.environ if env is None else env)
    env.update(NANOCHAT_BASE_DIR=os.path.abspath(base_dir), PYTHONUNBUFFERED="1",
               WANDB_MODE="disabled")
    env.pop("PYTHONPATH", None)           # cwd=PEER: its own packages come first
    return env


# ---- export ------------------------------------------------------------------------------------

def shuffled(texts: Sequence[str], seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(texts))
    return [texts[i] for i in order]


def _write(path: str, texts: list[str], row_group: int) -> str:
    """One parquet file with a `text` column; its sha256 (the bytes depend only on the input)."""
    table = pa.table({"text": pa.array(texts, type=pa.string())})
    pq.write_table(table, path, row_group_size=row_group, compression="zstd")
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def export(train_docs: Sequence, val_docs: Sequence, base_dir: str, *, seed: int = SEED,
           shard_rows: int = SHARD_ROWS, row_group: int = ROW_GROUP, name: str = "") -> dict:
    """Write the documents (text or conversation dicts) as nanochat's parquet shards under
    base_dir/base_data_climbmix/ (replacing an earlier export of ours there); the manifest."""
    if not train_docs or not val_docs:
        raise ValueError("export needs training and held-out documents")
    train = shuffled([corpus.text_of(d) for d in train_docs], seed)
    val = shuffled([corpus.text_of(d) for d in val_docs], seed + 1)
    data = os.path.join(base_dir, DATA_SUBDIR)
    if os.path.isdir(data) and not os.path.exists(os.path.join(base_dir, MANIFEST)) and \
            any(f.endswith(".parquet") for f in os.listdir(data)):
        raise ValueError(f"{data} holds parquet files that are not an export of ours; "
                         f"give an empty folder")
    os.makedirs(base_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=".export-", dir=base_dir)
    shards = [train[i:i + shard_rows] for i in range(0, len(train), shard_rows)] + [val]
    files = {}
    for k, texts in enumerate(shards):       # names sort in order: the held-out shard is last
        fname = f"shard_{k:05d}.parquet"
        files[fname] = _write(os.path.join(stage, fname), texts, row_group)
    manifest = {"corpus": name, "seed": seed, "shard_rows": shard_rows, "row_group": row_group,
                "train_docs": len(train), "val_docs": len(val),
                "train_chars": sum(map(len, train)), "val_chars": sum(map(len, val)),
                "val_conversations": sum(not isinstance(d, str) for d in val_docs),
                "train_conversations": sum(not isinstance(d, str) for d in train_docs),
                "val_file": list(files)[-1], "files": files,
                "train_digest": pipeline.corpus_digest(list(train_docs)),
                "val_digest": pipeline.corpus_digest(list(val_docs))}
    if os.path.isdir(data):
        shutil.rmtree(data)
    os.replace(stage, data)
    with open(os.path.join(base_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def verify_val(base_dir: str, val_docs: Sequence) -> bool:
    """Whether nanochat's own reader yields exactly `val_docs` (as text) as its val split;
    remembered in the manifest, so it is read back once per export."""
    path = os.path.join(base_dir, MANIFEST)
    with open(path) as f:
        manifest = json.load(f)
    if "val_read_back_equal" not in manifest:
        got = read_back(base_dir, ("val",))["val"]
        manifest["val_read_back_equal"] = sorted(got) == sorted(corpus.text_of(d) for d in val_docs)
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest["val_read_back_equal"]


def load_corpus(name: str = "chat_tiny"):
    """(train documents, held-out documents) of an lm.data.corpus; its notes go to stderr (a
    tool's stdout may be its JSON answer)."""
    if name not in corpus.CORPORA:
        raise ValueError(f"unknown corpus {name!r}; known: {sorted(corpus.CORPORA)}")
    with contextlib.redirect_stdout(sys.stderr):
        return corpus.CORPORA[name]()


def cached_export(root: str, name: str = "chat_tiny", docs=None) -> tuple[str, dict]:
    """The export of corpus `name` under root/data-<name>-<digest>/ (written once per content);
    (its base dir, its manifest). `docs`: the (train, val) documents if already loaded."""
    train_docs, val_docs = docs if docs is not None else load_corpus(name)
    key = pipeline.corpus_digest(list(train_docs)) + pipeline.corpus_digest(list(val_docs))
    base = os.path.join(os.path.abspath(root), f"data-{name}-{key}")
    path = os.path.join(base, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            manifest = json.load(f)
        if all(os.path.exists(os.path.join(base, DATA_SUBDIR, n)) for n in manifest["files"]):
            return base, manifest
    return base, export(train_docs, val_docs, base, name=name)


def link_base(base_dir: str, data_from: str, tokenizer_from: Optional[str] = None) -> str:
    """A NANOCHAT_BASE_DIR that sees data_from's export (and tokenizer_from's tokenizer) through
    symlinks; what nanochat writes there itself (checkpoints) stays in base_dir."""
    os.makedirs(base_dir, exist_ok=True)
    links = {DATA_SUBDIR: os.path.join(data_from, DATA_SUBDIR)}
    if tokenizer_from is not None:
        links[TOKENIZER_SUBDIR] = os.path.join(tokenizer_from, TOKENIZER_SUBDIR)
    for name, target in links.items():
        dst = os.path.join(base_dir, name)
        if os.path.islink(dst):
            os.unlink(dst)
        os.symlink(os.path.abspath(target), dst)
    return base_dir


# ---- nanochat's own code, run as processes ------------------------------------------------------

def run_peer(args: list[str], base_dir: str, *,
             timeout: float = 3600) -> subprocess.CompletedProcess:
    """`python <args>` in the nanochat folder with NANOCHAT_BASE_DIR=base_dir; fails with its
    output's tail."""
    check_peer()
    r = subprocess.run([sys.executable] + args, cwd=PEER, env=peer_env(base_dir),
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"nanochat `{' '.join(args)[:200]}` failed ({r.returncode}):\n"
                           f"{(r.stdout + r.stderr)[-3000:]}")
    return r


def train_tokenizer(base_dir: str, vocab_size: int, *, max_chars: Optional[int] = None,
                    doc_cap: Optional[int] = None) -> dict:
    """nanochat's `scripts.tok_train` on base_dir's training shards; it writes
    base_dir/tokenizer/ (tokenizer.pkl, token_bytes.pt)."""
    args = ["-m", "scripts.tok_train", f"--vocab-size={vocab_size}"]
    if max_chars is not None:
        args.append(f"--max-chars={max_chars}")
    if doc_cap is not None:
        args.append(f"--doc-cap={doc_cap}")
    t0 = time.perf_counter()
    run_peer(args, base_dir)
    return {"vocab_size": vocab_size, "max_chars": max_chars, "doc_cap": doc_cap,
            "train_s": round(time.perf_counter() - t0, 2), "command": "python " + " ".join(args),
            "dir": os.path.join(base_dir, TOKENIZER_SUBDIR)}


def cached_tokenizer(root: str, data_base: str, vocab_size: int, *,
                     max_chars: Optional[int] = None) -> tuple[str, dict]:
    """nanochat's tokenizer of `vocab_size` trained once on data_base's export:
    (a base dir whose tokenizer/ holds it, its info)."""
    tag = os.path.basename(os.path.normpath(data_base))[len("data-"):]
    base = os.path.join(os.path.abspath(root), f"tok-{tag}-v{vocab_size}" +
                        (f"-c{max_chars}" if max_chars else ""))
    info_path = os.path.join(base, "lm_tokenizer.json")
    if os.path.exists(info_path) and \
            os.path.exists(os.path.join(base, TOKENIZER_SUBDIR, "token_bytes.pt")):
        with open(info_path) as f:
            return base, json.load(f)
    link_base(base, data_base)
    info = train_tokenizer(base, vocab_size, max_chars=max_chars)
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    return base, info


READ_BACK = """\
import json, sys
from nanochat.dataset import parquets_iter_batched
out = {s: [t for batch in parquets_iter_batched(s) for t in batch] for s in sys.argv[2:]}
with open(sys.argv[1], "w", encoding="utf-8") as f:
    json.dump(out, f)
"""


def read_back(base_dir: str, splits: Sequence[str] = ("train", "val")) -> dict[str, list[str]]:
    """The documents nanochat's own reader (`nanochat.dataset.parquets_iter_batched`) yields
    for each split, in order, with NANOCHAT_BASE_DIR=base_dir (a separate process)."""
    check_peer(("torch", "pyarrow", "filelock", "requests"))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "docs.json")
        run_peer(["-c", READ_BACK, out, *splits], base_dir, timeout=600)
        with open(out, encoding="utf-8") as f:
            return json.load(f)


# ---- CLI ----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["export", "tokenizer", "check"])
    p.add_argument("--out", required=True, help="the NANOCHAT_BASE_DIR to fill / read")
    p.add_argument("--corpus", default="chat_tiny", help="an lm.data.corpus name")
    p.add_argument("--vocab_size", type=int, default=4096, help="tokenizer: vocabulary size "
                   "(nanochat's own default is 32768)")
    p.add_argument("--max_chars", type=int, default=None,
                   help="tokenizer: characters to train on (default: nanochat's, 2B = all)")
    a = p.parse_args(argv)
    try:
        if a.command == "export":
            m = export(*load_corpus(a.corpus), a.out, name=a.corpus)
            print(json.dumps({k: v for k, v in m.items() if k != "files"}))
            return 0
        check_peer()
        docs = load_corpus(a.corpus)
        if a.command == "tokenizer":
            if not os.path.exists(os.path.join(a.out, MANIFEST)):
                export(*docs, a.out, name=a.corpus)
            print(json.dumps(train_tokenizer(a.out, a.vocab_size, max_chars=a.max_chars)))
            return 0
        got = read_back(a.out)
        same = sorted(got["val"]) == sorted(corpus.text_of(d) for d in docs[1])
        print(json.dumps({"train_docs_read": len(got["train"]), "val_docs_read": len(got["val"]),
                          "val_same_as_ours": same}))
        return 0 if same else 1
    except (PeerUnavailable, DataUnavailableError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)     # what is missing, or nanochat's own output
        return 2


if __name__ == "__main__":
    sys.exit(main())
