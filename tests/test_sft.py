"""SFT: best-fit packing invariants, resumable packing, task graders, held-out splits disjoint
from training, a few SFT steps lowering the masked loss, and init_from errors."""
import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import losses, model, runs, tasks, train
from lm.config import (Config, DataConfig, MeshConfig, ModelConfig, OptimConfig,
                       TrainConfig)
from lm.data.sft import BestFitPacker, SFTBatches, rows_to_batch
from lm.tasks.arithmetic import Arithmetic
from lm.tasks.spelling import Spelling
from lm.tokenizer import train_bpe, trained_specials

TEXT = ("Emily has 3 apples. She buys 2 more. How many apples does Emily have now? "
        "3 + 2 = 5. What is your name? I'm Lumen, a small assistant. ") * 40


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT], 256 + len(trained_specials()) + 100)


# ---- packing -----------------------------------------------------------------------------------

def fake_render(lengths):
    """Item i is a conversation of lengths[i] tokens: [BOS=0, i+1, i+1, ...], mask 0 then 1."""
    def render(i):
        n = lengths[i]
        return [0] + [i + 1] * (n - 1), [0] + [1] * (n - 1)
    return render


def test_best_fit_rows_keep_conversations_whole():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 30, 400).tolist()
    lengths[10] = 50                                          # longer than a row: dropped
    packer = BestFitPacker(fake_render(lengths), 33, buffer=16, pad_id=0)
    seen = []
    for _ in range(60):
        r = packer.row()
        toks, mask, seg, pos = r["tokens"], r["mask"], r["segment_ids"], r["positions"]
        assert toks[0] == 0 and mask[0] == 0                  # rows start with a conversation's BOS
        used = np.arange(33) < r["used"]
        if (~used).any():
            assert (mask[~used] == 0).all() and (toks[~used] == 0).all()
        for s in np.unique(seg[used]):
            where = np.flatnonzero(seg == s)
            assert (np.diff(where) == 1).all()                # contiguous
            item = int(toks[where[1]]) - 1
            assert len(where) == lengths[item]                # whole: never cut
            assert (pos[where] == np.arange(len(where))).all()
            seen.append(item)
    assert len(seen) == len(set(seen))                        # each conversation once
    assert 10 not in seen and packer.stats.dropped_long == 1
    # best fit fills rows well
    assert packer.stats.tokens / (packer.stats.rows * 33) > 0.9


def test_a_stream_where_nothing_fits_is_an_error_not_a_hang(monkeypatch):
    import lm.data.sft as S
    monkeypatch.setattr(S, "MAX_MISSES", 50)
    p = BestFitPacker(fake_render([40] * 1000), row_len=16, buffer=4, pad_id=0)
    with pytest.raises(ValueError, match="longer than a row"):
        p.row()
    assert p.stats.dropped_long == 50


def test_batch_targets_and_weights_are_aligned():
    packer = BestFitPacker(fake_render([5, 7, 4, 9, 3] * 20), 17, buffer=4, pad_id=0)
    b = rows_to_batch([packer.row() for _ in range(4)])
    assert b["inputs"].shape == b["targets"].shape == b["weights"].shape == (4, 16)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    # a target is trained iff it is a conversation's own (non-BOS) token
    assert ((b["weights"] == 1) == ((b["targets"] != 0))).all()


def test_packer_resumes_exactly():
    lengths = np.random.default_rng(1).integers(2, 20, 500).tolist()
    a = BestFitPacker(fake_render(lengths), 25, buffer=8, pad_id=0)
    for _ in range(7):
        a.row()
    state = a.get_state()
    want = [a.row() for _ in range(5)]
    b = BestFitPacker(fake_render(lengths), 25, buffer=8, pad_id=0)
    b.set_state(state)
    for w, g in zip(want, [b.row() for _ in range(5)]):
        for k in w:
            np.testing.assert_array_equal(w[k], g[k])


def test_an_all_padding_batch_gives_zero_loss_and_no_nan():
    cfg = ModelConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=16)
    params = model.init(cfg, jax.random.key(0))
    x = jnp.zeros((2, 16), jnp.int32)

    def loss(p):
        return losses.cross_entropy(model.apply(p, cfg, x), x, jnp.zeros((2, 16)))[0]
    val, g = jax.value_and_grad(loss)(params)
    assert float(val) == 0.0
    assert all(np.isfinite(np.asarray(a)).all() and float(jnp.abs(a).max()) == 0
               for a in jax.tree.leaves(g))


def test_sft_batches_from_real_tasks(tok):
    b = SFTBatches(tok, {"identity": 1, "arithmetic_easy": 2}, split="train", seq_len=255,
                   batch_size=4, buffer=16, seed=0)
    batch = next(b)
    assert batch["inputs"].shape == (4, 255)
    assert (batch["inputs"][:, 0] == tok.bos_id).all()
    assert 0 < batch["weights"].mean() < 1
    assert b.packer.stats.by_task.keys() == {"identity", "arithmetic_easy"}
    # the trained targets include <|assistant_end|> and never <|assistant_start|> or BOS
    tw = batch["targets"][batch["weights"] > 0]
    assert tok.special_id("<|assistant_end|>") in tw
    assert tok.special_id("<|assistant_start|>") not in tw and tok.bos_id not in tw


# ---- tasks: graders and held-out splits -------------------------------------------------------

def test_graders_on_right_and_wrong_replies():
    ar = Arithmetic("arithmetic_easy")
    conv = ar.example("test", 3)
    ans = conv["answer"]
    assert ar.evaluate(conv, f"blah <<1+1=2>> ... \n#### {ans}")
    assert ar.evaluate(conv, f"#### {int(ans):,}")
    assert not ar.evaluate(conv, f"the answer is {ans}")          # no #### marker
    assert not ar.evaluate(conv, f"#### {int(ans) + 1}")
    sp = Spelling(words=["strawberry", "banana", "apple", "kitten"] * 3)
    c = next(sp.example("train", i) for i in range(100) if sp.example("train", i)["word"]
             == "strawberry" and sp.example("train", i)["letter"] == "r")
    assert c["answer"] == "3"
    assert sp.evaluate(c, "s-t-r-a-w-b-e-r-r-y <<'strawberry'.count('r')=3>>\n#### 3")
    assert not sp.evaluate(c, "#### 2")
    idt = tasks.get("identity")
    c = next(idt.example("test", i) for i in range(200) if idt.example("test", i)["topic"] == "name")
    assert idt.evaluate(c, "Hi, I'm Lumen!") and not idt.evaluate(c, "I am ChatGPT.")
    c = next(idt.example("test", i) for i in range(200) if idt.example("test", i)["topic"] == "what")
    assert idt.evaluate(c, "I'm an AI.") and not idt.evaluate(c, "I said hello again.")  # words
    mc = {"letters": ["A", "B", "C", "D"], "gold": "C"}
    from lm.tasks.multiple_choice import MultipleChoice
    assert MultipleChoice().evaluate(mc, "C") and not MultipleChoice().evaluate(mc, "B")


def test_generated_held_out_splits_are_disjoint_from_training():
    for level in ("arithmetic_easy", "arithmetic", "arithmetic_hard"):
        t = Arithmetic(level)
        train_q = {t.example("train", i)["messages"][0]["content"] for i in range(300)}
        test_q = {t.example("test", i)["messages"][0]["content"] for i in range(300)}
        assert not train_q & test_q
    # different templates, not just new numbers: openings and questions have phrasings of their
    # own in each split, so every held-out problem starts and ends in a frame training never shows
    from lm.tasks import arithmetic as A
    framed = (A.START, A.MUL_START, A.ASK_NOW, A.ASK_LEFT, A.ASK_EACH)
    for pool in framed:
        a, b, c = (set(pool[k]) for k in ("train", "rl", "test"))
        assert b and c and not (a & b or a & c or b & c)

    slot = {"n1": "[A-Z][a-z]+", "n2": "[A-Z][a-z]+", "He": "(?:He|She)", "him": "(?:him|her)",
            "a": r"\d+", "b": r"\d+", "x": r"\d+", "it": "[a-z]+(?: [a-z]+)?",
            "box": "[a-z]+", "boxes": "[a-z]+"}

    def frame(template):   # a template as a regex: its fixed words, each slot's kind of value
        return re.compile("^" + re.sub(r"\\\{(\w+)\\\}", lambda m: slot[m.group(1)],
                                       re.escape(template)) + "$")
    assert frame(A.START["train"][0]).match("Emily has 3 toy cars.")
    train_open = [frame(f) for f in A.START["train"] + A.MUL_START["train"]]
    train_ask = [frame(f) for p in framed[2:] for f in p["train"]]
    rl_open = [frame(f) for f in A.START["rl"] + A.MUL_START["rl"]]
    rl_ask = [frame(f) for p in framed[2:] for f in p["rl"]]
    for level in ("arithmetic_easy", "arithmetic_hard"):
        t = Arithmetic(level)
        for i in range(200):
            sents = re.split(r"(?<=[.?]) ", t.example("test", i)["messages"][0]["content"])
            assert not any(f.match(sents[0]) for f in train_open + rl_open), sents[0]
            assert not any(f.match(sents[-1]) for f in train_ask + rl_ask), sents[-1]
            sents = re.split(r"(?<=[.?]) ", t.example("rl", i)["messages"][0]["content"])
            assert any(f.match(sents[0]) for f in rl_open), sents[0]
            assert not any(f.match(sents[0]) for f in train_open), sents[0]
            sents = re.split(r"(?<=[.?]) ", t.example("train", i)["messages"][0]["content"])
            assert any(f.match(sents[0]) for f in train_open), sents[0]      # the regexes work
            assert any(f.match(sents[-1]) for f in train_ask), sents[-1]
    idt = tasks.get("identity")
    tr = {idt.example("train", i)["messages"][0]["content"].lower().rstrip("?!.") for i in range(500)}
    te = {idt.example("test", i)["messages"][0]["content"].lower().rstrip("?!.") for i in range(500)}
    assert not tr & te
    sp = Spelling(words=[f"word{c}{d}" for c in "abcdefghij" for d in "klmnopqrst"])
    assert not set(sp.words["train"]) & set(sp.words["test"]) and sp.words["test"]


def test_data_held_out_splits_are_disjoint(data_env):
    for name in ("gsm8k", "dolly", "alpaca"):
        t = tasks.get(name)
        key = lambda c: c["messages"][0]["content"]
        train_q = {key(t.example("train", i)) for i in range(t.size("train"))}
        test_q = {key(t.example("test", i)) for i in range(t.size("test"))}
        assert test_q and not train_q & test_q, name
    mmlu = tasks.get("mmlu")
    assert mmlu.size("train") == 285 and mmlu.size("test") == 1531
    sp = tasks.get("spelling")
    assert not set(sp.words["train"]) & set(sp.words["test"])


def test_gsm8k_annotations_become_calculator_calls(data_env):
    g = tasks.get("gsm8k")
    parts = g.example("train", 0)["messages"][1]["content"]
    calls = [p["text"] for p in parts if p["type"] == "python"]
    outs = [p["text"] for p in parts if p["type"] == "output"]
    assert calls == ["48/2", "48+24"] and outs == ["24", "72"]
    assert g.example("train", 0)["answer"] == "72"


# ---- a few SFT steps, init_from ---------------------------------------------------------------

def tiny_sft_cfg(parent: str, tok_vocab: int) -> Config:
    return Config(name="tiny_sft", stage="sft", init_from=parent,
                  model=ModelConfig(vocab_size=tok_vocab, block_size=128, n_layer=1, n_head=2,
                                    n_embd=32),
                  data=DataConfig(tokenizer="parent", seq_len=127, batch_size=4),
                  optim=OptimConfig(lr=3e-3, warmup_steps=0, schedule="constant", min_lr=0),
                  train=TrainConfig(steps=12, eval_every=6, log_every=1, sample_tokens=0),
                  mesh=MeshConfig(data=1))


@pytest.fixture(scope="module")
def parent_run(tok, tmp_path_factory):
    """A 'base' run: a fresh tiny model saved as a run directory with the BPE tokenizer."""
    root = str(tmp_path_factory.mktemp("parent"))
    cfg = Config(name="tiny_base", model=ModelConfig(vocab_size=tok.vocab_size, block_size=128,
                                                     n_layer=1, n_head=2, n_embd=32),
                 data=DataConfig(tokenizer=os.path.join(root, "tokenizer.json"), seq_len=64,
                                 batch_size=2))
    return runs.save_run(root, cfg, tok, step=1)


def test_sft_steps_lower_the_masked_loss(parent_run, tok, tmp_path):
    cfg = tiny_sft_cfg(parent_run, tok.vocab_size)
    cfg.sft.mixture = "identity:1,arithmetic_easy:1"
    cfg.sft.val_rows = 8
    cfg.validate()
    out = train.run(cfg, run_dir=str(tmp_path / "sft"), progress=False)
    from lm.logs import read_metrics
    rows = read_metrics(str(tmp_path / "sft" / "metrics.jsonl"))
    loss = [r["loss"] for r in rows if "loss" in r]
    val = [r["val_loss"] for r in rows if "val_loss" in r]
    assert loss[-1] < loss[0] and val[-1] < val[0]
    assert out["parent"]["run_dir"] == parent_run
    assert runs.lineage(str(tmp_path / "sft"))[0]["run_dir"] == parent_run
    # the run directory is self-contained: its tokenizer is in it, and it loads as an sft run
    r = runs.load(str(tmp_path / "sft"))
    assert r.stage == "sft" and r.tokenizer.same_as(tok) and r.step == 12


def test_init_from_errors(parent_run, tok, tmp_path):
    cfg = tiny_sft_cfg(str(tmp_path / "nowhere"), tok.vocab_size)
    with pytest.raises(runs.RunError, match="nowhere"):
        train.run(cfg, run_dir=str(tmp_path / "a"), progress=False)
    assert not os.path.exists(tmp_path / "a")                    # a failed start leaves nothing
    cfg = tiny_sft_cfg(parent_run, tok.vocab_size)
    cfg.model = dataclasses.replace(cfg.model, n_embd=48)
    with pytest.raises(runs.RunError, match=r"model.n_embd: parent 32, this run 48"):
        train.run(cfg, run_dir=str(tmp_path / "b"), progress=False)
    cfg = tiny_sft_cfg(parent_run, tok.vocab_size)
    other = str(tmp_path / "other.json")
    train_bpe(["something else entirely " * 50], 256 + len(trained_specials()) + 20).save(other)
    cfg.data.tokenizer = other
    with pytest.raises(runs.RunError, match="not the parent's tokenizer"):
        train.run(cfg, run_dir=str(tmp_path / "c"), progress=False)
    with pytest.raises(runs.RunError, match="not a run directory"):
        runs.resolve("no_such_experiment_or_dir")
    with pytest.raises(ValueError, match="starts from a parent run"):
        train.run(Config(stage="sft"), run_dir=str(tmp_path / "d"), progress=False)
    assert not os.path.exists(tmp_path / "d")


def test_identity_frames_times_cores_never_produce_a_held_out_phrasing(tmp_path):
    from lm.tasks.identity import Identity
    spec = {"name": "N", "maker": "M", "home": "H", "frames": ["Tell me {q}.", "Can you say {q}?"],
            "topics": [{"topic": "maker", "keywords": ["M"], "train": ["Who made you?"],
                        "test": ["tell me, WHO made you"], "answers": ["{maker}."],
                        "cores": ["who built you", "who made you"]}]}
    path = tmp_path / "identity.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="'Tell me who made you.' is also a held-out"):
        Identity(path=str(path)).spec
    spec["topics"][0]["cores"] = ["who built you"]
    path.write_text(json.dumps(spec))
    train = Identity(path=str(path)).spec["topics"][0]["train"]
    assert train == ["Who made you?", "Tell me who built you.", "Can you say who built you?"]
