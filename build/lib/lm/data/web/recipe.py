"""The FineWeb recipe as datatrove stages, run by datatrove's local, Ray or Slurm executor.

Stages (each a datatrove executor with its own `logs/<stage>/` folder, so a rerun skips every task
that completed — datatrove's `completions/` markers — and redoes only the rest):

 1. `filter`          read (WARC/WET/HTML) → URL filter → extraction → language ID → Gopher
                      repetition → Gopher quality → C4 → FineWeb quality → `filtered/`   (T tasks)
 2. `exact_sig`       exact-dedup signatures of the text                                (T tasks)
 3. `exact_find`      duplicates across the whole run                                   (1 task)
 4. `minhash_sig`     drop exact duplicates → MinHash signatures (5-grams, 14×8)        (T tasks)
 5. `minhash_buckets` LSH buckets → duplicate pairs                                      (14 tasks)
 6. `minhash_cluster` union-find over the whole run → documents to remove                (1 task)
 7. `output`          drop exact + near duplicates → PII (emails, public IPs) → documents
                      (`documents/`, JSONL and/or Parquet) and per-rank tokens            (T tasks)
 8. `shards`          seeded shuffle of all documents → `shards/shard_*.npy` + index.json (1 task)

then `stats.json` and `report.md` (`lm.data.web.report`). Each task's outputs are rewritten from
scratch when it runs, and every decision is deterministic (the extractors' per-page timeout aside),
so the final output of a crashed-and-resumed run equals that of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

# imported in the driver so forked workers start warm (both extractors, spaCy for the filters)
import resiliparse.extract.html2text  # noqa: F401
import spacy  # noqa: F401
import trafilatura  # noqa: F401
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor
from datatrove.pipeline.dedup import MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
)
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter
from datatrove.utils.hashing import HashConfig
from datatrove.utils.stats import Stats
from datatrove.utils.word_tokenizers import load_word_tokenizer

from lm.data.web import report
from lm.data.web import stages as st
from lm.data.web.extractors import Extract, make_extractor
from lm.data.web.fastfilters import FastURLFilter
from lm.data.web.readers import WebReader
from lm.data.web.shards import ShardWriter, TokenizeDocs, build_tokenizer
from lm.data.web.stages import CrashAfter, Measured

# lm's checkout (lm/data/web/recipe.py -> ../../..): the Ray workers' import path
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
STAGES = ("filter", "exact_sig", "exact_find", "minhash_sig", "minhash_buckets", "minhash_cluster",
          "output", "shards")


@dataclass
class RecipeConfig:
    input: object                           # glob(s) of WARC/WET/.html[.gz] files, or folder(s)
    output: str                             # the run folder
    workers: int = 1                        # tasks run at once (local: processes; ray: actors)
    tasks: int = 0                          # tasks per parallel stage; 0 = min(files, 4 × workers)
    extractor: str = "trafilatura"          # trafilatura (FineWeb) | resiliparse (fast profile)
    fast_filters: bool = True               # our same-decision filters (lm.data.web.fastfilters)
    languages: tuple = ("en",)
    language_threshold: float = 0.65
    extract_timeout: float = 1.0            # seconds per page (datatrove's default)
    max_page_bytes: int = 8 * 1024 * 1024
    exact_dedup: bool = True
    minhash: bool = True
    minhash_ngrams: int = 5
    minhash_buckets: int = 14
    minhash_hashes_per_bucket: int = 8
    pii: bool = True
    doc_format: str = "jsonl"               # jsonl | parquet | both
    tokenizer: Optional[str] = "gpt2"       # None/"" = no token shards
    shard_tokens: int = 1 << 24
    seed: int = 0
    save_removed: bool = False              # keep dropped documents per stage (removed/<stage>/)
    record_decisions: bool = False          # decisions/<stage>/<rank>.jsonl (for the benchmark)
    executor: str = "local"                 # local | ray | slurm
    slurm: dict = field(default_factory=dict)   # partition, time, cpus_per_task, mem_per_cpu_gb, ...
    ray_address: Optional[str] = None       # None: connect to a running cluster or start one
    progress: bool = True

    # -- derived ---------------------------------------------------------------------------------
    def path(self, *parts) -> str:
        return os.path.join(self.output, *parts)

    def fingerprint(self) -> dict:
        """What must not change between a run and its resumption (same tasks, same decisions)."""
        keep = {k: v for k, v in dataclasses.asdict(self).items()
                if k not in ("workers", "executor", "slurm", "ray_address", "progress", "output")}
        keep["languages"] = list(self.languages)
        keep["input"] = [self.input] if isinstance(self.input, str) else list(self.input)
        return keep


# ---- inputs -------------------------------------------------------------------------------------

def resolve_inputs(patterns) -> tuple[str, list[str]]:
    """(root folder, sorted paths relative to it) for globs or folders (read recursively)."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    found = set()
    for pattern in patterns:
        if os.path.isdir(pattern):
            pattern = os.path.join(pattern, "**", "*")
        matched = [os.path.abspath(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p)]
        if not matched:
            raise FileNotFoundError(f"--input {pattern!r} matches no files")
        found.update(matched)
    paths = sorted(found)
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    if os.path.isfile(root):
        root = os.path.dirname(root)
    return root, [os.path.relpath(p, root) for p in paths]


def prepare(cfg: RecipeConfig) -> tuple[str, list[str], int]:
    """Write run.json + inputs.txt (or check them against a previous run of the same folder)."""
    root, rel = resolve_inputs(cfg.input)
    run_path = cfg.path("run.json")
    prev = None
    if os.path.exists(run_path):
        with open(run_path, encoding="utf-8") as f:
            prev = json.load(f)
    tasks = cfg.tasks or (prev["tasks"] if prev else min(len(rel), 4 * max(1, cfg.workers)))
    os.makedirs(cfg.output, exist_ok=True)
    digest = hashlib.sha256("\n".join(rel).encode()).hexdigest()[:16]
    run = {"config": cfg.fingerprint(), "root": root, "n_inputs": len(rel), "inputs_sha": digest,
           "tasks": tasks}
    if prev is not None:
        if prev != run:
            diff = sorted(k for k in set(prev) | set(run) if prev.get(k) != run.get(k))
            if "config" in diff:
                diff += [f"config.{k}" for k in set(prev["config"]) | set(run["config"])
                         if prev["config"].get(k) != run["config"].get(k)]
            raise ValueError(f"{cfg.output} holds a run with different inputs or settings ({diff}); "
                             f"resume with the same arguments, or use a new --output")
    else:
        with open(run_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(run, f, indent=1)
        os.replace(run_path + ".tmp", run_path)
    inputs_txt = cfg.path("inputs.txt")
    if not os.path.exists(inputs_txt):
        with open(inputs_txt + ".tmp", "w", encoding="utf-8") as f:
            f.write("\n".join(rel) + "\n")
        os.replace(inputs_txt + ".tmp", inputs_txt)
    return root, rel, tasks


# ---- the pipelines ------------------------------------------------------------------------------

def doc_text(doc) -> str:  # exact-dedup content (module level: pickles to workers)
    return doc.text


def _minhash_config(cfg: RecipeConfig):

    return MinhashConfig(n_grams=cfg.minhash_ngrams, num_buckets=cfg.minhash_buckets,
                         hashes_per_bucket=cfg.minhash_hashes_per_bucket,
                         hash_config=HashConfig(precision=64))  # FineWeb: 64-bit hashes


def _exact_config():

    return ExactDedupConfig(content_getter=doc_text)


def _removed_writer(cfg: RecipeConfig, stage: str):
    if not cfg.save_removed:
        return None
    return JsonlWriter(cfg.path("removed", stage))


def _measured(cfg, stage, block, **kw):
    decisions = cfg.path("decisions") if cfg.record_decisions else None
    return Measured(stage, block, decisions_dir=decisions,
                    removed_writer=_removed_writer(cfg, stage), **kw)


def _filtered_reader(cfg):
    return JsonlReader(cfg.path("filtered"), glob_pattern="*.jsonl.gz")


def filter_pipeline(cfg: RecipeConfig, root: str) -> list:


    reader = WebReader(root, paths_file=cfg.path("inputs.txt"), max_page_bytes=cfg.max_page_bytes)
    reader.stats = Stats("stage:read")
    if cfg.fast_filters:
        url = FastURLFilter()
    else:
        url = st.url_filter()
    steps = [reader,
             _measured(cfg, "url_filter", url),
             _measured(cfg, "extract", Extract(make_extractor(cfg.extractor, cfg.extract_timeout))),
             _measured(cfg, "language", st.language_filter(cfg.languages, cfg.language_threshold))]
    steps += [_measured(cfg, name, block) for name, block in st.quality_filters(cfg.fast_filters)]
    steps.append(JsonlWriter(cfg.path("filtered")))
    return steps


def dedup_executors_spec(cfg: RecipeConfig, tasks: int) -> list[tuple[str, list, int]]:

    specs = []
    if cfg.exact_dedup:
        specs.append(("exact_sig", [_filtered_reader(cfg),
                                    ExactDedupSignature(cfg.path("dedup", "exact_sigs"), _exact_config())],
                      tasks))
        specs.append(("exact_find", [ExactFindDedups(cfg.path("dedup", "exact_sigs"),
                                                     cfg.path("dedup", "exact_dups"), _exact_config())], 1))
    if cfg.minhash:
        mh = _minhash_config(cfg)
        pre = [_filtered_reader(cfg)]
        if cfg.exact_dedup:
            pre.append(ExactDedupFilter(cfg.path("dedup", "exact_dups"), _exact_config()))
        specs.append(("minhash_sig", pre + [MinhashDedupSignature(cfg.path("dedup", "minhash_sigs"),
                                                                  config=mh)], tasks))
        specs.append(("minhash_buckets", [MinhashDedupBuckets(cfg.path("dedup", "minhash_sigs"),
                                                              cfg.path("dedup", "minhash_buckets"),
                                                              config=mh)], mh.num_buckets))
        specs.append(("minhash_cluster", [MinhashDedupCluster(cfg.path("dedup", "minhash_buckets"),
                                                              cfg.path("dedup", "minhash_remove"),
                                                              config=mh)], 1))
    return specs


def output_pipeline(cfg: RecipeConfig) -> list:


    steps = [_filtered_reader(cfg)]
    if cfg.exact_dedup:
        steps.append(_measured(cfg, "exact_dedup",
                               ExactDedupFilter(cfg.path("dedup", "exact_dups"), _exact_config()),
                               default_reason="exact_duplicate"))
    if cfg.minhash:
        steps.append(_measured(cfg, "minhash_dedup", MinhashDedupFilter(cfg.path("dedup", "minhash_remove")),
                               default_reason="near_duplicate"))
    if cfg.pii:
        steps.append(_measured(cfg, "pii", PIIFormatter()))
    if cfg.tokenizer:
        steps.append(TokenizeDocs(cfg.path("tokens"), cfg.tokenizer))
    if cfg.doc_format in ("jsonl", "both"):
        steps.append(JsonlWriter(cfg.path("documents")))
    if cfg.doc_format in ("parquet", "both"):
        steps.append(ParquetWriter(cfg.path("documents_parquet")))
    return steps


def _fault_step():
    """Test hook: LM_WEB_FAULT="<stage>:<rank>:<docs>" kills the whole process (os._exit, like a
    SIGKILL or a lost node) when task <rank> of <stage> has passed <docs> documents on."""
    spec = os.environ.get("LM_WEB_FAULT")
    if not spec:
        return None, None
    stage, rank, docs = spec.split(":")
    return stage, CrashAfter(int(rank), int(docs))


def stage_specs(cfg: RecipeConfig, root: str, tasks: int) -> list[tuple[str, list, int]]:
    """[(stage name, datatrove pipeline, number of tasks)] in run order."""

    os.makedirs(cfg.path("filtered"), exist_ok=True)
    specs = [("filter", filter_pipeline(cfg, root), tasks)]
    specs += dedup_executors_spec(cfg, tasks)
    specs.append(("output", output_pipeline(cfg), tasks))
    if cfg.tokenizer:
        specs.append(("shards", [ShardWriter(cfg.path("tokens"), cfg.path("shards"), cfg.tokenizer,
                                             seed=cfg.seed, shard_tokens=cfg.shard_tokens,
                                             world_size=tasks)], 1))
    fault_stage, fault = _fault_step()
    for name, pipeline, _ in specs:
        if name == fault_stage:
            pipeline.insert(1, fault)
    return specs


# ---- executors ----------------------------------------------------------------------------------

LIGHT_STAGES = ("exact_sig", "exact_find", "minhash_sig", "minhash_buckets", "minhash_cluster", "shards")


def make_executor(cfg: RecipeConfig, stage: str, pipeline: list, tasks: int, depends=None):
    logging_dir = cfg.path("logs", stage)
    workers = max(1, min(cfg.workers, tasks))
    if cfg.executor == "local":
        # fork: workers inherit the parent's imports (datatrove, spaCy, trafilatura) instead of
        # re-importing them per stage, as forkserver would
        return LocalPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                     start_method="fork")
    if cfg.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor  # optional, heavy: imports Ray
        # A Ray job costs a placement group, an actor and a process pool (~1-2 s): light stages
        # (signatures, buckets, clustering) run up to 8 of their tasks per job, heavy ones one.
        per_job = min(8, -(-tasks // workers)) if stage in LIGHT_STAGES else 1
        return RayPipelineExecutor(pipeline, tasks=tasks, workers=workers, logging_dir=logging_dir,
                                   cpus_per_task=1, tasks_per_job=per_job,
                                   mem_per_cpu_gb=float(cfg.slurm.get("mem_per_cpu_gb", 1)))
    if cfg.executor == "slurm":
        s = cfg.slurm
        return SlurmPipelineExecutor(
            pipeline, tasks=tasks, time=s.get("time", "10:00:00"), partition=s.get("partition", "cpu"),
            job_name=f"web_{stage}", logging_dir=logging_dir,
            slurm_logs_folder=cfg.path("logs", "slurm", stage), cpus_per_task=int(s.get("cpus_per_task", 1)),
            mem_per_cpu_gb=float(s.get("mem_per_cpu_gb", 2)), workers=int(s.get("workers", -1)),
            venv_path=s.get("venv_path"), sbatch_args=s.get("sbatch_args"), depends=depends)
    raise ValueError(f"unknown executor {cfg.executor!r}; choose local, ray or slurm")


def completed_tasks(cfg: RecipeConfig, stage: str) -> int:
    d = cfg.path("logs", stage, "completions")
    return len(os.listdir(d)) if os.path.isdir(d) else 0


class _Progress:
    """Prints `stage: done/total tasks` while a stage runs (polls datatrove's completion markers)."""

    def __init__(self, cfg, stage, tasks, index, n_stages):
        self.cfg, self.stage, self.tasks = cfg, stage, tasks
        self.prefix = f"[{index}/{n_stages}] {stage}"
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.t0 = time.time()
        self.start_done = completed_tasks(self.cfg, self.stage)
        if self.cfg.progress:
            print(f"{self.prefix}: {self.start_done}/{self.tasks} tasks already done", flush=True)
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        last = self.start_done
        while not self._stop.wait(2.0):
            done = completed_tasks(self.cfg, self.stage)
            if done != last:
                print(f"{self.prefix}: {done}/{self.tasks} tasks ({time.time() - self.t0:.1f}s)", flush=True)
                last = done

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self.cfg.progress:
            done = completed_tasks(self.cfg, self.stage)
            status = "done" if done >= self.tasks else f"INCOMPLETE ({done}/{self.tasks})"
            print(f"{self.prefix}: {status} in {time.time() - self.t0:.1f}s", flush=True)
        return False


def ray_worker_setup() -> None:
    """Ray worker hook: processes forked from a Ray worker get the default SIGTERM action.

    datatrove's Ray job runs its ranks in a `multiprocess` pool forked inside the actor, and the
    pool's teardown stops idle children with SIGTERM. A child that inherits Ray's SIGTERM handler
    can survive it, and the pool's join (so the stage, all its tasks done) then waits forever."""

    def _default_sigterm():
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        except (ValueError, OSError):  # not the main thread: leave it
            pass

    os.register_at_fork(after_in_child=_default_sigterm)


def _ensure_ray(cfg: RecipeConfig):
    import ray  # optional and heavy (seconds): only for --executor ray

    if not ray.is_initialized():
        # the hook runs before a worker has the driver's import path: give it lm's checkout
        root = CHECKOUT
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
        env = {"worker_process_setup_hook": "lm.data.web.recipe.ray_worker_setup",
               "env_vars": {"PYTHONPATH": path}}
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, log_to_driver=False, runtime_env=env)
        else:
            ray.init(num_cpus=max(1, cfg.workers), include_dashboard=False, log_to_driver=False,
                     runtime_env=env)


def run(cfg: RecipeConfig) -> dict:
    """Run (or resume) the whole recipe; returns the stats dict also written to stats.json."""

    t0 = time.time()
    root, rel, tasks = prepare(cfg)
    specs = stage_specs(cfg, root, tasks)
    if cfg.progress:
        print(f"web pipeline: {len(rel)} input files under {root} → {cfg.output} "
              f"({tasks} tasks, {cfg.workers} workers, {cfg.executor}, extractor={cfg.extractor})",
              flush=True)
    if cfg.executor == "slurm" and any(completed_tasks(cfg, s) < n for s, _, n in specs):
        prev = None
        for stage, pipeline, n in specs:
            prev = make_executor(cfg, stage, pipeline, n, depends=prev)
        prev.run()  # submits the chain of sbatch arrays, each depending on the previous stage
        print("submitted to Slurm; rerun the same command after the jobs end: it resubmits only "
              "unfinished tasks, or writes stats.json and report.md when all are done")
        return {}
    if cfg.executor == "ray" and any(completed_tasks(cfg, s) < n for s, _, n in specs):
        _ensure_ray(cfg)
    _warm_imports(cfg)
    for i, (stage, pipeline, n) in enumerate(specs, 1):
        with _Progress(cfg, stage, n, i, len(specs)):
            if completed_tasks(cfg, stage) < n:
                make_executor(cfg, stage, pipeline, n).run()
        if stage == "filter" and completed_tasks(cfg, stage) >= n:
            ensure_filtered(cfg)
        if completed_tasks(cfg, stage) < n:
            raise RuntimeError(f"stage {stage}: only {completed_tasks(cfg, stage)}/{n} tasks completed; "
                               f"see {cfg.path('logs', stage, 'logs')} and rerun the same command to resume")
    stats = report.write(cfg, [s for s, _, _ in specs], wall_s=time.time() - t0)
    if cfg.progress:
        print(report.summary_line(stats), flush=True)
    return stats


def ensure_filtered(cfg: RecipeConfig) -> None:
    """When no document survived the filter stage its writer made no file, and datatrove's readers
    refuse an empty folder: an empty file lets the later stages run over zero documents (an empty
    output and a report that says where everything was dropped)."""
    if glob.glob(cfg.path("filtered", "*.jsonl.gz")):
        return
    path = cfg.path("filtered", "00000.jsonl.gz")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(gzip.compress(b""))
    os.replace(tmp, path)


def _warm_imports(cfg: RecipeConfig) -> None:
    """Build the heavy objects once in the driver (the modules are imported at the top), so
    forked workers start warm."""
    try:
        load_word_tokenizer("en").tokenizer  # noqa: B018 - builds spaCy's blank English pipeline
        if cfg.tokenizer:
            build_tokenizer(cfg.tokenizer)
    except Exception:  # noqa: BLE001 - only an optimisation
        pass
