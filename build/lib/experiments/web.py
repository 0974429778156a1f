"""web_tiny: pretrain a tiny GPT on the web pipeline's own output (FineWeb-style shards).

Make the data first (about a minute on 2 CPU cores; the shared WARCs plus the 181 benchmark
article pages, read as plain .html.gz pages):

    python -m tools.process_web --input '../shared/data/web_crawl/**/*.gz' \
        --input '../shared/data/html_extraction_benchmark/html/*.html.gz' \
        --output runs/web/tiny --extractor resiliparse --workers 2

then `python -m lm.main --experiment web_tiny`. The run folder can be moved with $LM_WEB_TINY.
"""
from __future__ import annotations

import glob
import os

from lm.config import CheckpointConfig, Config, ModelConfig, OptimConfig, TrainConfig

from experiments import register

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def web_tiny_dir() -> str:
    return os.environ.get("LM_WEB_TINY") or os.path.join(ROOT, "runs", "web", "tiny")


@register("web_tiny", "tiny GPT (2L/128) pretrained on the web pipeline's output shards "
          "(run tools.process_web first; see experiments/web.py)")
def web_tiny() -> Config:
    run_dir = web_tiny_dir()
    shards = os.path.join(run_dir, "shards", "shard_*.npy")
    index = os.path.join(run_dir, "shards", "index.json")
    if not glob.glob(shards) or not os.path.exists(index):
        raise FileNotFoundError(
            f"web_tiny: no pipeline output at {run_dir}/shards (set $LM_WEB_TINY or create it with: "
            f"python -m tools.process_web --input '../shared/data/web_crawl/**/*.gz' --input "
            f"'../shared/data/html_extraction_benchmark/html/*.html.gz' --output {run_dir} "
            f"--extractor resiliparse --workers 2)")
    from lm.data.web.shards import data_config, read_index
    idx = read_index(os.path.dirname(index))
    vocab = -(-idx["vocab_size"] // 128) * 128  # padded to a multiple of 128
    return Config(
        model=ModelConfig(vocab_size=vocab, block_size=128, n_layer=2, n_head=2, n_embd=128, dropout=0.0),
        data=data_config(os.path.dirname(index), seq_len=64, batch_size=8, train_split=0.9),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, schedule="cosine", warmup_steps=20, weight_decay=0.1,
                          grad_clip=1.0),
        train=TrainConfig(steps=120, eval_every=60, eval_batches=8, log_every=20, sample_tokens=32),
        checkpoint=CheckpointConfig(every=120, keep=1),
    )
