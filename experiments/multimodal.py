"""Multimodality by tokens (issue 31): images become tokens of the same transformer (`lm.images`:
2×2 patches -> a 32-code codebook in the tokenizer's reserved special slots), so the chain's base
model needs no new vocabulary; SFT teaches it to read a digit, describe a picture and draw one.

    python -m lm.main -e chat_tiny_sft_vision
    python -m lm.main -e chat_tiny_sft_vision_long    # image tasks × 3, 1,600 steps: the goals
    python -m tools.image_codebook            # reconstruction error, the pixel baseline

Held out: one digit image in five, one shape × colour × position combination in five
(`lm.tasks.vision`).

Speech the same way (`lm.audio`: 40 ms log-mel frames -> a 22-code codebook in the reserve's last
slots): words spoken by espeak-ng (`lm.tasks.speech`), one voice in four held out.

    python -m lm.main -e chat_tiny_sft_speech
    python -m lm.main -e chat_tiny_sft_speech_heavy   # spoken words × 2: the digits' goal
    python -m tools.audio_codebook            # reconstruction error on the held-out voices
"""
from __future__ import annotations

import dataclasses

from lm.config import Config

from experiments import register
from experiments.chat import STUDY_SFT_STEPS, chat_sft_recipe

VISION_EVAL = "digits,picture_describe,picture_draw,identity,arithmetic_easy"


@register("chat_tiny_sft_vision", "SFT of chat_tiny_base with image tasks added (read a digit, "
          "describe a picture, draw one), images as tokens in reserved special slots")
def chat_tiny_sft_vision() -> Config:
    cfg = chat_sft_recipe(STUDY_SFT_STEPS)
    cfg.sft = dataclasses.replace(
        cfg.sft, mixture=cfg.sft.mixture + ",digits:2,picture_describe:1,picture_draw:1.5")
    cfg.eval = dataclasses.replace(cfg.eval, tasks=VISION_EVAL, final_limit=400)
    return cfg


SPEECH_EVAL = "speech_digits,speech_digits_noisy,speech_words,identity,arithmetic_easy"


@register("chat_tiny_sft_speech", "SFT of chat_tiny_base with spoken words added (what was "
          "said?), speech as tokens in reserved special slots; held-out voices")
def chat_tiny_sft_speech() -> Config:
    cfg = chat_sft_recipe(STUDY_SFT_STEPS)
    cfg.sft = dataclasses.replace(cfg.sft, mixture=cfg.sft.mixture + ",speech_words:3")
    cfg.eval = dataclasses.replace(cfg.eval, tasks=SPEECH_EVAL, final_limit=400)
    return cfg


@register("chat_tiny_sft_vision_heavy", "chat_tiny_sft_vision with three times the image tasks' "
          "weight in the mixture (does more image data per step buy accuracy?)")
def chat_tiny_sft_vision_heavy() -> Config:
    cfg = chat_tiny_sft_vision()
    chain = chat_sft_recipe(STUDY_SFT_STEPS).sft.mixture
    cfg.sft = dataclasses.replace(cfg.sft,
                                  mixture=chain + ",digits:6,picture_describe:3,picture_draw:4.5")
    return cfg


@register("chat_tiny_sft_speech_heavy", "chat_tiny_sft_speech with twice the spoken words' weight "
          "in the mixture (does more speech per step buy the digits' last points?)")
def chat_tiny_sft_speech_heavy() -> Config:
    cfg = chat_tiny_sft_speech()
    chain = chat_sft_recipe(STUDY_SFT_STEPS).sft.mixture
    cfg.sft = dataclasses.replace(cfg.sft, mixture=chain + ",speech_words:6")
    return cfg


@register("chat_tiny_sft_vision_long", "chat_tiny_sft_vision_heavy for 1,600 steps (inside the "
          "issue's 30 minutes here): the run that meets the image goals")
def chat_tiny_sft_vision_long() -> Config:
    cfg = chat_tiny_sft_vision_heavy()
    cfg.train = dataclasses.replace(cfg.train, steps=1600)
    return cfg
