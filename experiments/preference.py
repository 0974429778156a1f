"""Preference experiments (issue 27): DPO and a reward model on Anthropic's HH-RLHF pairs, from
the tiny chat chain's SFT model.

    python -m lm.main -e dpo_hh_tiny        # DPO (beta 0.1) on HH-RLHF from chat_tiny_sft
    python -m lm.main -e rm_hh_tiny         # a reward model (Bradley-Terry) on the same pairs
    python -m lm.main -e rm_tiny            # a reward model on the synthetic labeller's pairs
    python -m lm.main -e rlhf_tiny          # GRPO against it, the true reward logged beside
    python -m lm.main -e rlhf_tiny_kl       # the same with a KL penalty to the SFT policy
    python -m lm.main -e dpo_tiny           # DPO on the labeller pairs, beside rlhf_tiny
"""
from __future__ import annotations

from lm.config import (CheckpointConfig, Config, DataConfig, EvalConfig, OptimConfig, PrefConfig,
                       TrainConfig)

from experiments import register
from experiments.chat import _tiny_model, grpo_arith_tiny


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


@register("rm_tiny", "a reward model on the synthetic labeller's pairs (arithmetic and word "
          "problems; 10% label noise) from chat_tiny_sft: accuracy against the true order")
def rm_tiny() -> Config:
    cfg = rm_hh_tiny()
    # 200 steps over 4,000 pairs gave 0.766 held-out, still rising (docs/results.md, landing
    # 41): 800 steps over 12,000 pairs (~1.8 epochs), 512 held-out pairs for a tighter estimate
    cfg.pref = PrefConfig(data="labeller:arithmetic_easy+word_problems", pairs=12000, noise=0.1,
                          val_pairs=512)
    cfg.train.steps, cfg.train.eval_every = 800, 100
    cfg.checkpoint.every = 400
    return cfg


@register("rlhf_tiny", "GRPO against rm_tiny's reward model, the labeller's true reward logged "
          "beside it (rl/reward/labeller, eval/reward/labeller): where do they part?")
def rlhf_tiny() -> Config:
    cfg = grpo_arith_tiny()
    cfg.rl.rewards = "model:1,labeller:0"        # the labeller is watched, never optimised
    cfg.rl.reward_model = "rm_tiny"
    # 8 prompts × 8 samples: twice the steps of the chain's 16 × 8 in the same time, so the
    # policy drifts far enough from SFT within 30 minutes to show what the RM lets it get away with
    cfg.rl.prompts, cfg.data.batch_size = 8, 64
    cfg.eval = EvalConfig(tasks="arithmetic_easy,word_problems", every=10, limit=64,
                          final_limit=200, batch_size=128, rewards="model,labeller")
    cfg.train.steps, cfg.train.time_limit_s = 100, 1500
    cfg.checkpoint.every = 50
    return cfg


@register("rlhf_tiny_kl", "rlhf_tiny with a KL penalty to the SFT policy (k3, beta 0.5)")
def rlhf_tiny_kl() -> Config:
    cfg = rlhf_tiny()
    cfg.rl.kl, cfg.rl.beta = "k3", 0.5
    return cfg


@register("dpo_tiny", "DPO on rm_tiny's labeller pairs from chat_tiny_sft: its true (labeller) "
          "reward and held-out accuracy beside rlhf_tiny's at the same wall time")
def dpo_tiny() -> Config:
    cfg = dpo_hh_tiny()
    cfg.pref = rm_tiny().pref
    cfg.data.seq_len = 256                 # labeller pairs are short (arithmetic replies)
    cfg.eval = EvalConfig(tasks="arithmetic_easy,word_problems", every=100, limit=64,
                          final_limit=200, batch_size=128, rewards="labeller")
    # capped at rlhf_tiny's training time; the 1,500 steps took 969 s here (17 min in all), so
    # docs/results.md sets it beside rlhf_tiny's evaluation at the same elapsed time (step 60)
    cfg.train.steps, cfg.train.time_limit_s, cfg.train.eval_every = 1500, 1500, 100
    return cfg
