"""Pretraining experiments: nanoGPT's Shakespeare baselines and the GPT-2 (124M) recipe."""
from __future__ import annotations

import dataclasses

from lm.config import (CheckpointConfig, Config, DataConfig, EvalConfig, MeshConfig,
                       ModelConfig, OptimConfig, TrainConfig, gpt2_preset, modern)

from experiments import register


def _baby_model(**kw) -> ModelConfig:
    return ModelConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128,
                       dropout=0.0, **kw)


def _shakespeare_char(model: ModelConfig, *, seq_len: int, batch_size: int, steps: int) -> Config:
    """nanoGPT's config/train_shakespeare_char.py: the optimiser and schedule both sizes share."""
    return Config(
        model=model,
        data=DataConfig(source="tinyshakespeare", tokenizer="char", seq_len=seq_len,
                        batch_size=batch_size),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, schedule="cosine", warmup_steps=100, b1=0.9,
                          b2=0.99, weight_decay=0.1, grad_clip=1.0),
        train=TrainConfig(steps=steps, eval_every=250, eval_batches=200, log_every=10),
        checkpoint=CheckpointConfig(every=1000, keep=2),
    )


def _baby(model: ModelConfig) -> Config:
    # with nanoGPT's CPU overrides (README "baby GPT"): block 64, batch 12, 2000 iterations.
    # The final val_loss is over 200 batches; the 7 interim ones over the first 64 (one eval
    # call; 49k tokens, still 3x the 20 batches nanoGPT's estimate uses)
    cfg = _shakespeare_char(model, seq_len=64, batch_size=12, steps=2000)
    cfg.train.interim_eval_batches = 64
    return cfg


@register("shakespeare_char_cpu", "nanoGPT's CPU 'baby GPT' on tinyshakespeare chars (4L/4H/128, "
          "block 64, 2000 steps; nanoGPT val 1.88)")
def shakespeare_char_cpu() -> Config:
    # bf16 where lm's bf16 CPU kernels run (faster there, val within 0.0001: README), else fp32
    return _baby(_baby_model(dtype="auto"))


@register("shakespeare_char_modern", "the baby budget with the modern options (RoPE, RMSNorm, "
          "QK-norm, ReLU², untied, no bias, soft-cap)")
def shakespeare_char_modern() -> Config:
    return _baby(modern(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128))


@register("shakespeare_bpe", "the baby GPT on a 2,048-token BPE trained on tinyshakespeare's "
          "training split; compare val_bpb with shakespeare_char_cpu")
def shakespeare_bpe() -> Config:
    cfg = _baby(_baby_model())
    cfg.model.vocab_size = 2048
    cfg.data.tokenizer = "bpe:2048"
    return cfg


@register("shakespeare_char", "nanoGPT's GPU config on tinyshakespeare chars (6L/6H/384, block 256, "
          "5000 steps, dropout 0.2; nanoGPT val 1.47)")
def shakespeare_char() -> Config:
    return _shakespeare_char(ModelConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6,
                                         n_embd=384, dropout=0.2),
                             seq_len=256, batch_size=64, steps=5000)


@register("gpt2_124m", "GPT-2 (124M) reproduction (build-nanogpt/llm.c): FineWeb-Edu 10B, ~0.5M "
          "tokens/step, 19,073 steps, HellaSwag every 250 (accelerators)")
def gpt2_124m() -> Config:
    """Shards from `python -m tools.prepare_fineweb --subset sample-10BT --out
    data/fineweb_edu10B` (GPT-2 tokenizer; val_*.npy held out). Published targets: val loss
    ~3.28 on FineWeb-Edu at 10B tokens (llm.c / build-nanogpt), HellaSwag acc_norm 0.30-0.33
    (OpenAI's GPT-2 124M: 0.294)."""
    return Config(
        # vocab padded 50257 -> 50304 (a multiple of 128), as build-nanogpt does.
        model=dataclasses.replace(gpt2_preset("gpt2"), vocab_size=50304, dtype="bfloat16"),
        data=DataConfig(source="shards", tokenizer="gpt2",
                        shards="data/fineweb_edu10B/shard_*.npy",
                        val_shards="data/fineweb_edu10B/val_*.npy",
                        seq_len=1024, batch_size=512, sampling="sequential"),
        eval=EvalConfig(tasks="hellaswag", every=250, limit=10042, batch_size=64),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5, schedule="cosine", warmup_steps=715, b1=0.9,
                          b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0),
        train=TrainConfig(steps=19073, grad_accum=8, eval_every=250, eval_batches=20,
                          log_every=10, sample_tokens=64),
        mesh=MeshConfig(data=-1, fsdp=1),
        checkpoint=CheckpointConfig(every=1000, keep=3),
    )
