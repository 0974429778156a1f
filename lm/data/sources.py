"""Named data files: downloaded once from their canonical public URL into `LM_DATA_DIR`.

The cache layout mirrors `../shared/data/` (e.g. `$LM_DATA_DIR/tinyshakespeare/input.txt`), so
`LM_DATA_DIR=../shared/data` works offline.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass


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
}


class DataUnavailableError(RuntimeError):
    pass


def data_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("LM_DATA_DIR", "~/.cache/lm")))


def fetch(name: str, *, timeout: float = 60.0) -> str:
    """Local path of the named file, downloading it into the cache on first use."""
    if name not in FILES:
        raise KeyError(f"unknown data file {name!r}; known: {sorted(FILES)}")
    spec = FILES[name]
    path = os.path.join(data_dir(), spec.relpath)
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = None
    try:
        print(f"downloading {spec.url} -> {path}")
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
