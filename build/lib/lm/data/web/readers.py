"""Reading the web: WARC `response` records, WET `conversion` records, and folders of `.html[.gz]` pages.

`WebReader` is a datatrove reader (a `BaseDiskReader`) that makes the same keep/skip decisions on a
record as datatrove's own `WarcReader` (same record types, same payload-type test, same
UTF-8-then-chardet decoding: the decoding itself *is* datatrove's `process_record`), and adds what a
crawl at scale needs and `WarcReader` lacks:

- **Resilience.** A malformed record, a corrupt or truncated gzip member, undecodable bytes, an empty
  or gigantic payload never stops the task: the record is skipped, counted under its reason, and
  reading resumes at the next gzip member (Common Crawl writes one gzip member per record, so one
  bad member costs exactly one record).
- **No silent loss.** Every record is accounted for in the block's stats: `records` = kept +
  `skipped_<reason>` (record types we do not read: request, metadata, warcinfo, revisit...;
  non-HTML payloads) + `error_<reason>` (corrupt, truncated, undecodable, empty, too_large).
- **Plain HTML folders** (`.html`, `.htm`, optionally gzipped): one document per file.

Documents carry `metadata["url"]`, `metadata["date"]`, `metadata["content_type"]`
("text/html" or, for WET records, "text/plain" — the extractor passes those through).
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import zlib
from typing import Iterator, Optional

import cchardet
import magic
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger
from warcio.archiveiterator import ArchiveIterator
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

HTML_SUFFIXES = (".html", ".htm", ".html.gz", ".htm.gz", ".xhtml")
HTML_TYPES = ("text/html", "application/xhtml+xml")
GZIP_MAGIC = b"\x1f\x8b\x08"
WARC_MAGIC = b"WARC/"
DEFAULT_MAX_PAGE_BYTES = 8 * 1024 * 1024  # Common Crawl truncates payloads at 1 MiB; 8 MiB is 'gigantic'


class RecordError(Exception):
    """A record that cannot be read; `reason` names the counter it is filed under."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_html_path(path: str) -> bool:
    return path.lower().endswith(HTML_SUFFIXES)


def decode_payload(content: bytes) -> Optional[str]:
    """UTF-8, else the charset cchardet detects, else None — datatrove's WarcReader rule."""

    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        enc = cchardet.detect(content)["encoding"]
        if not enc or enc == "UTF-8":
            return None
        try:
            return content.decode(enc)
        except (UnicodeDecodeError, LookupError):
            return None


def classify_record(record) -> Optional[str]:
    """Why datatrove's WarcReader would skip this record before reading its payload (None: it reads it)."""
    if not record.rec_type or not record.rec_headers.get("WARC-Record-ID"):
        return "error:malformed"  # warcio parses leniently; a record without type or id is broken
    if record.rec_type not in ("response", "conversion"):
        return record.rec_type
    mime = record.rec_headers.get("WARC-Identified-Payload-Type", None)
    if mime is not None and mime not in HTML_TYPES and not (
            record.rec_type == "conversion" and mime == "text/plain"):
        return "non_html"
    return None


def _payload_mime(record, content: bytes) -> Optional[str]:
    mime = record.rec_headers.get("WARC-Identified-Payload-Type", None)
    if mime is None:  # older crawls: sniff, as datatrove does
        mime = magic.from_buffer(content, mime=True)
    return mime


def record_to_dict(record, max_bytes: int = DEFAULT_MAX_PAGE_BYTES) -> dict:
    """Payload of a `response`/`conversion` record as a document dict; raises RecordError (skip reason)."""
    try:
        content = record.content_stream().read(max_bytes + 1)
    except (EOFError, zlib.error, OSError) as e:
        raise RecordError("truncated", repr(e)) from e
    if len(content) > max_bytes:
        raise RecordError("too_large", f">{max_bytes} bytes")
    if getattr(record.raw_stream, "limit", 0) > 0:  # the block ended before its Content-Length
        raise RecordError("truncated", "record shorter than its Content-Length")
    mime = _payload_mime(record, content)
    if mime not in HTML_TYPES and not (record.rec_type == "conversion" and mime == "text/plain"):
        raise RecordError("skip:non_html")
    if not content.strip():
        raise RecordError("empty")
    text = decode_payload(content)
    if text is None:
        raise RecordError("undecodable")
    headers = record.rec_headers
    rid = headers.get("WARC-Record-ID")
    url = headers.get("WARC-Target-URI") or dict(headers.headers).get("uri")
    date = headers.get("WARC-Date") or dict(headers.headers).get("archive-date")
    if not rid or not url:
        raise RecordError("malformed", "record without WARC-Record-ID or target URI")
    ctype = "text/plain" if record.rec_type == "conversion" else "text/html"
    return {"text": text, "id": rid, "url": url, "date": date, "content_type": ctype,
            "payload_bytes": len(content)}


def _find_next(f, start: int, magic: bytes) -> Optional[int]:
    """Offset of the next `magic` at or after `start` (None: end of file)."""
    f.seek(start)
    overlap = len(magic) - 1
    pos, tail = start, b""
    while True:
        chunk = f.read(1 << 20)
        if not chunk:
            return None
        buf = tail + chunk
        i = buf.find(magic)
        if i >= 0:
            return pos - len(tail) + i
        tail = buf[-overlap:]
        pos += len(chunk)


def iter_warc(path: str, max_bytes: int = DEFAULT_MAX_PAGE_BYTES, opener=open) -> Iterator[tuple]:
    """Yields ("doc", dict) | ("skip", reason) | ("error", reason) for every record of a WARC/WET file.

    On a malformed record or a corrupt/truncated gzip member, resynchronises at the next gzip
    member (or, uncompressed, the next `WARC/` header) and goes on.
    """

    with opener(path, "rb") as f:
        head = f.read(4)
        f.seek(0)
        magic = GZIP_MAGIC if head[:2] == b"\x1f\x8b" else WARC_MAGIC
        pos = 0
        while pos is not None:
            f.seek(pos)
            it = ArchiveIterator(f, check_digests=False)
            failed_at = None
            try:
                for record in it:
                    skip = classify_record(record)
                    if skip is not None:
                        yield ("error", skip[6:]) if skip.startswith("error:") else ("skip", skip)
                        continue
                    try:
                        yield ("doc", record_to_dict(record, max_bytes))
                    except RecordError as e:
                        if e.reason == "truncated":
                            raise
                        if e.reason.startswith("skip:"):
                            yield ("skip", e.reason[5:])
                        else:
                            yield ("error", e.reason)
                return
            except Exception as e:  # noqa: BLE001 - any parse failure: count, resync, go on
                reason = "truncated" if isinstance(e, (EOFError, zlib.error, RecordError)) else "malformed"
                if isinstance(e, RecordError):
                    reason = e.reason
                yield ("error", reason)
                failed_at = getattr(it, "offset", pos)
            pos = _find_next(f, max(failed_at, pos) + 1, magic)


def read_html_file(path: str, max_bytes: int = DEFAULT_MAX_PAGE_BYTES, opener=open) -> dict:
    """One `.html[.gz]` page as a document dict; raises RecordError."""
    with opener(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if raw[:2] == b"\x1f\x8b":
        try:
            d = zlib.decompressobj(wbits=31)
            raw = d.decompress(raw, max_bytes + 1)
            if len(raw) <= max_bytes and not d.eof:
                raise RecordError("truncated", "gzip stream ends early")
        except zlib.error as e:
            raise RecordError("truncated", repr(e)) from e
    if len(raw) > max_bytes:
        raise RecordError("too_large", f">{max_bytes} bytes")
    if not raw.strip():
        raise RecordError("empty")
    text = decode_payload(raw)
    if text is None:
        raise RecordError("undecodable")
    m = _CANONICAL.search(text[:200_000])
    url = m.group(1) if m else "file:///" + path.lstrip("/")
    return {"text": text, "id": path, "url": url, "date": None, "content_type": "text/html",
            "payload_bytes": len(raw)}


_CANONICAL = re.compile(r"""<link[^>]+rel=["']canonical["'][^>]*href=["']([^"']+)["']""", re.I)


class WebReader(BaseDiskReader):
    """Reads WARC/WET files and HTML pages; every record is kept or counted under a reason.

    Args:
        data_folder: root folder (or a datatrove DataFolder)
        paths_file: file with one path per line relative to `data_folder` (what `process_web` writes)
        max_page_bytes: payloads above this are skipped as `error_too_large`
        glob_pattern: alternatively, the files under `data_folder` to read
    """

    name = "🕸 Web reader"
    _requires_dependencies = ["warcio", ("cchardet", "faust-cchardet"), ("magic", "python-magic")]

    def __init__(self, data_folder, paths_file=None, max_page_bytes: int = DEFAULT_MAX_PAGE_BYTES,
                 glob_pattern: str | None = None, limit: int = -1, default_metadata: dict | None = None):
        super().__init__(data_folder, paths_file=paths_file, limit=limit, glob_pattern=glob_pattern,
                         default_metadata=default_metadata)
        self.max_page_bytes = max_page_bytes

    def _opener(self, path, mode):
        return self.data_folder.open(path, mode, compression=None)

    def read_file(self, filepath: str):
        if is_html_path(filepath):
            events = self._html_events(filepath)
        else:
            events = iter_warc(filepath, self.max_page_bytes, opener=self._opener)
        ri = 0
        try:
            for kind, value in events:
                self.stat_update("records")
                if kind == "skip":
                    self.stat_update(f"skipped_{value}")
                    continue
                if kind == "error":
                    self.stat_update("errors", f"error_{value}")
                    continue
                nbytes = value.pop("payload_bytes")
                self.stat_update("payload_bytes", value=nbytes, unit="doc")
                doc = self.get_document_from_dict(value, filepath, ri)
                ri += 1
                if doc is not None:
                    yield doc
        except (OSError, EOFError) as e:  # unreadable file: counted, the task goes on
            self.stat_update("records", "errors", "error_unreadable_file")
            logger.warning(f"cannot read {filepath}: {e!r}")

    def _html_events(self, filepath):
        try:
            yield ("doc", read_html_file(filepath, self.max_page_bytes, opener=self._opener))
        except RecordError as e:
            yield ("error", e.reason)


# ---- helpers for tests and the benchmark -------------------------------------------------------

def write_warc(path: str, pages: list[dict], *, gzip_members: bool = True) -> None:
    """Write pages ({"url", "html" (str|bytes), optional "id", "content_type"}) as WARC response records."""

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=gzip_members)
        for p in pages:
            body = p["html"].encode("utf-8") if isinstance(p["html"], str) else p["html"]
            ctype = p.get("content_type", "text/html; charset=utf-8")
            http = StatusAndHeaders("200 OK", [("Content-Type", ctype)], protocol="HTTP/1.1")
            headers = {"WARC-Identified-Payload-Type": ctype.split(";")[0]}
            if "id" in p:
                headers["WARC-Record-ID"] = p["id"]
            rec = writer.create_warc_record(p["url"], "response", payload=io.BytesIO(body),
                                            http_headers=http, warc_headers_dict=headers)
            writer.write_record(rec)


def benchmark_pages(shared_data: str) -> list[dict]:
    """The article-extraction benchmark's pages: [{"url", "html" (bytes), "id": sha, "truth"}]."""

    root = os.path.join(shared_data, "html_extraction_benchmark")
    with open(os.path.join(root, "ground-truth.json"), encoding="utf-8") as f:
        truth = json.load(f)
    pages = []
    for sha in sorted(truth):
        p = os.path.join(root, "html", f"{sha}.html.gz")
        if not os.path.exists(p):
            continue
        with gzip.open(p, "rb") as g:
            html = g.read()
        pages.append({"url": truth[sha].get("url") or f"https://benchmark.invalid/{sha}",
                      "html": html, "id": f"<urn:bench:{sha}>", "truth": truth[sha]["articleBody"]})
    return pages
