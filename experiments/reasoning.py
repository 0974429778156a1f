"""Reasoning under RL on the tiny chain (issue 28): does working appear when only the answer is
rewarded?

    python -m lm.main -e sft_think_tiny     # from chat_tiny_base: SFT where 80% of the 2-4 step
                                            # arithmetic replies are the answer alone
    python -m lm.main -e grpo_think_tiny    # GRPO on correctness only; logs reply length and
                                            # the share of replies that show their working
    python -m tools.pass_at_k --runs chat_tiny_sft grpo_arith_tiny --task arithmetic_easy \
        --out runs/pass_at_k                # what RL does to pass@k (k = 1 ... 64)

The table, plots and sample replies: docs/results.md ("Reasoning under RL").
"""
from __future__ import annotations

import dataclasses

from experiments import register
from experiments.chat import chat_tiny_sft, grpo_arith_tiny


@register("sft_think_tiny", "SFT of chat_tiny_base where 80% of the 2-4 step arithmetic replies "
          "are the answer alone and 20% worked with the calculator (both in the policy)")
def sft_think_tiny():
    cfg = chat_tiny_sft()
    # arithmetic_think is most of the mixture; no other arithmetic task, whose replies are
    # always worked, so the share of worked replies the policy starts from is the data's
    cfg.sft.mixture = "arithmetic_think:4,identity:1,spelling:1,dolly:0.25,alpaca:0.25"
    cfg.eval = dataclasses.replace(cfg.eval, tasks="arithmetic_think,identity", final_limit=200)
    cfg.train = dataclasses.replace(cfg.train, steps=400, eval_every=100)
    return cfg


@register("grpo_think_tiny", "GRPO from sft_think_tiny on 2-4 step arithmetic, correctness "
          "reward only: do reply length and worked replies rise with accuracy?")
def grpo_think_tiny():
    cfg = grpo_arith_tiny()
    cfg.init_from = "sft_think_tiny"
    # prompts of up to ~110 tokens and four worked steps (~110 tokens) fit rows of 320
    cfg.data = dataclasses.replace(cfg.data, seq_len=320)
    cfg.rl = dataclasses.replace(cfg.rl, task="arithmetic_think", split="rl", rewards="correct:1",
                                 max_new_tokens=200)
    cfg.eval = dataclasses.replace(cfg.eval, tasks="arithmetic_think", every=10, limit=128,
                                   final_limit=400)
    cfg.train = dataclasses.replace(cfg.train, steps=40, eval_every=10)
    cfg.checkpoint = dataclasses.replace(cfg.checkpoint, every=20)
    return cfg
