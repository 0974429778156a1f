"""Named data files: downloaded once from their canonical public URL into `LM_DATA_DIR`.

The cache layout mirrors `../shared/data/` (e.g. `$LM_DATA_DIR/tinyshakespeare/input.txt`), so
`LM_DATA_DIR=../shared/data` works offline.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass

from lm import paths


@dataclass(frozen=True)
class RemoteFile:
    relpath: str  # path under LM_DATA_DIR
    url: str


FILES: dict[str, RemoteFile] = {
    "tinyshakespeare": RemoteFile(
        "tinyshakespeare/input.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"),
    "gpt2_encoder": RemoteFile(
        "gpt2_tokenizer/encoder.json",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json"),
    "gpt2_vocab": RemoteFile(
        "gpt2_tokenizer/vocab.bpe",
        "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe"),
    "gsm8k_train": RemoteFile(
        "gsm8k/train.jsonl",
        "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/train.jsonl"),
    "gsm8k_test": RemoteFile(
        "gsm8k/test.jsonl",
        "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/test.jsonl"),
    "arc_easy_test": RemoteFile(
        "arc/arc_easy_test.jsonl",
        "https://raw.githubusercontent.com/mosaicml/llm-foundry/main/scripts/eval/local_data/world_knowledge/arc_easy.jsonl"),
    "arc_challenge_test": RemoteFile(
        "arc/arc_challenge_test.jsonl",
        "https://raw.githubusercontent.com/mosaicml/llm-foundry/main/scripts/eval/local_data/world_knowledge/arc_challenge.jsonl"),
    "hellaswag_val": RemoteFile(
        "hellaswag/hellaswag_val_full.txt.bz2",
        "https://raw.githubusercontent.com/klosax/hellaswag_text_data/main/hellaswag_val_full.txt.bz2"),
    "mmlu_archive": RemoteFile(
        "mmlu/data.tar", "https://people.eecs.berkeley.edu/~hendrycks/data.tar"),
    "dolly15k": RemoteFile(
        "dolly15k/databricks-dolly-15k.jsonl",
        "https://huggingface.co/datasets/databricks/databricks-dolly-15k/resolve/main/databricks-dolly-15k.jsonl"),
    "alpaca": RemoteFile(
        "alpaca/alpaca_data.json",
        "https://raw.githubusercontent.com/tatsu-lab/stanford_alpaca/main/alpaca_data.json"),
    "tinystories_train": RemoteFile(
        "tinystories/tiny_stories.txt",
        "https://raw.githubusercontent.com/s-ajaykumar/smallGPT/main/data/tiny_stories.txt"),
    "tinystories_val": RemoteFile(
        "tinystories/tinystories_val.txt",
        "https://raw.githubusercontent.com/yuninxia/moe-routing-bench/main/data/tinystories_val.txt"),
    "wikitext2_valid": RemoteFile(
        "wikitext2/wiki.valid.raw",
        "https://raw.githubusercontent.com/DRAGNLabs/LLMHumanModeling/97788e424b52/data/wiki.valid.raw"),
    "wikitext2_test": RemoteFile(
        "wikitext2/wiki.test.raw",
        "https://raw.githubusercontent.com/DRAGNLabs/LLMHumanModeling/97788e424b52/data/wiki.test.raw"),
    "fineweb_edu_sample": RemoteFile(
        "fineweb_edu_sample/training_data.csv",
        "https://raw.githubusercontent.com/Mohamed-Elsafty23/fineweb-edu-scorer/main/data/training_data.csv"),
}

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
HH_RLHF = {  # Anthropic's HH-RLHF test sets (preference pairs; lm.data.preferences)
    f"hh_rlhf/{s}": "https://huggingface.co/datasets/Anthropic/hh-rlhf/resolve/main/"
                    f"{s}/test.jsonl.gz"
    for s in ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")}
for _n, _u in HH_RLHF.items():
    FILES.setdefault(_n, RemoteFile(f"{_n}/test.jsonl.gz", _u))
for _f, _u in GUTENBERG.items():
    FILES.setdefault(f"gutenberg/{_f}", RemoteFile(f"gutenberg/{_f}", _u))
for _f, _u in CC_TEXT.items():
    FILES.setdefault(f"cc_text/{_f}", RemoteFile(f"cc_text/{_f}", _u))

# Files that stand in for a canonical one when it is absent (the shared data's substitutes).
ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "dolly15k": tuple(f"dolly15k/local_training_{i}.json" for i in range(10))
    + ("dolly15k/global_test.json",),
    "alpaca": ("alpaca/alpaca_5000.json",),
}


class DataUnavailableError(RuntimeError):
    pass


def local(relpath: str) -> str:
    """The path of `relpath` under the data cache (whether or not it exists)."""
    return os.path.join(paths.data_dir(), relpath)


def fetch_or_alternatives(name: str) -> list[str]:
    """The canonical file (downloaded if needed), or, when the stand-ins listed in
    `ALTERNATIVES[name]` are all in the cache, those instead (no download attempted)."""
    alts = [local(p) for p in ALTERNATIVES.get(name, ())]
    if not os.path.exists(local(FILES[name].relpath)) and alts and all(map(os.path.exists, alts)):
        return alts
    return [fetch(name)]


def fetch(name: str, *, timeout: float = 60.0) -> str:
    """Local path of the named file, downloading it into the cache on first use."""
    if name not in FILES:
        raise KeyError(f"unknown data file {name!r}; known: {sorted(FILES)}")
    spec = FILES[name]
    path = os.path.join(paths.data_dir(), spec.relpath)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = None
    try:
        print(f"downloading {spec.url} -> {path}", file=sys.stderr)   # stdout may be --json
        with urllib.request.urlopen(spec.url, timeout=timeout) as r, \
                tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as tmp:
            shutil.copyfileobj(r, tmp)
        os.replace(tmp.name, path)  # atomic: a killed download leaves no partial file behind
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        if tmp is not None and os.path.exists(tmp.name):
            os.remove(tmp.name)
        raise DataUnavailableError(
            f"could not download {name} from {spec.url} ({e}).\n"
            f"Put the file at {path} (or set LM_DATA_DIR to a folder holding {spec.relpath}, "
            f"e.g. LM_DATA_DIR=../shared/data).") from None
    return path


# Named plain-text sources (data.source): each is one downloaded file read whole.
TEXT_SOURCES: dict[str, str] = {"tinyshakespeare": "tinyshakespeare"}   # source -> FILES key


def read_text(name: str) -> str:
    """The whole text of a named text source (downloaded on first use)."""
    if name not in TEXT_SOURCES:
        raise KeyError(f"unknown text source {name!r}; known: {sorted(TEXT_SOURCES)}")
    with open(fetch(TEXT_SOURCES[name]), encoding="utf-8") as f:
        return f.read()
