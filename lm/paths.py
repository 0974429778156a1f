"""Where lm keeps files outside a run directory, in one place.

    data_dir()        downloads of named data files: $LM_DATA_DIR, else ~/.cache/lm
                      (the layout of ../shared/data, so LM_DATA_DIR=../shared/data works offline)
    workdir()         the folder that holds runs/: the one `using_workdir` names (lm.main
                      --workdir, train.run(workdir=...)), else the current directory
    cache_dir(*sub)   derived files (tokenized corpora, blocklist arrays): $LM_CACHE_DIR, else
                      <workdir>/runs/cache
    machine_cache_dir(*sub)   what is compiled for this machine and Python environment, shared by
                      every work folder (the oneDNN kernel, XLA's compiled programs):
                      $LM_MACHINE_CACHE_DIR, else ~/.cache/lm/machine
    tokenizer_dir()   trained tokenizers: $LM_TOKENIZER_DIR, else <workdir>/runs/tokenizers
    tfds_dir()        TFDS builds of lm's datasets (lm.data.tfds_builders): $TFDS_DATA_DIR (the
                      variable TFDS itself reads), else <workdir>/runs/tfds

Caches follow the run's work folder, never the source tree, so a checkout stays clean and two
work folders never share half-written caches. Compiled code is the exception: it depends on the
machine and the environment, not on the data, and rebuilding it in every new work folder cost
each fresh run seconds (3.5 s for the kernel, about 5 s of XLA compilation for the main job);
its files are written whole and renamed into place, so work folders can share them.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

_workdir: Optional[str] = None


def data_dir() -> str:
    return os.path.abspath(os.path.expanduser(os.environ.get("LM_DATA_DIR", "~/.cache/lm")))


def workdir() -> str:
    return os.path.abspath(_workdir or os.getcwd())


@contextlib.contextmanager
def using_workdir(path: Optional[str]) -> Iterator[str]:
    """Caches and trained tokenizers go under `path` (None: unchanged) while the block runs."""
    global _workdir
    before = _workdir
    if path is not None:
        _workdir = os.path.abspath(os.path.expanduser(path))
    try:
        yield workdir()
    finally:
        _workdir = before


def cache_dir(*sub: str) -> str:
    root = os.environ.get("LM_CACHE_DIR") or os.path.join(workdir(), "runs", "cache")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), *sub)


def machine_cache_dir(*sub: str) -> str:
    root = os.environ.get("LM_MACHINE_CACHE_DIR") or os.path.join("~", ".cache", "lm", "machine")
    return os.path.join(os.path.abspath(os.path.expanduser(root)), *sub)


def tokenizer_dir() -> str:
    root = os.environ.get("LM_TOKENIZER_DIR") or os.path.join(workdir(), "runs", "tokenizers")
    return os.path.abspath(os.path.expanduser(root))


def tfds_dir() -> str:
    root = os.environ.get("TFDS_DATA_DIR") or os.path.join(workdir(), "runs", "tfds")
    return os.path.abspath(os.path.expanduser(root))
