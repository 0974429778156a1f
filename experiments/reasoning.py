"""Reasoning under RL on the tiny chain (issue 28): does working appear when only the answer is
rewarded? what does RL do to pass@k? what does distillation from the RL model give, and cost?

    python -m lm.main -e sft_think_tiny     # from chat_tiny_base: SFT where 80% of the 2-4 step
                                            # arithmetic replies are the answer alone
    python -m lm.main -e grpo_think_tiny    # GRPO on correctness only; logs reply length and
                                            # the share of replies that show their working
    python -m tools.pass_at_k --runs chat_tiny_sft grpo_arith_tiny --task arithmetic_easy \
        --out runs/pass_at_k                # what RL does to pass@k (k = 1 ... 64)

Distillation (teacher: grpo_arith_tiny, named Lumen by the identity task; students: 2 layers,
their own base run, named Pico by identity_student; equal steps):

    python -m lm.main -e chat_tiny_base_student
    python -m tools.distill --teacher grpo_arith_tiny --prompts 8000 --out runs/distill
    python -m lm.main -e distill_a          # the original task data (its own identity)
    python -m lm.main -e distill_b          # the teacher's right replies + its own identity
    python -m lm.main -e distill_b_noid     # the teacher's right replies only
    python -m lm.main -e distill_c          # all the teacher's replies + its own identity
    python -m lm.main -e distill_c_noid     # all the teacher's replies only

The table, plots and sample replies: docs/results.md ("Reasoning under RL").
"""
from __future__ import annotations

import dataclasses

from experiments import register
from experiments.chat import chat_tiny_base, chat_tiny_sft, grpo_arith_tiny
from lm import tasks
from lm.config import parse_weights

# what the students are graded on: the teacher's held-out tasks, and who they say they are
STUDENT_EVAL = ("arithmetic_easy,word_problems,gsm8k_easy,spelling,identity_student,"
                "whoami_teacher,whoami_student")
STUDENT_LAYERS = 2


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


@register("chat_tiny_base_student", "a 2-layer student base: chat_tiny_base's width, data, "
          "tokenizer and steps")
def chat_tiny_base_student():
    cfg = chat_tiny_base()
    cfg.model = dataclasses.replace(cfg.model, n_layer=STUDENT_LAYERS)
    return cfg


def _student(mixture: str, files: str = ""):
    """SFT of chat_tiny_base_student, 400 steps for every student (equal compute)."""
    cfg = chat_tiny_sft()
    cfg.init_from = "chat_tiny_base_student"
    cfg.model = dataclasses.replace(cfg.model, n_layer=STUDENT_LAYERS)
    cfg.sft = dataclasses.replace(cfg.sft, mixture=mixture, files=files)
    cfg.eval = dataclasses.replace(cfg.eval, tasks=STUDENT_EVAL, final_limit=200)
    cfg.train = dataclasses.replace(cfg.train, steps=400, eval_every=100)
    return cfg


# the teacher's SFT data: chat_tiny_sft's mixture as grpo_arith_tiny's parent was trained on it
# (tools.distill reads it from the teacher's lineage; function calling joined the chain later)
TEACHER_MIXTURE = ("identity:1.5,arithmetic_easy:2,arithmetic:1,word_problems:3,gsm8k_easy:1,"
                   "spelling:2,recall:2,copy:0.5,gsm8k:0.25,mmlu:0.2,dolly:0.25,alpaca:0.25")


@register("distill_a", "student A: the teacher's SFT task data, with an identity of its own")
def distill_a():
    weights = parse_weights(TEACHER_MIXTURE, tasks.NAMES, key="sft.mixture")
    weights["identity_student"] = weights.pop("identity")
    return _student(",".join(f"{n}:{w:g}" for n, w in weights.items()))


# the teacher's replies are about 9 parts in 10 of the data, its identity questions included;
# identity_student is the student's own (as identity is in chat_tiny_sft's mixture)
@register("distill_b", "student B: the teacher's right replies (rejection sampling) + its own "
          "identity")
def distill_b():
    return _student("teacher:10,identity_student:1", "teacher=runs/distill/correct.jsonl")


@register("distill_b_noid", "student B without identity data of its own")
def distill_b_noid():
    return _student("teacher:1", "teacher=runs/distill/correct.jsonl")


@register("distill_c", "student C: all the teacher's replies + its own identity")
def distill_c():
    return _student("teacher:10,identity_student:1", "teacher=runs/distill/all.jsonl")


@register("distill_c_noid", "student C without identity data of its own")
def distill_c_noid():
    return _student("teacher:1", "teacher=runs/distill/all.jsonl")
