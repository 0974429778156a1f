"""Training: the one loop every stage runs (pretraining, SFT, RL).

    summary = train.run(cfg, workdir=..., resume=...)
        = loop(prepare(cfg, ...))

`prepare` does everything that can fail on bad input (the parent run, the stage's data and
tokenizer, compilation) before the run directory exists, so a failed start leaves nothing behind;
then it writes the run's config, tokenizer and lineage and restores or builds the first state.
`loop` asks the stage for each batch, runs the compiled step (`lm.steps`), logs, evaluates,
checkpoints, and stops on Ctrl-C, `train.time_limit_s` or the last step; the stage decides what a
batch is and what to evaluate (`lm.stages`), the loop never asks which stage it runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import threading
import time
from typing import Any, Optional

import jax
import numpy as np
from tqdm import tqdm

from lm import model, parallel, paths, process, runs, stages, steps
from lm.checkpoint import CheckpointManager, has_checkpoint
from lm.config import Config
from lm.data import pipeline
from lm.logs import MetricsWriter, NullWriter
from lm.stages.base import Stage
from lm.tokenizer import load_tokenizer


@dataclasses.dataclass
class Loop:
    """What a stage sees of the running loop (see `lm.stages`)."""
    cfg: Config
    compiled: steps.Compiled
    run_dir: str
    writer: Any
    progress: bool
    final_step: int = 0

    @staticmethod
    def due(step: int, every: int) -> bool:
        """Whether a step-count schedule (`every` steps; 0: never) falls on `step` (never on
        step 0: the start state is evaluated only by stages that ask for it)."""
        return every > 0 and step > 0 and step % every == 0


@dataclasses.dataclass
class Prepared:
    """A run ready for its loop: directory, parent, stage, compiled steps, first state."""
    cfg: Config
    run_dir: str
    parent: Optional[runs.Run]
    stage: Stage
    compiled: steps.Compiled
    state: Any
    start: int
    ckpt: CheckpointManager


def run(cfg: Config, *, run_dir: Optional[str] = None, workdir: Optional[str] = None,
        resume: bool = False, progress: bool = True, stop_after: Optional[int] = None,
        loss_fn: Optional[steps.LossFn] = None) -> dict:
    """Train `cfg` (any stage); returns a summary. `stop_after` ends the loop early (as if
    interrupted). Caches go under `workdir` (`lm.paths`)."""
    with paths.using_workdir(workdir):
        p = prepare(cfg, run_dir=run_dir, workdir=workdir, resume=resume, loss_fn=loss_fn,
                    progress=progress)
        return loop(p, progress=progress, stop_after=stop_after)


def prepare(cfg: Config, *, run_dir: Optional[str] = None, workdir: Optional[str] = None,
            resume: bool = False, loss_fn: Optional[steps.LossFn] = None,
            progress: bool = True) -> Prepared:
    """Parent, stage, compiled steps, run directory and the first state of a run of `cfg`."""
    cfg = process.resolve(cfg.validate())
    run_dir = run_dir or new_run_dir(cfg, workdir, resume)
    resuming = resume and has_checkpoint(runs.checkpoint_dir(run_dir, cfg))
    parent = find_parent(cfg, run_dir, workdir, resuming)
    tokenizer = parent.tokenizer if parent is not None else None
    saved_tok = os.path.join(run_dir, "tokenizer.json")
    if tokenizer is None and resuming and os.path.exists(saved_tok):
        tokenizer = load_tokenizer(saved_tok)
    stage = stages.build(cfg, tokenizer=tokenizer, parent=parent)
    c = steps.compile_steps(cfg, loss_fn or stages.loss_fn(cfg))
    os.makedirs(run_dir, exist_ok=True)
    if parallel.is_main_process():          # several processes: one writes the run's files
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            f.write(cfg.to_json())
        stage.tokenizer.save(saved_tok)
        runs.write_lineage(run_dir, parent)
    if progress and parallel.is_main_process():
        print(f"{cfg.name} ({cfg.stage}): {describe_devices(c)}" +
              (f", from {parent.run_dir} step {parent.step}" if parent is not None else ""))
    ckpt = CheckpointManager(runs.checkpoint_dir(run_dir, cfg), every=cfg.checkpoint.every,
                             keep=cfg.checkpoint.keep)
    restored = ckpt.restore(c.checkpoint_target()) if resume else None
    if restored is not None:
        start, host_state, extra = restored
        stage.set_data_state(extra["data"])
        print(f"resumed from {run_dir} at step {start}")
        return Prepared(cfg, run_dir, parent, stage, c, c.device_state(host_state), start, ckpt)
    if resume:
        print(f"--resume: {run_dir} has no checkpoint yet; starting at step 0")
    state = c.init_state(cfg.train.seed)
    if parent is not None:
        state = c.device_state(stage.initial_state(c.host_state(state), parent))
    return Prepared(cfg, run_dir, parent, stage, c, state, 0, ckpt)


def loop(p: Prepared, *, progress: bool = True, stop_after: Optional[int] = None) -> dict:
    """The training loop of a prepared run; returns its summary (also written to summary.json)."""
    cfg, c, stage, state = p.cfg, p.compiled, p.stage, p.state
    main = parallel.is_main_process()
    writer = MetricsWriter(p.run_dir) if main else NullWriter()
    lp = Loop(cfg, c, p.run_dir, writer, progress and main)
    meter = StepMeter(cfg)
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, stop_after)
    summary: dict = {"run_dir": p.run_dir, "stage": cfg.stage, "start_step": p.start,
                     "devices": describe_devices(c)}
    if p.parent is not None:
        summary["parent"] = {"run_dir": p.parent.run_dir, "step": p.parent.step}
    bar = tqdm(total=cfg.train.steps, initial=p.start, disable=not lp.progress,
               dynamic_ncols=True, desc=cfg.name)
    stopped = None                        # why the loop ended early, if it did
    with CtrlC() as ctrl_c:
        try:
            if p.start == 0 and cfg.train.steps > 0:     # a fresh run: the start state, once
                evaluate_interim(lp, stage, state, 0, summary, bar, meter)
            for step in range(p.start, end):
                batch = stage.next_batch(lp, state)
                meter.count(batch)
                state, metrics = c.train_step(state, c.put_batch(batch))
                done = step + 1
                if done % cfg.train.log_every == 0 or done == end:
                    row = meter.log(writer, done, c.place.fetch(metrics), stage.log_metrics())
                    bar.set_postfix(meter.postfix(row))
                if done < cfg.train.steps:
                    evaluate_interim(lp, stage, state, done, summary, bar, meter)
                if p.ckpt.should_save(done):
                    p.ckpt.save(done, c.host_state(state), {"data": stage.data_state()})
                bar.update(1)
                if ctrl_c.pressed:
                    stopped = "interrupted"
                    bar.write(f"interrupted at step {done}: saving a checkpoint, then exiting")
                    break
                if done < cfg.train.steps and meter.out_of_time():
                    stopped = "out_of_time"
                    bar.write(f"train.time_limit_s ({cfg.train.time_limit_s:g} s) reached at "
                              f"step {done}")
                    break
        finally:
            bar.close()
    final_step = lp.final_step = int(jax.device_get(c.host_state(state).step))
    p.ckpt.save(final_step, c.host_state(state), {"data": stage.data_state()}, force=True)
    p.ckpt.wait()
    p.ckpt.close()
    summary.update(final_step=final_step, interrupted=stopped == "interrupted",
                   train=meter.last, out_of_time=stopped == "out_of_time")
    complete = stopped != "interrupted" and (final_step == cfg.train.steps
                                             or stopped == "out_of_time")
    summary["complete"] = complete
    if complete:
        summary.update(final_evaluation(lp, stage, state, final_step))
        summary["wall_s"] = meter.elapsed()
    writer.close()
    if main:
        with open(os.path.join(p.run_dir, "summary.json"), "w") as f:
            json.dump({k: v for k, v in summary.items() if k != "sample"}, f, indent=2,
                      default=str)
    return summary


def evaluate_interim(lp: Loop, stage: Stage, state, step: int, summary: dict, bar,
                     meter: "StepMeter") -> None:
    """The stage's evaluation row at `step` (before the end; step 0 is the start state of a
    fresh run), if it has one: logged, kept in the summary, shown above the bar."""
    ev = stage.evaluate(lp, state, step, final=False)
    if ev:
        lp.writer.write(step, **ev)
        summary.update(ev)
        bar.write(f"step {step}: " + fmt(ev))
        meter.skip_time()       # evaluation is not training time


def final_evaluation(lp: Loop, stage: Stage, state, step: int) -> dict:
    """The final evaluation row (`final: true`) and the stage's end-of-run artifacts."""
    out = {}
    ev = stage.evaluate(lp, state, step, final=True)
    if ev:
        lp.writer.write(step, final=True, **ev)
        out.update(ev)
        if lp.progress:
            print(f"final (step {step}): " + fmt(ev))
    if parallel.is_main_process():
        out.update(stage.finish(lp, state))
    return out


class StepMeter:
    """Training-time bookkeeping: tokens/s and MFU between log rows (evaluation time left out),
    elapsed time, and the wall-time limit (process 0's clock decides for every process).
    Tokens are the positions of the batches the steps ran (a GRPO step trims its batch)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.fpt = model.flops_per_token(cfg.model, cfg.data.seq_len)
        self.peak = steps.peak_flops(cfg)
        self.tokens = 0                     # positions stepped on since the last log row
        self.t0 = self.t_last = time.perf_counter()
        self.last: Optional[dict] = None

    def count(self, batch: dict) -> None:
        self.tokens += int(np.prod(batch["inputs"].shape))

    def log(self, writer, step: int, m: dict, extra: dict) -> dict:
        now = time.perf_counter()
        tps = self.tokens / max(now - self.t_last, 1e-9)
        self.t_last, self.tokens = now, 0
        rest = {k: v for k, v in m.items() if k not in ("loss", "lr", "grad_norm")}
        self.last = writer.write(step, loss=m["loss"], lr=m["lr"], grad_norm=m["grad_norm"],
                                 tokens_per_s=tps, mfu=tps * self.fpt / self.peak,
                                 elapsed_s=now - self.t0, **rest, **extra)
        return self.last

    @staticmethod
    def postfix(row: dict) -> dict:
        return dict(loss=f"{float(row['loss']):.4f}", lr=f"{float(row['lr']):.2e}",
                    tok_s=f"{row['tokens_per_s']:,.0f}", mfu=f"{100 * row['mfu']:.1f}%")

    def skip_time(self) -> None:
        self.t_last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def out_of_time(self) -> bool:
        limit = self.cfg.train.time_limit_s
        return bool(limit) and bool(parallel.shared_choice(int(self.elapsed() >= limit)))


class CtrlC:
    """Ctrl-C sets a flag that the loop checks between steps, so the state is never caught
    half-donated; a second Ctrl-C raises as usual. (Only on the main thread.)"""

    def __init__(self):
        self.pressed = False
        self._prev = None

    def _handler(self, signum, frame):
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True

    def __enter__(self) -> "CtrlC":
        if threading.current_thread() is threading.main_thread():
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)


def find_parent(cfg: Config, run_dir: str, workdir: Optional[str], resuming: bool):
    """The parent run of `cfg.init_from` (None without one): on resume, the exact run and step
    this run started from (its lineage.json), not whatever is the latest run of it now."""
    if not cfg.init_from:
        return None
    lineage = os.path.join(run_dir, "lineage.json")
    if resuming and os.path.exists(lineage):
        with open(lineage) as f:
            p = json.load(f)["parent"]
        return runs.load(p["run_dir"], step=p["step"], workdir=workdir)
    parent = runs.load(cfg.init_from, workdir=workdir)
    runs.check_compatible(parent, cfg)
    want = cfg.data.tokenizer
    if want not in ("", "parent") and not pipeline.build_tokenizer(cfg.data).same_as(
            parent.tokenizer):
        raise runs.RunError(f"init_from {parent.run_dir}: data.tokenizer={want!r} is not the "
                            f"parent's tokenizer (set data.tokenizer=parent, or leave it empty)")
    if parent.tokenizer.vocab_size > cfg.model.vocab_size:
        raise runs.RunError(f"init_from {parent.run_dir}: its tokenizer has "
                            f"{parent.tokenizer.vocab_size} tokens, more than model.vocab_size")
    return parent


def new_run_dir(cfg: Config, workdir: Optional[str], resume: bool) -> str:
    """runs/<experiment>/<timestamp>/ (under `workdir`, default the current directory).

    With `resume`, the latest run of this experiment that holds a checkpoint is reused.
    """
    root = os.path.join(workdir or ".", "runs", cfg.name)
    if resume and os.path.isdir(root):
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                       and has_checkpoint(runs.checkpoint_dir(os.path.join(root, d), cfg)))
        if found:   # several processes: process 0's choice, so they cannot disagree
            return os.path.join(root, found[parallel.shared_choice(len(found) - 1)])
    # decided once, by process 0, and shared: a start straddling a second gives one directory
    stamp = parallel.shared_choice(int(time.time()))
    return os.path.join(root, time.strftime("%Y%m%d-%H%M%S", time.localtime(stamp)))


def describe_devices(c: steps.Compiled) -> str:
    kind = "pmap" if isinstance(c.place, parallel.PmapPlacement) else "jit"
    return (f"{c.mesh.devices.size} {c.mesh.devices.flat[0].platform} device(s), "
            f"{kind} mesh {dict(c.mesh.shape)}")


def fmt(ev: dict) -> str:
    return ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in ev.items() if not k.endswith("_n"))
