"""Training stages: what differs between pretraining, SFT, RL and preference training, around
the one loop in `lm.train` (the interface: `lm.stages.base.Stage`).

The loop keeps what is shared: the compiled step, mesh and shardings, checkpoints (state + data
position + RNG), `--resume`, Ctrl-C, the progress bar, metrics.jsonl and TensorBoard. A new stage
is a module here with a `Stage` subclass, its name in `STAGES` and in `Config.stage`.
"""
from __future__ import annotations

from lm.config import Config, ConfigError
from lm.stages import grpo, preference, pretrain, sft
from lm.stages.base import Stage

STAGES: dict[str, type[Stage]] = {"pretrain": pretrain.Stage, "sft": sft.Stage,
                                  "grpo": grpo.Stage, "dpo": preference.DPO,
                                  "rm": preference.RewardModel}


def get(name: str) -> type[Stage]:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known: {list(STAGES)}")
    return STAGES[name]


def is_chat(name: str) -> bool:
    """Whether runs of this stage speak the chat format."""
    return get(name).chat


def loss_fn(cfg: Config):
    return get(cfg.stage).loss_fn(cfg)


def abstract_batch(cfg: Config) -> dict:
    return get(cfg.stage).abstract_batch(cfg)


def build(cfg: Config, tokenizer=None, parent=None) -> Stage:
    """The stage object for a run (loads its data: errors here happen before any run dir)."""
    cls = get(cfg.stage)
    if cls.needs_parent and parent is None:
        raise ValueError(f"stage {cfg.stage!r} starts from a parent run: set init_from (a run "
                         f"dir, a checkpoint dir, or an experiment name)")
    if cfg.eval.rewards and not cls.chat:
        raise ConfigError(f"eval.rewards={cfg.eval.rewards!r}: rewards score the held-out "
                          f"replies of a stage that replies; stage {cfg.stage!r} does not")
    return cls(cfg, tokenizer=tokenizer, parent=parent)
