"""Training stages: what differs between pretraining, SFT and RL, around the one loop in
`lm.train.run`.

A stage supplies
    loss_fn(cfg)                   the objective, `(params, batch, rng) -> (loss, metrics)`
    abstract_batch(cfg)            the batch's shapes (AOT compilation, `--dry_run`)
    Stage(cfg, tokenizer, parent)  at run time:
        .next_batch(loop, state)   the next training batch (numpy); RL samples with state.params
        .data_state() / .set_data_state(d)   the data position saved in every checkpoint
        .evaluate(loop, state, step, final) -> metrics row (validation loss, task accuracies)
        .log_metrics()             extra counters logged with the training metrics
        .finish(loop, state)       end-of-run artifacts (a text sample, sample conversations)

The loop keeps what is shared: the compiled step, mesh and shardings, checkpoints (state + data
position + RNG), `--resume`, Ctrl-C, the progress bar, metrics.jsonl and TensorBoard.
"""
from __future__ import annotations

import importlib

STAGES = ("pretrain", "sft", "grpo")


def module(stage: str):
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; known: {list(STAGES)}")
    return importlib.import_module(f"lm.stages.{stage}")


def loss_fn(cfg):
    return module(cfg.stage).loss_fn(cfg)


def abstract_batch(cfg):
    return module(cfg.stage).abstract_batch(cfg)


def build(cfg, tokenizer=None, parent=None):
    """The stage object for a run (loads its data: errors here happen before any run dir)."""
    return module(cfg.stage).Stage(cfg, tokenizer=tokenizer, parent=parent)
