"""FineWeb-style web data pipeline on datatrove: WARC → filtered, deduplicated, tokenized shards.

Modules: `readers` (resilient WARC/WET/HTML reader), `extractors` (trafilatura / resiliparse),
`stages` (datatrove's filters with FineWeb's settings, measured), `fastfilters` (same decisions,
faster), `shards` (token shards the trainer reads), `recipe` (the stages and executors), `report`
(stats.json, report.md). CLI: `python -m tools.process_web`; benchmark: `python -m tools.bench_web`.
"""
