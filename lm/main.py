"""Command line: list, inspect and run registered experiments.

  python -m lm.main --list
  python -m lm.main --experiment shakespeare_char_cpu --set train.steps=100 --set model.n_layer=2
  python -m lm.main --experiment gpt2_124m --dry_run
  python -m lm.main --experiment shakespeare_char_cpu --resume
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import jax

import experiments
from lm import model, parallel, process, report, stages, steps, train
from lm.config import ConfigError, apply_overrides
from lm.data.sources import DataUnavailableError
from lm.runs import RunError
from lm.tasks import TaskDataError


def _human(n: float) -> str:
    for unit in ("", "K", "M", "G", "T", "P"):
        if abs(n) < 1000:
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g}E"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.main", description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="list the registered experiments")
    p.add_argument("--experiment", "-e", help="experiment name (see --list)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. train.steps=100 (repeatable)")
    p.add_argument("--dry_run", action="store_true",
                   help="print the resolved config, parameter count, FLOPs/token and the "
                        "compiled step's memory, without training")
    p.add_argument("--resume", action="store_true", help="continue the latest checkpoint")
    p.add_argument("--workdir", default=None, help="where runs/<experiment>/<time>/ goes (default .)")
    p.add_argument("--run_dir", default=None, help="exact run directory (overrides --workdir)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.add_argument("--stop_after", type=int, default=None,
                   help="stop after this many steps as if interrupted (a checkpoint; --resume "
                        "continues exactly)")
    g = p.add_argument_group("several hosts (one process per host; see WORKSPACE.md)")
    g.add_argument("--coordinator", default=None,
                   help="host:port of process 0 (or $LM_COORDINATOR_ADDRESS)")
    g.add_argument("--num_processes", type=int, default=None, help="(or $LM_NUM_PROCESSES)")
    g.add_argument("--process_id", type=int, default=None, help="(or $LM_PROCESS_ID)")
    a = p.parse_args(argv)

    try:
        parallel.init_distributed(a.coordinator, a.num_processes, a.process_id)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    if a.list:
        for name, desc in experiments.list_experiments():
            print(f"{name:28s} {desc}")
        return 0
    if not a.experiment:
        p.error("give --experiment NAME (or --list)")
    try:
        cfg = apply_overrides(experiments.get(a.experiment), a.set)
    except (KeyError, ConfigError, FileNotFoundError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2

    cfg = process.configure(cfg)       # model.dtype=auto decided, the CPU split into devices
    try:
        return dry_run(cfg) if a.dry_run else run(a, cfg)
    except (ValueError, FileNotFoundError, DataUnavailableError, TaskDataError, RunError) as e:
        # bad config, a missing parent run or data: a message, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


def dry_run(cfg) -> int:
    """The resolved config, parameter count, FLOPs and the compiled step's memory."""
    print(cfg.to_json())
    n = model.param_count(cfg.model)
    fpt = model.flops_per_token(cfg.model, cfg.data.seq_len)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    print(f"parameters:        {n:,} ({_human(n)})")
    print(f"FLOPs/token:       {fpt:,.0f} ({_human(fpt)}; 6·N_matmul + causal attention)")
    print(f"tokens/step:       {tokens:,}  ->  FLOPs/step {_human(fpt * tokens)}")
    devices, how = None, "abstract shapes, nothing allocated"
    if parallel.per_device_programs(cfg.mesh):   # the AOT report lowers a jit step: one device's
        cfg = dataclasses.replace(cfg, mesh=dataclasses.replace(cfg.mesh, parallelism="jit"))
        devices, how = jax.devices()[:1], "as jit on one device with the whole batch (a pmap run)"
    compiled = steps.compile_steps(cfg, stages.loss_fn(cfg), devices=devices)
    rep = steps.aot_report(compiled, stages.abstract_batch(cfg))
    gib = 2 ** 30
    print(f"compiled step ({rep['compile_s']:.1f} s to compile, {how}):")
    for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
              "alias_size_in_bytes", "peak_estimate_bytes"):
        if k in rep:
            print(f"  {k:28s} {rep[k] / gib:8.3f} GiB")
    if "xla_flops_per_step" in rep:
        note = " (counts a grad-accumulation scan body once)" if cfg.train.grad_accum > 1 else ""
        print(f"  XLA cost analysis: {_human(rep['xla_flops_per_step'])} FLOPs/step{note}")
    return 0


def run(a, cfg) -> int:
    """Train, then write the report card of a complete run (process 0)."""
    summary = train.run(cfg, run_dir=a.run_dir, workdir=a.workdir, resume=a.resume,
                        progress=not a.no_progress, stop_after=a.stop_after)
    if summary["complete"] and parallel.is_main_process():
        summary["report"] = report.write(summary["run_dir"])
    print(json.dumps({k: v for k, v in summary.items() if k != "sample"}, indent=2, default=str))
    if "sample" in summary:
        print("---- sample ----")
        print(summary["sample"])
    return 130 if summary.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
