"""The chat CLI end to end on a tiny saved run: restore the checkpoint, render turns with the chat
special tokens, stream an answer, /reset; completion mode."""
import json
import os

import jax
import pytest

from lm import chat, train
from lm.checkpoint import CheckpointManager
from lm.config import Config, DataConfig, ModelConfig, TrainConfig
from lm.optim import make_optimizer
from lm.tokenizer import train_bpe

TEXT = ("the quick brown fox jumps over the lazy dog. " * 20
        + "what is two plus three? it is five. " * 20)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    tok = train_bpe([TEXT], 300)
    tok_path = str(root / "tok.json")
    tok.save(tok_path)
    cfg = Config(name="tiny_sft", model=ModelConfig(vocab_size=tok.vocab_size, block_size=64,
                                                    n_layer=2, n_head=2, n_embd=32),
                 data=DataConfig(tokenizer=tok_path, seq_len=32, batch_size=2),
                 train=TrainConfig(steps=3)).validate()
    with open(root / "config.json", "w") as f:
        f.write(cfg.to_json())
    tx = make_optimizer(cfg.optim, cfg.train.steps)
    state = jax.jit(lambda: train.init_state(cfg, tx, 0))()
    with CheckpointManager(str(root / "checkpoints"), every=1, keep=1) as m:
        m.save(3, state, {"data": {}}, force=True)
    return str(root)


def test_chat_session_renders_turns_and_resets(run_dir):
    cfg = chat.load_config(run_dir)
    tok = chat.load_tokenizer(cfg)
    step, params = chat.load_params(cfg, os.path.join(run_dir, "checkpoints"))
    assert step == 3
    assert chat.pick_mode("auto", cfg, tok) == "chat"      # chat tokens + 'sft' in the name
    sess = chat.Session(params, cfg, tok, "chat", temperature=0.0, max_new_tokens=6)
    text = "".join(sess.respond("hi there"))
    assert isinstance(text, str)
    sid = tok.special_id
    h = sess.history
    assert h[:2] == [tok.bos_id, sid("<|user_start|>")]
    u_end = h.index(sid("<|user_end|>"))
    assert tok.decode(h[2:u_end]) == "hi there"
    assert h[u_end + 1] == sid("<|assistant_start|>") and h[-1] == sid("<|assistant_end|>")
    first = list(h)
    "".join(sess.respond("and again"))                      # the second turn extends the first
    assert sess.history[:len(first)] == first and len(sess.history) > len(first)
    sess.reset()
    assert sess.history == [tok.bos_id]


def test_cli_one_shot_prompt(run_dir, capsys):
    assert chat.main(["--run", run_dir, "--prompt", "what is two", "--mode", "completion",
                      "--max_new_tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n")
    assert chat.main(["--checkpoint", os.path.join(run_dir, "checkpoints"), "--prompt", "hi",
                      "--max_new_tokens", "4", "--seed", "1", "--top_p", "0.9"]) == 0
