"""Common Crawl WARC/WET (or .html pages) → FineWeb-style filtered, deduplicated, tokenized shards.

    python -m tools.process_web --input '../shared/data/web_crawl/**/*.gz' --output runs/web/demo \
        --workers 2 [--extractor trafilatura|resiliparse] [--executor local|ray|slurm]

On a Slurm cluster (one sbatch array per stage, each depending on the previous one):

    python -m tools.process_web --input '/shared/fs/crawl/*/warc/*.warc.gz' --output /shared/fs/web/run1 \
        --tasks 1000 --executor slurm --slurm '{"partition": "cpu", "time": "10:00:00", "mem_per_cpu_gb": 2}'

Rerunning the same command after a crash (or Ctrl-C) skips every completed task and produces the
same final output. Outputs: documents/ (JSONL; --doc-format parquet|both for Parquet),
shards/shard_*.npy + index.json (what the trainer reads), stats.json, report.md.
See lm/data/web/recipe.py for the stages, WORKSPACE.md for Slurm.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/process_web.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, action="append",
                   help="glob of WARC/WET/.html[.gz] files (quote it), or a folder; repeatable")
    p.add_argument("--output", required=True, help="run folder (reuse it to resume)")
    p.add_argument("--workers", type=int, default=1, help="tasks run at once")
    p.add_argument("--tasks", type=int, default=0, help="tasks per parallel stage (default: min(files, 4 x workers)); fixed for a run folder")
    p.add_argument("--extractor", choices=["trafilatura", "resiliparse"], default="trafilatura")
    p.add_argument("--executor", choices=["local", "ray", "slurm"], default="local")
    p.add_argument("--reference-filters", action="store_true",
                   help="use datatrove's own URL/Gopher/C4/FineWeb blocks instead of our same-decision fast ones")
    p.add_argument("--languages", default="en", help="comma-separated languages to keep ('' = any)")
    p.add_argument("--language-threshold", type=float, default=0.65)
    p.add_argument("--extract-timeout", type=float, default=1.0, help="seconds per page")
    p.add_argument("--max-page-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--no-exact-dedup", action="store_true")
    p.add_argument("--no-minhash", action="store_true")
    p.add_argument("--no-pii", action="store_true")
    p.add_argument("--doc-format", choices=["jsonl", "parquet", "both"], default="jsonl")
    p.add_argument("--tokenizer", default="gpt2", help="'gpt2', a saved tokenizer name or artifact path; '' = none")
    p.add_argument("--shard-tokens", type=int, default=1 << 24)
    p.add_argument("--seed", type=int, default=0, help="document shuffle seed")
    p.add_argument("--save-removed", action="store_true", help="keep dropped documents under removed/<stage>/")
    p.add_argument("--record-decisions", action="store_true", help="decisions/<stage>/<rank>.jsonl")
    p.add_argument("--ray-address", default=None, help="existing Ray cluster (default: start a local one)")
    p.add_argument("--slurm", default="{}", help='JSON: {"partition": "cpu", "time": "10:00:00", '
                                                 '"cpus_per_task": 1, "mem_per_cpu_gb": 2, "venv_path": ...}')
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def config_from_args(a):
    from lm.data.web.recipe import RecipeConfig

    return RecipeConfig(
        input=a.input if len(a.input) > 1 else a.input[0], output=a.output, workers=a.workers, tasks=a.tasks, extractor=a.extractor,
        fast_filters=not a.reference_filters,
        languages=tuple(x for x in a.languages.split(",") if x), language_threshold=a.language_threshold,
        extract_timeout=a.extract_timeout, max_page_bytes=a.max_page_bytes,
        exact_dedup=not a.no_exact_dedup, minhash=not a.no_minhash, pii=not a.no_pii,
        doc_format=a.doc_format, tokenizer=a.tokenizer or None, shard_tokens=a.shard_tokens, seed=a.seed,
        save_removed=a.save_removed, record_decisions=a.record_decisions, executor=a.executor,
        slurm=json.loads(a.slurm), ray_address=a.ray_address, progress=not a.quiet)


def main(argv=None) -> int:
    a = parse_args(argv)
    from lm.data.web.recipe import run

    try:
        run(config_from_args(a))
    except (FileNotFoundError, ValueError) as e:
        print(f"process_web: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"process_web: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
