"""Supervised fine-tuning: a task mixture rendered in the chat format, packed best-fit into rows,
trained with the core step's masked cross-entropy (only the assistant's own tokens count).

Evaluations: validation loss on packed held-out conversations (every `train.eval_every`), and the
tasks' held-out accuracy through the engine, greedy with tools on (`eval.tasks`, every
`eval.every` steps and at the end); the final row carries `eval/<task>`, `eval/format` and
`eval/chatcore`. Sample conversations go to `samples.md` in the run directory.
"""
from __future__ import annotations

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np

from lm import images, paths, runs, steps, tasks
from lm.config import Config, ConfigError, parse_weights
from lm.data.sft import SFTBatches
from lm.data.tfds_builders import TaskExamples
from lm.eval.chat import evaluate_tasks
from lm.rl.rewards import HeldOutRewards
from lm.stages import base
from lm.state import checkpoint_target, reset_schedule_counts


def parse_files(spec: str) -> dict[str, str]:
    """sft.files "name=path,..." -> {name: absolute path}; a missing file is a ConfigError."""
    out = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        name, eq, path = item.partition("=")
        if not eq or not name.strip() or not path.strip():
            raise ConfigError(f"sft.files: {item!r} is not name=path")
        path = os.path.join(paths.workdir(), os.path.expanduser(path.strip()))
        if not os.path.isfile(path):
            raise ConfigError(f"sft.files: {name.strip()!r}: no file at {path}")
        out[name.strip()] = path
    return out


class Stage(base.Stage):
    chat = True
    needs_parent = True

    @staticmethod
    def abstract_batch(cfg: Config) -> dict:
        B, T = cfg.data.batch_size, cfg.data.seq_len
        i32 = lambda: jax.ShapeDtypeStruct((B, T), jnp.int32)
        return {"inputs": i32(), "targets": i32(), "positions": i32(), "segment_ids": i32(),
                "weights": jax.ShapeDtypeStruct((B, T), jnp.float32)}

    def __init__(self, cfg: Config, tokenizer=None, parent=None):
        if tokenizer is None or tokenizer.chat is None:
            raise ValueError("sft needs a tokenizer with the chat special tokens (init_from a "
                             "run trained with a BPE tokenizer)")
        self.cfg, self.tokenizer = cfg, tokenizer
        for name, path in parse_files(cfg.sft.files).items():
            tasks.register_file(name, path)
        weights = parse_weights(cfg.sft.mixture, tasks.known(), key="sft.mixture")
        d = cfg.data
        examples = TaskExamples(d.reader, tfds_examples=d.tfds_examples)
        self.batches = SFTBatches(tokenizer, weights, split="train", seq_len=d.seq_len,
                                  batch_size=d.batch_size, buffer=cfg.sft.buffer, seed=d.seed,
                                  examples=examples)
        self.val_groups = []
        # held-out rows from the tasks that have a held-out split (a conversations file has none)
        held = {n: w for n, w in weights.items() if tasks.get(n).size("test") != 0}
        if cfg.sft.val_rows and not held:
            print("sft: no task of the mixture has a held-out split; no validation loss")
        if cfg.sft.val_rows and held:
            val = SFTBatches(tokenizer, held, split="test", seq_len=d.seq_len,
                             batch_size=d.batch_size, buffer=cfg.sft.buffer, seed=d.seed + 1,
                             examples=examples)
            n_batches = max(1, cfg.sft.val_rows // d.batch_size)
            self.val_groups = steps.stack_batches([next(val) for _ in range(n_batches)],
                                                   micro=cfg.train.grad_accum)
        self.token_bytes = np.asarray(tokenizer.token_bytes())
        self.tasks = list(parse_weights(cfg.eval.tasks, tasks.NAMES, key="eval.tasks"))
        self.score = HeldOutRewards(cfg, tokenizer) if cfg.eval.rewards else None
        self.samples: list[dict] = []

    def initial_state(self, state, parent):
        """The parent's parameters; with `sft.keep_optimizer`, its Adam moments too (the LR
        schedule restarted)."""
        if not self.cfg.sft.keep_optimizer:
            return super().initial_state(state, parent)
        _, pstate, _ = runs.restore_state(parent.ref, checkpoint_target(self.cfg))
        return state.replace(params=pstate.params,
                             opt_state=reset_schedule_counts(pstate.opt_state))

    def next_batch(self, loop, state) -> dict:
        return next(self.batches)

    def data_state(self) -> dict:
        return self.batches.get_state()

    def set_data_state(self, d: dict) -> None:
        self.batches.set_state(d)

    def log_metrics(self) -> dict:
        return self.batches.packer.stats.as_metrics()

    def evaluate(self, loop, state, step: int, final: bool) -> dict:
        cfg, out = self.cfg, {}
        if self.val_groups and (loop.due(step, cfg.train.eval_every) or final):
            out.update(steps.evaluate(loop.compiled, state.params,
                                      self.val_groups, self.token_bytes))
        out.update(task_evals(self, loop, state, step, final))
        return out

    def finish(self, loop, state) -> dict:
        if self.samples:
            write_samples(loop.run_dir, self.samples)
        return {"packing": self.batches.packer.stats.as_metrics()}


def task_evals(stage, loop, state, step: int, final: bool) -> dict:
    """A chat stage's held-out task accuracy through the engine (greedy, tools on: `eval.tasks`
    over `stage.tasks`; `stage.score`: `eval.rewards` of the same replies) when `eval.every` or
    the end is due; the final call keeps its sample conversations in `stage.samples` (for
    `write_samples`)."""
    cfg = stage.cfg
    if not stage.tasks or not (loop.due(step, cfg.eval.every) or final):
        return {}
    limit = (cfg.eval.final_limit or cfg.eval.limit) if final else cfg.eval.limit
    m, shown = evaluate_tasks(loop.compiled.host_params(state), cfg.model, stage.tokenizer,
                              stage.tasks, limit=limit, batch_size=cfg.eval.batch_size,
                              max_new_tokens=cfg.eval.max_new_tokens, samples=cfg.eval.samples,
                              progress=loop.progress, lengths=True, score=stage.score)
    if final:
        stage.samples = shown
    return m


_IMAGE = re.compile(r"\[image ([\d ]+)\]")


def _pictures(run_dir: str, text: str, stem: str) -> str:
    """Text with its `[image c0 c1 ...]` parts saved as PNGs in `samples/` and shown inline."""
    def save(m: re.Match) -> str:
        try:
            png = images.to_png(images.decode(int(c) for c in m.group(1).split()))
        except images.ImageError:
            return m.group(0)
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        name = f"samples/{stem}_{m.start()}.png"
        with open(os.path.join(run_dir, name), "wb") as f:
            f.write(png)
        return f'<img src="{name}" width="72" style="image-rendering: pixelated">'
    return _IMAGE.sub(save, text)


def write_samples(run_dir: str, samples: list[dict]) -> None:
    """samples.jsonl and a readable samples.md of the final evaluation's conversations."""
    with open(os.path.join(run_dir, "samples.jsonl"), "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")
    lines = ["# Sample conversations (held-out, greedy, tools on)\n"]
    for k, s in enumerate(samples):
        mark = "correct" if s["correct"] else "wrong"
        fmt = "" if s["format_ok"] else ", no <|assistant_end|>"
        prompt, reply = (_pictures(run_dir, s[key], f"{k}_{key}") for key in ("prompt", "reply"))
        lines.append(f"## {s['task']} ({mark}{fmt})\n\n**User:** {prompt}\n\n"
                     f"**Assistant:** {reply}\n")
    with open(os.path.join(run_dir, "samples.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
