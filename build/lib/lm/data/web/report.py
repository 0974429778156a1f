"""stats.json and report.md of a run, from the per-task stats datatrove saved (logs/<stage>/stats/).

Per-task stats (not the executor's merged stats.json, which covers only the tasks of the latest
invocation) so a resumed run reports the whole run.
"""
from __future__ import annotations

import glob
import json
import os
from collections import defaultdict

STAGE_ORDER = ("read", "url_filter", "extract", "language", "gopher_repetition", "gopher_quality",
               "c4_quality", "fineweb_quality", "exact_dedup", "minhash_dedup", "pii")


def _total(v) -> float:
    return v.get("total", 0) if isinstance(v, dict) else (v or 0)


def block_totals(run_dir: str, stages) -> dict:
    """{block name: {"metrics": {metric: total}, "time_s": float}} summed over all tasks."""
    out: dict = defaultdict(lambda: {"metrics": defaultdict(float), "time_s": 0.0})
    for stage in stages:
        for path in sorted(glob.glob(os.path.join(run_dir, "logs", stage, "stats", "*.json"))):
            with open(path, encoding="utf-8") as f:
                blocks = json.load(f)
            for b in blocks:
                entry = out[b["name"]]
                entry["time_s"] += _total(b.get("time_stats", {}))
                for k, v in (b.get("stats") or {}).items():
                    entry["metrics"][k] += _total(v)
    return out


def _int(x) -> int:
    return int(round(x))


def build(run_dir: str, stages, input_files=None, wall_s=None, run_info=None) -> dict:
    blocks = block_totals(run_dir, stages)
    result = {"run": dict(run_info or {}), "input": {}, "stages": {}, "output": {}}
    if wall_s is not None:
        result["run"]["wall_s_this_invocation"] = round(wall_s, 2)

    rd = blocks.get("stage:read")
    if rd:
        m = rd["metrics"]
        skipped = {k[len("skipped_"):]: _int(v) for k, v in m.items() if k.startswith("skipped_")}
        errors = {k[len("error_"):]: _int(v) for k, v in m.items() if k.startswith("error_")}
        result["input"] = {
            "files": _int(m.get("input_files", 0)),
            "file_bytes": int(sum(os.path.getsize(p) for p in (input_files or []) if os.path.exists(p))),
            "records": _int(m.get("records", 0)),
            "documents": _int(m.get("documents", 0)),
            "payload_bytes": _int(m.get("payload_bytes", 0)),
            "skipped": dict(sorted(skipped.items())),
            "errors": dict(sorted(errors.items())),
        }
        read = {"docs_in": _int(m.get("records", 0)), "docs_out": _int(m.get("documents", 0)),
                "bytes_in": result["input"]["file_bytes"] or None, "bytes_out": None,
                "dropped": {**{f"skipped_{k}": {"docs": v} for k, v in skipped.items()},
                            **{f"error_{k}": {"docs": v} for k, v in errors.items()}},
                "time_s": round(rd["time_s"], 3)}
        result["stages"]["read"] = read

    for name in STAGE_ORDER[1:]:
        b = blocks.get(f"stage:{name}")
        if not b:
            continue
        m = b["metrics"]
        dropped = {}
        for k, v in m.items():
            if k.startswith("dropped:"):
                reason = k[len("dropped:"):]
                dropped[reason] = {"docs": _int(v), "bytes": _int(m.get(f"bytes_dropped:{reason}", 0))}
        result["stages"][name] = {
            "docs_in": _int(m.get("docs_in", 0)), "docs_out": _int(m.get("docs_out", 0)),
            "bytes_in": _int(m.get("bytes_in", 0)), "bytes_out": _int(m.get("bytes_out", 0)),
            "docs_dropped": _int(m.get("docs_dropped", 0)), "bytes_dropped": _int(m.get("bytes_dropped", 0)),
            "dropped": dict(sorted(dropped.items(), key=lambda kv: -kv[1]["docs"])),
            "time_s": round(b["time_s"], 3)}
    if "read" in result["stages"] and "url_filter" in result["stages"]:
        result["stages"]["read"]["bytes_out"] = result["stages"]["url_filter"]["bytes_in"]

    last = next((result["stages"][n] for n in reversed(STAGE_ORDER) if n in result["stages"]), None)
    out = {"documents": last["docs_out"] if last else 0, "bytes": last["bytes_out"] if last else 0}
    tk = blocks.get("🔢 - TOKENIZER: 🔢 Tokenize for lm shards")
    if tk:
        out["tokens"] = _int(tk["metrics"].get("tokens", 0))
    idx_path = os.path.join(run_dir, "shards", "index.json")
    if os.path.exists(idx_path):
        with open(idx_path, encoding="utf-8") as f:
            idx = json.load(f)
        out.update({"shards": len(idx["shards"]), "shard_tokens": idx["tokens"], "shard_docs": idx["documents"],
                    "tokenizer": idx["tokenizer"], "dtype": idx["dtype"], "shards_dir": "shards/"})
    result["output"] = out
    return result


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def markdown(stats: dict) -> str:
    run, inp, out = stats.get("run", {}), stats.get("input", {}), stats.get("output", {})
    lines = ["# Web pipeline report", ""]
    if run:
        lines.append("Run: " + ", ".join(f"{k}={v}" for k, v in run.items()))
        lines.append("")
    if inp:
        lines += [f"Input: {inp['files']} files ({_fmt_bytes(inp['file_bytes'])}), {inp['records']} records "
                  f"→ {inp['documents']} documents ({_fmt_bytes(inp['payload_bytes'])} of payload).",
                  f"Records not read (by type): {inp['skipped'] or 'none'}.",
                  f"Records skipped as damaged or unusable: {inp['errors'] or 'none'}.", ""]
    lines += ["| stage | docs in | docs out | kept | bytes in | bytes out | time (s) | top drop reasons |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, s in stats.get("stages", {}).items():
        kept = f"{100 * s['docs_out'] / s['docs_in']:.1f}%" if s["docs_in"] else "-"
        reasons = ", ".join(f"{r} {d['docs']}" for r, d in list(s["dropped"].items())[:4])
        lines.append(f"| {name} | {s['docs_in']} | {s['docs_out']} | {kept} | {_fmt_bytes(s['bytes_in'])} | "
                     f"{_fmt_bytes(s['bytes_out'])} | {s['time_s']:.2f} | {reasons} |")
    lines.append("")
    if out:
        lines.append(f"Output: {out.get('documents', 0)} documents ({_fmt_bytes(out.get('bytes'))})"
                     + (f", {out['tokens']} tokens in {out.get('shards', 0)} shards ({out.get('dtype')}, "
                        f"tokenizer {out.get('tokenizer')}) under {out.get('shards_dir')}" if 'tokens' in out else "")
                     + ".")
        if not out.get("documents"):
            lines.append("No document survived: the read, filter and dedup rows above say where "
                         "each one was dropped (an empty output, not an error).")
    lines.append("")
    return "\n".join(lines)


def summary_line(stats: dict) -> str:
    inp, out = stats.get("input", {}), stats.get("output", {})
    errs = sum((inp.get("errors") or {}).values())
    return (f"done: {inp.get('records', 0)} records, {inp.get('documents', 0)} documents read "
            f"({errs} damaged records skipped) → {out.get('documents', 0)} kept, "
            f"{out.get('tokens', 0)} tokens; see stats.json and report.md")


def write(cfg, stages, wall_s=None) -> dict:
    with open(cfg.path("run.json"), encoding="utf-8") as f:
        run = json.load(f)
    with open(cfg.path("inputs.txt"), encoding="utf-8") as f:
        inputs = [os.path.join(run["root"], line.strip()) for line in f if line.strip()]
    info = {"extractor": cfg.extractor, "fast_filters": cfg.fast_filters, "executor": cfg.executor,
            "workers": cfg.workers, "tasks": run["tasks"]}
    stats = build(cfg.output, stages, inputs, wall_s, info)
    tmp = cfg.path("stats.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
    os.replace(tmp, cfg.path("stats.json"))
    with open(cfg.path("report.md"), "w", encoding="utf-8") as f:
        f.write(markdown(stats))
    return stats
