"""HTML → text: trafilatura (FineWeb's choice, datatrove's block) or resiliparse (DCLM's choice, ours).

datatrove 0.10.1 ships only `Trafilatura` and `ReadabilityInscriptis`; `Resiliparse` below is a
datatrove `BaseExtractor` so it plugs into any datatrove pipeline, with the same sandbox (a child
process with a per-document timeout, so a pathological page cannot hang or crash the task).

`Extract` is the recipe's extraction step around either backend. It differs from datatrove's
`BaseExtractor.run` in two ways, both needed by the recipe: WET `conversion` records (already plain
text, `metadata["content_type"] == "text/plain"`) pass through unchanged instead of being fed to an
HTML extractor, and each dropped document is counted under its reason (`timeout`, `error`,
`broken_process`, `empty`) so the run's stats account for every document.
"""
from __future__ import annotations

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.extractors.base import BaseExtractor, ExtractorSandbox
from datatrove.utils.logging import logger
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

# DCLM's resiliparse settings (main content, no alt texts/links/forms/noscript/comments).
RESILIPARSE_DEFAULTS = dict(main_content=True, preserve_formatting=True, list_bullets=True,
                            alt_texts=False, links=False, form_fields=False, noscript=False,
                            comments=False)


class Resiliparse(BaseExtractor):
    """resiliparse's `extract_plain_text` (DCLM's extractor), as a datatrove extractor block."""

    name = "⚡ Resiliparse"
    _requires_dependencies = ["resiliparse"]

    def __init__(self, timeout: float = 1, **kwargs):
        super().__init__(timeout)
        self.kwargs = {**RESILIPARSE_DEFAULTS, **kwargs}

    def extract(self, text: str) -> str:

        out = extract_plain_text(HTMLTree.parse(text), **self.kwargs)
        # resiliparse keeps blank lines between blocks; trafilatura separates paragraphs with one
        # newline. Normalise to one, so line-based filters see paragraphs the same way.
        return "\n".join(line.strip() for line in out.splitlines() if line.strip())


def make_extractor(name: str, timeout: float = 1.0) -> BaseExtractor:
    if name == "trafilatura":
        return Trafilatura(favour_precision=True, timeout=timeout)  # FineWeb's settings
    if name == "resiliparse":
        return Resiliparse(timeout=timeout)
    raise ValueError(f"unknown extractor {name!r}; choose trafilatura or resiliparse")


class Extract(PipelineStep):
    """Runs `backend.extract` on HTML documents in datatrove's sandbox; plain text passes through."""

    type = "🛢 - EXTRAC"

    def __init__(self, backend: BaseExtractor):
        super().__init__()
        self.backend = backend
        self._warned = False
        self.name = f"{backend.name} (recipe)"

    def run(self, data, rank: int = 0, world_size: int = 1):
        with ExtractorSandbox(timeout=self.backend.timeout, warmup_text="") as sandbox:
            for doc in data:
                self.stat_update("total")
                if doc.metadata.get("content_type") == "text/plain":
                    self.stat_update("passthrough", "forwarded")
                    yield doc
                    continue
                with self.track_time():
                    try:
                        doc.text = sandbox.process_document(doc.text, self.backend.extract)
                    except TimeoutError:
                        self._drop(doc, "timeout")
                        continue
                    except EOFError:
                        self._drop(doc, "broken_process")
                        continue
                    except Exception as e:  # noqa: BLE001 - an extractor bug drops the page, not the run
                        if not self._warned:
                            self._warned = True
                            logger.warning(f"extraction error (shown once): {e!r}")
                        self._drop(doc, "error")
                        continue
                if doc.text:
                    self.stat_update("extracted", "forwarded")
                    yield doc
                else:
                    self._drop(doc, "empty")

    def _drop(self, doc, reason: str):
        self.stat_update("dropped", f"dropped_{reason}")
        doc.metadata["drop_reason"] = reason
