"""Preference experiments (issue 27): DPO and a reward model on Anthropic's HH-RLHF pairs, from
the tiny chat chain's SFT model.

    python -m lm.main -e dpo_hh_tiny        # DPO (beta 0.1) on HH-RLHF from chat_tiny_sft
    python -m lm.main -e rm_hh_tiny         # a reward model (Bradley-Terry) on the same pairs
"""
from __future__ import annotations

from lm.config import (CheckpointConfig, Config, DataConfig, EvalConfig, OptimConfig, PrefConfig,
                       TrainConfig)

from experiments import register
from experiments.chat import _tiny_model


@register("dpo_hh_tiny", "DPO on HH-RLHF (train split) from chat_tiny_sft: held-out pairwise "
          "accuracy of the implied reward; the chain's held-out tasks before and after")
def dpo_hh_tiny() -> Config:
    return Config(
        stage="dpo", init_from="chat_tiny_sft",
        model=_tiny_model(),
        # 8 pairs a step; 512 tokens hold 84% of the training pairs (the rest are skipped)
        data=DataConfig(tokenizer="parent", seq_len=512, batch_size=16),
        optim=OptimConfig(lr=5e-5, min_lr=5e-6, schedule="cosine", warmup_steps=20, b1=0.9,
                          b2=0.95, weight_decay=0.0, grad_clip=1.0),
        pref=PrefConfig(data="hh_rlhf", beta=0.1, loss="sigmoid", val_pairs=256),
        eval=EvalConfig(tasks="identity,arithmetic_easy,recall", every=0, limit=64,
                        final_limit=200, batch_size=100),
        train=TrainConfig(steps=300, eval_every=50, log_every=10, sample_tokens=0),
        checkpoint=CheckpointConfig(every=100, keep=2),
    )


@register("rm_hh_tiny", "a reward model on HH-RLHF (train split) from chat_tiny_sft: held-out "
          "pairwise accuracy beside the length-only baseline")
def rm_hh_tiny() -> Config:
    cfg = dpo_hh_tiny()
    cfg.stage = "rm"
    cfg.model.head = "score"
    cfg.optim = OptimConfig(lr=1e-4, min_lr=1e-5, schedule="cosine", warmup_steps=20, b1=0.9,
                            b2=0.95, weight_decay=0.0, grad_clip=1.0)
    cfg.eval = EvalConfig(tasks="")
    return cfg
