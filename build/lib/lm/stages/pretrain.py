"""Pretraining: next-token prediction on a token stream; validation loss and bits per byte on the
held-out stream, optional likelihood benchmarks (`eval.tasks`, scored as lm-eval scores base
models, e.g. HellaSwag acc_norm for gpt2_124m), and a text sample at the end."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from lm import steps
from lm.config import Config, parse_weights
from lm.data import pipeline
from lm.eval import benchmarks, probes
from lm.sampling import generate_text
from lm.stages import base


class Stage(base.Stage):
    @staticmethod
    def abstract_batch(cfg: Config) -> dict:
        B, T = cfg.data.batch_size, cfg.data.seq_len
        b = {"inputs": jax.ShapeDtypeStruct((B, T), jnp.int32),
             "targets": jax.ShapeDtypeStruct((B, T), jnp.int32)}
        if cfg.data.segment_on_bos:
            b["segment_ids"] = jax.ShapeDtypeStruct((B, T), jnp.int32)
        return b

    def __init__(self, cfg: Config, tokenizer=None, parent=None):
        self.cfg = cfg
        self.splits = pipeline.load_token_splits(cfg.data, tokenizer=tokenizer)
        self.tokenizer = self.splits.tokenizer
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise ValueError(f"model.vocab_size ({cfg.model.vocab_size}) is smaller than the "
                             f"tokenizer's ({self.tokenizer.vocab_size})")
        bos = self.tokenizer.bos_id if cfg.data.segment_on_bos else None
        self.train_it, val_iter = pipeline.make_iterators(
            cfg.data, self.splits, eval_batches=cfg.train.eval_batches, bos_id=bos)
        val = list(val_iter())
        self.val_groups = steps.stack_batches(val, micro=cfg.train.grad_accum)
        n = cfg.train.interim_eval_batches
        self.interim_groups = steps.stack_batches(val[:n], micro=cfg.train.grad_accum) \
            if 0 < n < len(val) else self.val_groups
        self.token_bytes = np.asarray(self.tokenizer.token_bytes())
        names = list(parse_weights(cfg.eval.tasks, benchmarks.BENCHMARKS + probes.PROBES,
                                   key="eval.tasks", kind="likelihood benchmark or probe"))
        self.bench = [n for n in names if n in benchmarks.BENCHMARKS]
        self.probes = [n for n in names if n in probes.PROBES]

    def next_batch(self, loop, state) -> dict:
        return next(self.train_it)

    def data_state(self) -> dict:
        return self.train_it.get_state()

    def set_data_state(self, d: dict) -> None:
        self.train_it.set_state(d)

    def evaluate(self, loop, state, step: int, final: bool) -> dict:
        out = {}
        if loop.due(step, self.cfg.train.eval_every) or final:
            out.update(steps.evaluate(loop.compiled, state.params,
                                      self.val_groups if final else self.interim_groups,
                                      self.token_bytes))
        if self.bench and (loop.due(step, self.cfg.eval.every) or final):
            limit = (self.cfg.eval.final_limit or self.cfg.eval.limit) if final else \
                self.cfg.eval.limit
            res = benchmarks.run(loop.compiled.host_params(state), self.cfg.model, self.tokenizer,
                                 self.bench, limit=limit, batch_size=self.cfg.eval.batch_size)
            out.update(benchmarks.metrics(res))
        if self.probes and (loop.due(step, self.cfg.eval.every) or final):
            out.update(probes.run(loop.compiled.host_params(state), self.cfg.model,
                                  self.tokenizer, self.probes))
        return out

    def finish(self, loop, state) -> dict:
        cfg = self.cfg
        if cfg.train.sample_tokens <= 0:
            return {}
        text = generate_text(loop.compiled.host_params(state), cfg.model, self.tokenizer,
                             cfg.train.sample_prompt, cfg.train.sample_tokens, seed=cfg.train.seed)
        with open(os.path.join(loop.run_dir, "sample.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        loop.writer.write_text(loop.final_step, "sample", text)
        return {"sample": text}
