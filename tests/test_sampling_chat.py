"""The chat CLI end to end on a tiny saved run: it needs nothing but the run directory, picks its
mode from the run's stage, renders turns with lm.conversation, and shows what the engine wrote."""
import os

import pytest

from lm import chat, runs
from lm import conversation as C
from lm.config import Config, DataConfig, ModelConfig, TrainConfig
from lm.sampling import Engine
from lm.tokenizer import train_bpe, trained_specials

TEXT = ("the quick brown fox jumps over the lazy dog. " * 20
        + "what is two plus three? it is five. " * 20)


def _run(root, name: str, stage: str):
    tok = train_bpe([TEXT], 300 + len(trained_specials()))
    cfg = Config(name=name, stage=stage, init_from="x" if stage != "pretrain" else "",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=2,
                                   n_head=2, n_embd=32),
                 data=DataConfig(tokenizer="/nonexistent/only-in-the-run.json", seq_len=32,
                                 batch_size=2),
                 train=TrainConfig(steps=3))
    return runs.save_run(str(root), cfg, tok, step=3)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("sft"), "world_url_model", "sft")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("base"), "rl_grpo_chat_words", "pretrain")


def test_mode_comes_from_the_stage_not_the_name(sft_dir, base_dir, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", "/nonexistent")    # the run alone is enough
    s, b = runs.load(sft_dir), runs.load(base_dir)
    assert s.step == 3 and s.stage == "sft" and b.stage == "pretrain"
    assert chat.pick_mode("auto", s.stage, s.tokenizer) == "chat"
    assert chat.pick_mode("auto", b.stage, b.tokenizer) == "completion"   # despite its name


def test_chat_session_shows_what_the_engine_wrote(sft_dir):
    run = runs.load(sft_dir)
    tok = run.tokenizer
    sess = chat.Session(run.params, run.config, tok, "chat", temperature=0.0, max_new_tokens=12)
    text = "".join(sess.respond("hi there"))
    # the same prompt through the engine directly: the streamed text is its reply, readable
    prompt = C.render_for_completion({"messages": [{"role": "user", "content": "hi there"}]}, tok)
    eng = Engine(run.params, run.config.model, tokenizer=tok, tools=tok.chat)
    g = eng.generate([prompt], max_new_tokens=12, temperature=0.0, seed=0, sample_ids=[0],
                     stop_tokens=[tok.special_id("<|assistant_end|>"), tok.bos_id])
    ids = g.row(0, strip_stop=True)
    shown = C.TextStream(tok, chat=True)
    assert text == shown.push(ids) + shown.flush() and sess.last_tokens == g.row(0)
    assert sess.messages[0] == {"role": "user", "content": "hi there"}
    assert sess.messages[1]["role"] == "assistant"
    first = list(sess.messages)
    "".join(sess.respond("and again"))                      # the second turn extends the first
    assert sess.messages[:2] == first and len(sess.messages) == 4
    sess.reset()
    assert sess.messages == []


def test_cli_one_shot_prompt(sft_dir, base_dir, capsys):
    assert chat.main(["--run", base_dir, "--prompt", "what is two", "--max_new_tokens", "5",
                      "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    run = runs.load(base_dir)
    sess = chat.Session(run.params, run.config, run.tokenizer, "completion", temperature=0.0,
                        max_new_tokens=5)
    assert out == "".join(sess.respond("what is two")) + "\n"
    assert chat.main(["--checkpoint", os.path.join(sft_dir, "checkpoints"), "--prompt", "hi",
                      "--max_new_tokens", "4", "--seed", "1", "--top_p", "0.9"]) == 0
    assert chat.main(["--run", "/no/such/run", "--prompt", "hi"]) == 2
    assert "not a run directory" in capsys.readouterr().err
