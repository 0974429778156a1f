"""datatrove's Ray executor on a local Ray cluster (2 CPUs) gives the same final output as the local
executor: documents (per rank, in order) and token shards, byte for byte. ~55 s: a Ray cluster start
and one actor per job; kept out of tests/test_web.py to keep that file fast."""
import os
import shutil

import pytest

pytest.importorskip("datatrove", reason="web pipeline deps not installed: pip install -r requirements-web.txt")
pytest.importorskip("ray", reason="ray not installed: pip install -r requirements-web.txt")

from lm.data.web import readers  # noqa: E402
from tests.test_web import _article, _cli, _crawl_files, _outputs, _small_pages  # noqa: E402


def _args(inp, out, executor):
    return ["--input", os.path.join(inp, "**", "*.gz"), "--output", str(out), "--workers", "2",
            "--tasks", "2", "--extractor", "resiliparse", "--extract-timeout", "60",
            "--shard-tokens", "3000", "--executor", executor]


def test_ray_executor_same_output_as_local(shared_data, tmp_path):
    inp = tmp_path / "in"
    for p in _crawl_files(shared_data):
        shutil.copy(p, inp / os.path.basename(p) if inp.exists() else (inp.mkdir() or inp / os.path.basename(p)))
    article = _article(shared_data)
    pages = _small_pages(shared_data, 6) + [
        {"url": "https://news.example.com/a", "html": article},
        {"url": "https://mirror.example.net/a", "html": article.replace("<p>", "<p>Updated: ", 1)}]
    readers.write_warc(str(inp / "pages.warc.gz"), pages)
    local = _cli(_args(inp, tmp_path / "local", "local"))
    ray_run = _cli(_args(inp, tmp_path / "ray", "ray"), {"RAY_DEDUP_LOGS": "0"})
    assert "[8/8] shards: done" in local.stdout and "[8/8] shards: done" in ray_run.stdout
    a, b = _outputs(str(tmp_path / "local")), _outputs(str(tmp_path / "ray"))
    assert a == b and sum(len(v) for v in a[0].values()) >= 5 and a[1]
