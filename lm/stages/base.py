"""The `Stage` interface: what one training stage supplies to the loop in `lm.train`.

    Stage.loss_fn(cfg)             the objective, `(params, batch, rng) -> (loss, metrics)`
    Stage.abstract_batch(cfg)      the batch's shapes (AOT compilation, `--dry_run`)
    Stage.chat                     whether its runs speak the chat format (chat CLI, server)
    Stage.needs_parent             whether it starts from a parent run (`init_from`)
    Stage(cfg, tokenizer, parent)  at run time (loads its data: errors before any run dir):
        .tokenizer                 the run's tokenizer (saved with it)
        .initial_state(state, parent)   the first state from a fresh one and the parent run
        .next_batch(loop, state)   the next training batch (numpy, with `inputs` [rows, length]:
                                   the loop counts its positions); RL samples with state.params
        .data_state() / .set_data_state(d)   the data position saved in every checkpoint
        .evaluate(loop, state, step, final) -> metrics row (validation loss, task accuracies);
                                   {} when nothing is due. A fresh run (not a resumed one) is
                                   asked once at step 0, before the first update (`loop.due`
                                   is never true there: a stage evaluates its start state only
                                   if it asks for step 0, as grpo does for its curves)
        .log_metrics()             extra counters logged with the training metrics
        .finish(loop, state)       end-of-run artifacts (a text sample, sample conversations)
"""
from __future__ import annotations

from typing import Any

from lm import steps
from lm.config import Config


class Stage:
    chat: bool = False
    needs_parent: bool = False
    tokenizer: Any

    @staticmethod
    def loss_fn(cfg: Config):
        """Next-token cross-entropy (per-token weights where the batch has them)."""
        return steps.lm_loss(cfg)

    @staticmethod
    def abstract_batch(cfg: Config) -> dict:
        raise NotImplementedError

    def initial_state(self, state, parent):
        """A fresh state of this run starting from `parent` (None for a run from scratch): by
        default the parent's parameters with a new optimizer."""
        return state if parent is None else state.replace(params=parent.params)

    def log_metrics(self) -> dict:
        return {}

    def finish(self, loop, state) -> dict:
        return {}
