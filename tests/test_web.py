"""Web pipeline (lm/data/web): each stage on real records and crafted edge cases, the whole recipe end
to end (local executor, 2 workers), kill-and-rerun resume equality, and the token shards read back
by the trainer's loader. Ray executor equality: tests/test_web_ray.py.

Needs requirements-web.txt (skipped otherwise) and ../shared/data (skipped with the reason when absent).
"""
import copy
import glob
import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("datatrove", reason="web pipeline deps not installed: pip install -r requirements-web.txt")
pytest.importorskip("resiliparse", reason="web pipeline deps not installed: pip install -r requirements-web.txt")

from datatrove.data import Document  # noqa: E402

from lm.data.web import readers  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PII_LINE = ("Readers can reach the reporter at jane.roe@gmail.com or on the server at 8.8.4.4, "
            "while the office network uses 192.168.1.20 internally.")


def _crawl_files(shared):
    files = sorted(glob.glob(os.path.join(shared, "web_crawl", "**", "*.gz"), recursive=True))
    if not files:
        pytest.skip(f"no WARCs under {shared}/web_crawl")
    return files


def _warc_bytes(pages):
    buf = io.BytesIO()
    from warcio.statusandheaders import StatusAndHeaders
    from warcio.warcwriter import WARCWriter
    w = WARCWriter(buf, gzip=True)
    for p in pages:
        body = p["html"] if isinstance(p["html"], bytes) else p["html"].encode()
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
        rec = w.create_warc_record(p["url"], "response", payload=io.BytesIO(body), http_headers=http,
                                   warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"})
        w.write_record(rec)
    return buf.getvalue()


def _small_pages(shared, n):
    pages = [p for p in readers.benchmark_pages(shared) if len(p["html"]) < 200_000]
    return pages[:n]


def _article(shared):
    """An English article page built from a real FineWeb-Edu document (it passed these filters once)."""
    import csv

    path = os.path.join(shared, "fineweb_edu_sample", "training_data.csv")
    if not os.path.exists(path):
        pytest.skip(f"{path} absent")
    with open(path, encoding="utf-8", newline="") as f:
        text = next(t for t in (row["text"] for row in csv.DictReader(f)) if 3000 < len(t) < 20000)
    body = "".join(f"<p>{p.strip()}</p>" for p in text.split("\n") if p.strip())
    return f"<html><head><title>An article</title></head><body><article><h1>An article</h1>{body}</article></body></html>"


@pytest.fixture(scope="module")
def web_input(shared_data, tmp_path_factory):
    """Shared WARCs + benchmark pages (with an exact and a near duplicate and PII) + damaged files."""
    root = tmp_path_factory.mktemp("web_input")
    for p in _crawl_files(shared_data):
        dst = root / "crawl" / os.path.relpath(p, os.path.join(shared_data, "web_crawl"))
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst)
    pages = _small_pages(shared_data, 12)
    pii = dict(pages[2])
    pii["html"] = pii["html"].replace(b"</p>", f"</p><p>{PII_LINE}</p>".encode(), 1)
    pages[2] = pii
    exact = dict(pages[0], url=pages[0]["url"] + "?copy=1")
    exact.pop("id")
    article = _article(shared_data)
    near = article.replace("<p>", "<p>Updated: ", 1)  # one word more in ~600: a near duplicate
    pages += [{"url": "https://news.example.com/a", "html": article},
              {"url": "https://mirror.example.net/a", "html": near}]
    readers.write_warc(str(root / "bench" / "pages.warc.gz"), pages + [exact])
    # damaged and unusable records, each in a file of its own or between good ones
    good = _small_pages(shared_data, 14)[12:]
    edge = [{"url": "http://example.org/bad-bytes", "html": bytes(range(256)) * 4},
            {"url": "http://example.org/empty", "html": b"  \n "},
            {"url": "http://example.org/huge", "html": b"<html><body>" + b"<p>big page</p>" * 700_000}]
    data = _warc_bytes(good[:1]) + gzip.compress(b"WARC/1.0\r\nnot a header line\r\n\r\n") + \
        _warc_bytes(edge) + _warc_bytes(good[1:])
    (root / "bench" / "edge.warc.gz").write_bytes(data)
    full = _warc_bytes(good)
    (root / "bench" / "truncated.warc.gz").write_bytes(full[:int(len(full) * 0.6)])
    html_dir = root / "pages"
    html_dir.mkdir()
    (html_dir / "ok.html").write_bytes(good[0]["html"])
    (html_dir / "cut.html.gz").write_bytes(gzip.compress(good[1]["html"])[:5000])
    return str(root)


# ---- reader ---------------------------------------------------------------------------------------

def test_reader_real_warcs_match_datatrove(shared_data):
    from datatrove.pipeline.readers import WarcReader

    files = _crawl_files(shared_data)
    folder = os.path.join(shared_data, "web_crawl")
    ours = list(readers.WebReader(folder, glob_pattern="**/*.gz").run())
    ref = list(WarcReader(folder, glob_pattern="**/*.gz").run())
    assert len(files) == 6 and len(ours) == 20
    assert [(d.id, d.text, d.metadata["url"]) for d in ours] == \
        [(d.id, d.text, d.metadata["url"]) for d in ref]
    wet = [d for d in ours if d.metadata["content_type"] == "text/plain"]
    assert len(wet) == 1 and "Escopete" in wet[0].metadata["url"]


def test_reader_edge_cases_skipped_and_counted(web_input):
    r = readers.WebReader(web_input, glob_pattern="bench/*.gz")
    docs = list(r.run())
    m = {k: v.total for k, v in r.stats.stats.items()}
    assert m["error_malformed"] == 1 and m["error_undecodable"] == 1 and m["error_empty"] == 1
    assert m["error_too_large"] == 1 and m["error_truncated"] >= 1
    skipped = sum(v for k, v in m.items() if k.startswith("skipped_"))
    errors = sum(v for k, v in m.items() if k.startswith("error_"))
    assert m["records"] == len(docs) + skipped + errors  # nothing lost silently
    assert len(docs) >= 15 + 2  # pages.warc (12 + 3), edge.warc's 2 good (+ truncated's intact ones)
    r2 = readers.WebReader(web_input, glob_pattern="pages/*")
    docs2 = list(r2.run())
    assert len(docs2) == 1 and r2.stats["error_truncated"].total == 1


def test_reader_resyncs_after_corrupt_member(shared_data, tmp_path):
    src = os.path.join(shared_data, "web_crawl", "resiliparse", "warcfile.warc.gz")
    if not os.path.exists(src):
        pytest.skip(f"{src} absent")
    data = bytearray(open(src, "rb").read())
    for i in range(40000, 40100):
        data[i] ^= 0x55
    p = tmp_path / "corrupt.warc.gz"
    p.write_bytes(bytes(data))
    events = list(readers.iter_warc(str(p)))
    assert sum(k == "doc" for k, _ in events) == 15  # 16 pages, one lost with its member
    assert [v for k, v in events if k == "error"] == ["malformed"]
    assert len(events) == 50  # every record still accounted for


# ---- extraction, language, quality filters, PII ---------------------------------------------------

def _token_f1(pred: str, truth: str) -> float:
    from collections import Counter
    p, t = Counter(pred.split()), Counter(truth.split())
    common = sum((p & t).values())
    return 0.0 if not common else 2 * common / (sum(p.values()) + sum(t.values()))


def test_extractors_and_passthrough(shared_data):
    from datatrove.pipeline.extractors import Trafilatura

    from lm.data.web.extractors import Extract, Resiliparse

    page = _small_pages(shared_data, 1)[0]
    html = page["html"].decode("utf-8", "replace")
    for ex in (Resiliparse(), Trafilatura(favour_precision=True)):
        assert _token_f1(ex.extract(html), page["truth"]) > 0.6
    docs = [Document(text=html, id="a", metadata={"content_type": "text/html"}),
            Document(text="already plain text", id="b", metadata={"content_type": "text/plain"}),
            Document(text="<html></html>", id="c", metadata={"content_type": "text/html"})]
    step = Extract(Resiliparse())
    out = list(step.run(iter(docs)))
    assert [d.id for d in out] == ["a", "b"] and out[1].text == "already plain text"
    assert step.stats["dropped_empty"].total == 1 and step.stats["passthrough"].total == 1


def test_language_filter_offline():
    from lm.data.web.stages import language_filter

    f = language_filter(["en"], 0.65)
    en = Document(text="The quick brown fox jumps over the lazy dog near the river bank today.", id="1")
    de = Document(text="Der schnelle braune Fuchs springt über den faulen Hund am Flussufer.", id="2")
    assert f.filter(en) and en.metadata["language"] == "en"
    assert not f.filter(de) and de.metadata["language"] == "de"


@pytest.fixture(scope="module")
def extracted_docs(shared_data):
    """Every benchmark page and shared WARC page, extracted by both extractors."""
    from datatrove.pipeline.extractors import Trafilatura

    from lm.data.web.extractors import Resiliparse

    htmls = [p["html"].decode("utf-8", "replace") for p in readers.benchmark_pages(shared_data)[:24]]
    htmls += [d.text for d in readers.WebReader(os.path.join(shared_data, "web_crawl"),
                                                glob_pattern="**/*.gz").run()]
    docs = []
    for ex in (Resiliparse(), Trafilatura(favour_precision=True)):
        for i, h in enumerate(htmls):
            text = ex.extract(h)
            if text:
                docs.append(Document(text=text, id=f"{ex.name}{i}"))
    crafted = ["", "word " * 60, ("Same line here.\n" * 30), "lorem ipsum dolor sit amet. " * 20,
               "A {curly} line that ends well.\n" * 10, "# # # tag\n" * 40, "...\n" * 50,
               "- item one\n- item two\n- item three\n" * 20, "x" * 1200 + " long word.\n" + "ok. " * 80,
               "Short.\nLines.\nOnly.\n" * 30, "The end of the sentence is here. " * 300]
    docs += [Document(text=t, id=f"crafted{i}") for i, t in enumerate(crafted)]
    return docs


def test_fast_words_equal_datatrove(extracted_docs):
    from datatrove.utils.text import split_into_words
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from lm.data.web.fastfilters import fast_words

    for d in extracted_docs:
        assert fast_words(d.text) == split_into_words(d.text)

    @settings(max_examples=60, deadline=None)
    @given(st.text(alphabet=st.sampled_from(list("ab.,'-:;!?()$%\"’ \n\t\xa0’…#0123456789dontcan'tU.S.A")),
                   max_size=80))
    def check(text):
        assert fast_words(text) == split_into_words(text)
    check()


def test_fast_filters_same_decisions_as_datatrove(extracted_docs):
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter)

    from lm.data.web import fastfilters as ff

    pairs = [(GopherRepetitionFilter(), ff.FastGopherRepetitionFilter()),
             (GopherQualityFilter(), ff.FastGopherQualityFilter()),
             (C4QualityFilter(filter_no_terminal_punct=False), ff.FastC4QualityFilter(filter_no_terminal_punct=False)),
             (FineWebQualityFilter(), ff.FastFineWebQualityFilter())]
    docs = [d for d in extracted_docs if d.text]  # datatrove's Gopher quality divides by zero on ""
    for ref, fast in pairs:
        a, b = copy.deepcopy(docs), copy.deepcopy(docs)
        assert [ref.filter(d) for d in a] == [fast.filter(d) for d in b], type(ref).__name__
        assert [d.text for d in a] == [d.text for d in b]  # C4 rewrites the text the same way


def test_fast_url_filter_same_decisions(shared_data):
    from datatrove.pipeline.filters import URLFilter
    from tldextract import TLDExtract

    from lm.data.web.fastfilters import FastURLFilter

    lists = os.path.join(shared_data, "blocklists", "ut1")
    urls = ["http://example.com/news/article", "https://en.wikipedia.org/wiki/Fox",
            "http://www.xxxvideos-example.com/", "http://casino-online.example/bet", "http://a.b.c.example.org/"]
    for name in ("gambling_domains.txt", "dating_domains.txt", "mixed_adult_domains.txt"):
        p = os.path.join(lists, name)
        if os.path.exists(p):
            with open(p, encoding="utf-8", errors="replace") as f:
                doms = [line.strip() for line in f if line.strip()][:150]
            urls += [f"http://{d}/page" for d in doms] + [f"https://www.{d}/" for d in doms[:30]]
    ref, fast = URLFilter(), FastURLFilter()
    ref.tldextractor = TLDExtract(suffix_list_urls=())  # offline: the snapshot both fall back to
    docs = [Document(text="x", id=str(i), metadata={"url": u}) for i, u in enumerate(urls)]
    r, f = [ref.filter(d) for d in docs], [fast.filter(d) for d in docs]
    assert r == f
    assert sum(x is not True for x in r) > 20  # the lists do block


def test_pii_formatter():
    from datatrove.pipeline.formatters import PIIFormatter

    out = PIIFormatter().format(PII_LINE)
    assert "jane.roe@gmail.com" not in out and "8.8.4.4" not in out and "192.168.1.20" in out


# ---- token shards ---------------------------------------------------------------------------------

def test_shards_read_back_by_trainer_loader(shared_data, tmp_path):
    from lm.config import DataConfig
    from lm.data.pipeline import load_token_splits
    from lm.data.web.shards import ShardWriter, TokenizeDocs, build_tokenizer, iter_documents, read_index

    texts = [f"Document number {i}. " + "Some words of web text. " * (i % 5 + 1) for i in range(40)]
    for rank, chunk in enumerate((texts[:25], texts[25:])):
        step = TokenizeDocs(str(tmp_path / "tokens"), "gpt2")
        out = list(step.run(iter(Document(text=t, id=str(i)) for i, t in enumerate(chunk)), rank, 2))
        assert len(out) == len(chunk)
    list(ShardWriter(str(tmp_path / "tokens"), str(tmp_path / "shards"), "gpt2", seed=3, shard_tokens=300,
                     world_size=2).run())
    idx = read_index(str(tmp_path / "shards"))
    tok = build_tokenizer("gpt2")
    assert idx["dtype"] == "uint16" and idx["documents"] == 40 and len(idx["shards"]) > 1
    files = sorted(glob.glob(str(tmp_path / "shards" / "shard_*.npy")))
    assert all(np.load(f).dtype == np.uint16 for f in files)
    splits = load_token_splits(DataConfig(source="shards", shards=str(tmp_path / "shards" / "shard_*.npy"),
                                          tokenizer=idx["tokenizer"], segment_on_bos=True, train_split=0.5))
    stream = np.concatenate([splits.train, splits.val])
    assert stream[0] == tok.bos_id == idx["bos_id"] and int((stream == tok.bos_id).sum()) == 40
    assert stream.size == idx["tokens"] == sum(len(tok.encode(t)) + 1 for t in texts)
    decoded = [tok.decode(d[1:].tolist()) for d in iter_documents(str(tmp_path / "shards"), tok.bos_id)]
    assert sorted(decoded) == sorted(texts) and decoded != texts  # all there, shuffled
    rng_order = np.random.default_rng(3).permutation(40)
    assert decoded == [texts[i] for i in rng_order]


# ---- the whole recipe -----------------------------------------------------------------------------

def _cli(args, env_extra=None, check=True):
    env = dict(os.environ)
    env.update(env_extra or {})
    try:
        r = subprocess.run([sys.executable, "-m", "tools.process_web", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=240, start_new_session=True)
    except subprocess.TimeoutExpired as e:  # say where it stopped
        tail = lambda b: (b.decode(errors="replace") if isinstance(b, bytes) else b or "")[-4000:]
        raise AssertionError(f"process_web still running after 240 s:\n{tail(e.stdout)}\n"
                             f"{tail(e.stderr)}") from None
    if check and r.returncode != 0:
        raise AssertionError(f"process_web failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def _args(web_input, out, workers, executor="local"):
    return ["--input", os.path.join(web_input, "**", "*.gz"), "--input", os.path.join(web_input, "pages"),
            "--output", str(out), "--workers", str(workers), "--tasks", "3", "--extract-timeout", "60",
            "--shard-tokens", "4000", "--executor", executor]


def _outputs(run_dir):
    """Final documents (per rank, in order) and shard bytes: what must be identical across runs."""
    docs = {}
    for p in sorted(glob.glob(os.path.join(run_dir, "documents", "*.jsonl.gz"))):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            docs[os.path.basename(p)] = [(d["id"], d["text"]) for d in map(json.loads, f)]
    shards = {os.path.basename(p): open(p, "rb").read()
              for p in sorted(glob.glob(os.path.join(run_dir, "shards", "*")))}
    return docs, shards


@pytest.fixture(scope="module")
def local_run(web_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("web_local") / "run"
    r = _cli(_args(web_input, out, 2) + ["--doc-format", "both"])
    return str(out), r.stdout


def test_recipe_end_to_end_local(local_run):
    from lm.config import DataConfig
    from lm.data.pipeline import load_token_splits, make_iterators
    from lm.data.web.shards import build_tokenizer, iter_documents, read_index

    run_dir, stdout = local_run
    assert "[8/8] shards: done" in stdout and "stats.json" in stdout
    stats = json.load(open(os.path.join(run_dir, "stats.json")))
    assert os.path.getsize(os.path.join(run_dir, "report.md")) > 200
    inp = stats["input"]
    assert inp["records"] == inp["documents"] + sum(inp["skipped"].values()) + sum(inp["errors"].values())
    for reason in ("malformed", "undecodable", "empty", "too_large", "truncated"):
        assert inp["errors"].get(reason, 0) >= 1, reason
    st = stats["stages"]
    order = ["url_filter", "extract", "language", "gopher_repetition", "gopher_quality", "c4_quality",
             "fineweb_quality", "exact_dedup", "minhash_dedup", "pii"]
    assert list(st) == ["read"] + order
    for a, b in zip(["read"] + order, order):
        assert st[a]["docs_out"] == st[b]["docs_in"], (a, b)
    for s in order:
        d = st[s]
        assert d["docs_in"] - d["docs_out"] == d["docs_dropped"] == sum(x["docs"] for x in d["dropped"].values())
    assert st["language"]["dropped"] and any(k.startswith("lang_") for k in st["language"]["dropped"])
    # the exact copy (and pages repeated across the damaged files) go; the near copy goes too
    assert st["exact_dedup"]["docs_dropped"] >= 1 and st["minhash_dedup"]["docs_dropped"] == 1

    docs, _ = _outputs(run_dir)
    texts = [t for v in docs.values() for _, t in v]
    assert len(texts) == st["pii"]["docs_out"] == stats["output"]["documents"] > 5
    assert len(set(texts)) == len(texts)
    assert not any("jane.roe@gmail.com" in t or "8.8.4.4" in t for t in texts)
    assert any("192.168.1.20" in t for t in texts)  # private addresses are not PII
    # --doc-format both: the Parquet copy holds the same documents, rank by rank, in order
    import pyarrow.parquet as pq
    parquet = {}
    for p in sorted(glob.glob(os.path.join(run_dir, "documents_parquet", "*.parquet"))):
        rank = os.path.basename(p).split(".")[0].split("_")[-1]  # "<file index>_<rank>.parquet"
        t = pq.read_table(p)
        parquet.setdefault(rank, []).extend(zip(t.column("id").to_pylist(), t.column("text").to_pylist()))
    assert parquet == {k.split(".")[0]: v for k, v in docs.items()}

    shards_dir = os.path.join(run_dir, "shards")
    idx = read_index(shards_dir)
    tok = build_tokenizer(idx["tokenizer"])
    decoded = [tok.decode(d[1:].tolist()) for d in iter_documents(shards_dir, tok.bos_id)]
    assert sorted(decoded) == sorted(texts) and idx["documents"] == len(texts)
    cfg = DataConfig(source="shards", shards=os.path.join(shards_dir, "shard_*.npy"), tokenizer=idx["tokenizer"],
                     segment_on_bos=True, seq_len=32, batch_size=4)
    splits = load_token_splits(cfg)
    assert splits.train.size + splits.val.size == idx["tokens"] == stats["output"]["tokens"]
    train, _ = make_iterators(cfg, splits, eval_batches=1, bos_id=tok.bos_id)
    batch = next(train)
    assert batch["inputs"].shape == (4, 32) and "segment_ids" in batch


def test_resume_after_kill_redoes_only_unfinished_tasks(web_input, local_run, tmp_path):
    out = tmp_path / "run"
    crashed = _cli(_args(web_input, out, 1), {"LM_WEB_FAULT": "output:1:1"}, check=False)
    assert crashed.returncode == -9, crashed.stderr[-2000:]  # the job was SIGKILLed mid-stage
    done_before = {s: sorted(os.listdir(out / "logs" / s / "completions"))
                   for s in ("filter", "minhash_cluster", "output")}
    assert done_before["filter"] == ["00000", "00001", "00002"] and done_before["output"] == ["00000"]
    mtimes = {p: os.path.getmtime(p) for p in glob.glob(str(out / "logs" / "filter" / "stats" / "*"))}
    resumed = _cli(_args(web_input, out, 2))
    assert "[1/8] filter: 3/3 tasks already done" in resumed.stdout
    assert "[7/8] output: 1/3 tasks already done" in resumed.stdout
    assert all(os.path.getmtime(p) == t for p, t in mtimes.items())  # finished tasks were not redone
    assert _outputs(str(out)) == _outputs(local_run[0])
    a = json.load(open(out / "stats.json"))
    b = json.load(open(os.path.join(local_run[0], "stats.json")))
    for s in a["stages"]:
        assert {k: v for k, v in a["stages"][s].items() if k != "time_s"} == \
            {k: v for k, v in b["stages"][s].items() if k != "time_s"}
    # resuming with different settings is refused, not silently mixed
    bad = _cli(_args(web_input, out, 2) + ["--seed", "5"], check=False)
    assert bad.returncode == 2 and "different inputs or settings" in bad.stderr


def test_web_tiny_experiment_points_at_pipeline_output(local_run, monkeypatch):
    import experiments

    monkeypatch.setenv("LM_WEB_TINY", local_run[0])
    cfg = experiments.get("web_tiny")
    assert cfg.data.source == "shards" and cfg.data.segment_on_bos and cfg.model.vocab_size >= 50257
    monkeypatch.setenv("LM_WEB_TINY", os.path.join(local_run[0], "missing"))
    with pytest.raises(FileNotFoundError, match="process_web"):
        experiments.get("web_tiny")


def test_ray_worker_hook_gives_forked_children_the_default_sigterm():
    # a process with a SIGTERM handler that swallows the signal (as a Ray worker's can, for a
    # child of datatrove's pool) forks; with the hook the child dies of SIGTERM, without it lives
    code = textwrap.dedent("""
        import os, signal, sys, time
        from lm.data.web.recipe import ray_worker_setup
        signal.signal(signal.SIGTERM, lambda *a: None)
        if sys.argv[1] == "hook":
            ray_worker_setup()
        pid = os.fork()
        if pid == 0:
            time.sleep(3)
            os._exit(7)
        time.sleep(0.3)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
    """)
    got = {m: subprocess.run([sys.executable, "-c", code, m], cwd=ROOT, capture_output=True,
                             text=True, timeout=60).stdout.strip() for m in ("hook", "plain")}
    assert got == {"hook": "True", "plain": "False"}


def test_nothing_surviving_the_filters_is_an_empty_output_with_a_report(shared_data, tmp_path):
    """Only damaged input: the run finishes (exit 0) with no document, empty shards and a report
    saying where everything was dropped, instead of a crash in the first dedup stage."""
    src = tmp_path / "in"
    src.mkdir()
    (src / "bad.warc.gz").write_bytes(gzip.compress(b"WARC/1.0\r\nnot a header line\r\n\r\n"))
    (src / "worse.warc.gz").write_bytes(b"not even gzip")
    out = tmp_path / "out"
    r = _cli(["--input", str(src / "*.gz"), "--output", str(out), "--workers", "1"])
    assert "0 kept" in r.stdout
    stats = json.load(open(out / "stats.json"))
    assert stats["output"]["documents"] == 0 and stats["input"]["errors"]
    assert "No document survived" in (out / "report.md").read_text()
    assert json.load(open(out / "shards" / "index.json"))["shards"] == []
