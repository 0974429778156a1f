"""Benchmark of the web pipeline against datatrove's own reference FineWeb pipeline.

    python -m tools.bench_web [--workers 2] [--json]

Input: every WARC/WET under ../shared/data/web_crawl/ plus the 181 pages of
../shared/data/html_extraction_benchmark/ wrapped as WARC response records (two files, so two tasks
share the work). Measures:

- **agreement**: our recipe (trafilatura profile: our reader, our same-decision fast filters) vs the
  reference — datatrove's WarcReader → URLFilter → Trafilatura → LanguageFilter → Gopher repetition
  → Gopher quality → C4 → FineWeb quality, as in datatrove's examples/fineweb.py — per stage: the
  fraction of documents reaching that stage in both pipelines that get the same keep/drop decision;
  each disagreement is listed with its id and both sides' reasons.
- **f1**: token-level precision/recall/F1 of each extractor against ground-truth.json (mean over pages),
  and pages/s (one process, no sandbox).
- **docs_per_s**: documents read / wall time of our *whole* recipe (extraction, filters, exact +
  MinHash dedup, PII, tokenized shards) per extractor; `peer_docs_per_s`: the reference stage-1
  pipeline (no dedup) on the same input, tasks and workers; `ratio` = fast profile (resiliparse) /
  reference.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_web.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import glob
import gzip
import json
import shutil
import tempfile
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.normpath(os.path.join(ROOT, "..", "shared", "data"))
REF_STAGES = ("url_filter", "extract", "language", "gopher_repetition", "gopher_quality", "c4_quality",
              "fineweb_quality")


def build_input(shared: str, folder: str) -> int:
    from lm.data.web.readers import benchmark_pages, write_warc

    crawl = sorted(glob.glob(os.path.join(shared, "web_crawl", "**", "*.gz"), recursive=True))
    if not crawl:
        raise SystemExit(f"bench_web: no WARCs under {shared}/web_crawl")
    os.makedirs(folder, exist_ok=True)
    for p in crawl:
        shutil.copy(p, os.path.join(folder, os.path.basename(p)))
    pages = benchmark_pages(shared)
    for i in range(2):
        write_warc(os.path.join(folder, f"bench_{i}.warc.gz"), pages[i::2])
    return len(pages)


# ---- the reference pipeline (datatrove's examples/fineweb.py, locally) ----------------------------

def run_reference(inp: str, out: str, workers: int, tasks: int) -> float:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.extractors import Trafilatura
    from datatrove.pipeline.filters import (C4QualityFilter, FineWebQualityFilter, GopherQualityFilter,
                                            GopherRepetitionFilter, LanguageFilter, URLFilter)
    from datatrove.pipeline.readers import WarcReader
    from datatrove.pipeline.writers.jsonl import JsonlWriter

    from lm.data.web.stages import lid_model_path

    lang = LanguageFilter(exclusion_writer=JsonlWriter(f"{out}/removed/language"), languages=["en"])
    lang.model.MODEL_URL = lid_model_path()  # the only change: the lid.176 model from a local file
    pipeline = [
        WarcReader(inp, glob_pattern="*.gz"),
        URLFilter(exclusion_writer=JsonlWriter(f"{out}/removed/url_filter")),
        Trafilatura(favour_precision=True),
        lang,
        GopherRepetitionFilter(exclusion_writer=JsonlWriter(f"{out}/removed/gopher_repetition")),
        GopherQualityFilter(exclusion_writer=JsonlWriter(f"{out}/removed/gopher_quality")),
        C4QualityFilter(filter_no_terminal_punct=False, exclusion_writer=JsonlWriter(f"{out}/removed/c4_quality")),
        FineWebQualityFilter(exclusion_writer=JsonlWriter(f"{out}/removed/fineweb_quality")),
        JsonlWriter(f"{out}/output"),
    ]
    t0 = time.time()
    LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=f"{out}/logs",
                          start_method="fork").run()
    return time.time() - t0


def _ids(folder: str) -> dict:
    out = {}
    for p in glob.glob(os.path.join(folder, "*.jsonl.gz")):
        with gzip.open(p, "rt", encoding="utf-8") as f:
            for line in f:
                d = json.loads(line)
                out[d["id"]] = d.get("metadata", {}).get("filter_reason", "dropped")
    return out


def reference_decisions(inp: str, out: str) -> dict:
    """{stage: {id: (kept, reason)}} reconstructed from the removed/ writers and the output."""
    from datatrove.pipeline.readers import WarcReader

    all_ids = [d.id for d in WarcReader(inp, glob_pattern="*.gz").run()]
    removed = {s: _ids(os.path.join(out, "removed", s)) for s in REF_STAGES if s != "extract"}
    kept_after = set(_ids(os.path.join(out, "output")))
    dec = {}
    for s in reversed(REF_STAGES[2:]):  # fineweb ... language: input = kept ∪ removed
        dec[s] = {i: (True, None) for i in kept_after} | {i: (False, r) for i, r in removed[s].items()}
        kept_after = set(dec[s])
    url_kept = [i for i in all_ids if i not in removed["url_filter"]]
    dec["extract"] = {i: (i in kept_after, None if i in kept_after else "timeout_or_empty") for i in url_kept}
    dec["url_filter"] = {i: (i not in removed["url_filter"], removed["url_filter"].get(i)) for i in all_ids}
    return dec


def our_decisions(run_dir: str) -> dict:
    dec = {}
    for s in REF_STAGES:
        d = {}
        for p in glob.glob(os.path.join(run_dir, "decisions", s, "*.jsonl")):
            with open(p, encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    d[r["id"]] = (r["kept"], r.get("reason"))
        dec[s] = d
    return dec


def agreement(ours: dict, ref: dict) -> tuple[dict, list]:
    frac, disagreements = {}, []
    for s in REF_STAGES:
        both = set(ours[s]) & set(ref[s])
        same = sum(ours[s][i][0] == ref[s][i][0] for i in both)
        frac[s] = round(same / len(both), 4) if both else 1.0
        for i in sorted(both):
            if ours[s][i][0] != ref[s][i][0]:
                disagreements.append({"stage": s, "id": i, "ours": ours[s][i], "reference": ref[s][i]})
        for i in sorted(set(ref[s]) - set(ours[s])):
            disagreements.append({"stage": s, "id": i, "ours": "did not reach this stage",
                                  "reference": ref[s][i]})
        for i in sorted(set(ours[s]) - set(ref[s])):
            disagreements.append({"stage": s, "id": i, "ours": ours[s][i],
                                  "reference": "did not reach this stage"})
    return frac, disagreements


# ---- extraction quality -------------------------------------------------------------------------

def prf(pred: str, truth: str) -> tuple[float, float, float]:
    p, t = Counter((pred or "").split()), Counter((truth or "").split())
    common = sum((p & t).values())
    if not common:
        return 0.0, 0.0, 0.0
    prec, rec = common / sum(p.values()), common / sum(t.values())
    return prec, rec, 2 * prec * rec / (prec + rec)


def extraction_quality(shared: str) -> dict:
    from datatrove.pipeline.extractors import Trafilatura

    from lm.data.web.extractors import Resiliparse
    from lm.data.web.readers import benchmark_pages, decode_payload

    pages = benchmark_pages(shared)
    htmls = [decode_payload(p["html"]) or p["html"].decode("utf-8", "replace") for p in pages]
    res = {}
    for name, ex in (("trafilatura", Trafilatura(favour_precision=True)), ("resiliparse", Resiliparse())):
        ex.extract(htmls[0])  # warm-up (imports)
        t0 = time.time()
        outs = [ex.extract(h) for h in htmls]
        dt = time.time() - t0
        scores = [prf(o, p["truth"]) for o, p in zip(outs, pages)]
        n = len(scores)
        res[name] = {"precision": round(sum(s[0] for s in scores) / n, 4),
                     "recall": round(sum(s[1] for s in scores) / n, 4),
                     "f1": round(sum(s[2] for s in scores) / n, 4),
                     "pages_per_s": round(n / dt, 1), "pages": n}
    return res


# ---- our recipe ---------------------------------------------------------------------------------

def run_ours(inp: str, out: str, extractor: str, workers: int, tasks: int, decisions: bool) -> tuple[float, dict]:
    from lm.data.web.recipe import RecipeConfig, run

    cfg = RecipeConfig(input=os.path.join(inp, "*.gz"), output=out, workers=workers, tasks=tasks,
                       extractor=extractor, record_decisions=decisions, progress=False)
    t0 = time.time()
    stats = run(cfg)
    return time.time() - t0, stats


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--shared", default=SHARED)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--keep", default=None, help="keep the runs in this folder")
    a = ap.parse_args(argv)
    os.environ.setdefault("LM_DATA_DIR", a.shared)  # the GPT-2 tokenizer files for the shards
    if not os.path.isdir(a.shared):
        print(f"bench_web: shared data folder {a.shared} is absent", file=sys.stderr)
        return 2
    work = a.keep or tempfile.mkdtemp(prefix="bench_web_")
    inp = os.path.join(work, "input")
    if os.path.isdir(work):
        for sub in ("reference", "ours_trafilatura", "ours_resiliparse"):
            shutil.rmtree(os.path.join(work, sub), ignore_errors=True)
    build_input(a.shared, inp)
    log = sys.stderr

    print("reference (datatrove examples/fineweb.py, trafilatura)...", file=log, flush=True)
    t_ref = run_reference(inp, os.path.join(work, "reference"), a.workers, a.tasks)
    ref_dec = reference_decisions(inp, os.path.join(work, "reference"))
    n_docs = len(ref_dec["url_filter"])
    runs = {}
    for ex in ("trafilatura", "resiliparse"):
        print(f"ours ({ex}, whole recipe)...", file=log, flush=True)
        runs[ex] = run_ours(inp, os.path.join(work, f"ours_{ex}"), ex, a.workers, a.tasks,
                            decisions=(ex == "trafilatura"))
    frac, disagreements = agreement(our_decisions(os.path.join(work, "ours_trafilatura")), ref_dec)
    print("extraction quality...", file=log, flush=True)
    quality = extraction_quality(a.shared)

    peer = n_docs / t_ref
    dps = {ex: runs[ex][1]["input"]["documents"] / runs[ex][0] for ex in runs}
    result = {
        "docs_per_s": round(dps["resiliparse"], 2),
        "peer_docs_per_s": round(peer, 2),
        "ratio": round(dps["resiliparse"] / peer, 2),
        "agreement": frac,
        "f1": {k: v["f1"] for k, v in quality.items()},
        "docs_per_s_by_extractor": {k: round(v, 2) for k, v in dps.items()},
        "extraction": quality,
        "documents": n_docs,
        "kept": {"reference": sum(1 for v in ref_dec["fineweb_quality"].values() if v[0]),
                 **{f"ours_{k}": v[1]["stages"]["fineweb_quality"]["docs_out"] for k, v in runs.items()},
                 **{f"ours_{k}_after_dedup": v[1]["output"]["documents"] for k, v in runs.items()}},
        "disagreements": disagreements,
        "wall_s": {"reference": round(t_ref, 2), **{f"ours_{k}": round(v[0], 2) for k, v in runs.items()}},
        "workers": a.workers, "tasks": a.tasks,
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"{'':32s}{'docs/s':>10s}{'wall s':>9s}")
        print(f"{'reference (datatrove, stage 1)':32s}{peer:10.2f}{t_ref:9.1f}")
        for ex in runs:
            print(f"{'ours ' + ex + ' (whole recipe)':32s}{dps[ex]:10.2f}{runs[ex][0]:9.1f}")
        print(f"ratio fast profile / reference: {result['ratio']:.2f}x")
        print("\nagreement per stage (ours trafilatura vs reference):")
        for s, f in frac.items():
            print(f"  {s:20s} {100 * f:6.2f}%")
        for d in disagreements:
            print(f"  disagreement {d['stage']}: {d['id']} ours={d['ours']} reference={d['reference']}")
        print("\nextraction vs ground truth (mean over pages):")
        print(f"  {'extractor':14s}{'P':>8s}{'R':>8s}{'F1':>8s}{'pages/s':>10s}")
        for k, v in quality.items():
            print(f"  {k:14s}{v['precision']:8.3f}{v['recall']:8.3f}{v['f1']:8.3f}{v['pages_per_s']:10.1f}")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
