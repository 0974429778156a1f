"""Preference data (HH-RLHF and JSONL pairs), the DPO / IPO loss, the `dpo` stage end to end on a
tiny model, and parity with trl's own DPOTrainer loss on the same model and pairs."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model
from lm.config import (CheckpointConfig, Config, ConfigError, DataConfig, EvalConfig, MeshConfig,
                       ModelConfig, OptimConfig, PrefConfig, TrainConfig, modern)
from lm.data import preferences as P
from lm.rl.loss import preference_loss
from lm.tokenizer import train_bpe, trained_specials

TEXT = "Hello there, how are you? I am fine. The cat sat on the mat. 12 + 30 = 42.\n" * 40


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT], 256 + len(trained_specials()) + 100)


def hh(*turns):
    return "".join(f"\n\n{r}: {t}" for r, t in turns)


PAIRS = [P.Pair([{"role": "user", "content": "How are you?"}], "I am fine.", "The cat sat."),
         P.Pair([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                 {"role": "user", "content": "12 + 30?"}], "42.", "The mat, the mat."),
         P.Pair([{"role": "user", "content": "cat?"}], "The cat sat on the mat.", "No")]


def test_hh_records_parse_and_malformed_ones_are_named():
    good = P.hh_pair({"chosen": hh(("Human", "Hi"), ("Assistant", "Hello"), ("Human", "Why?"),
                                   ("Assistant", "Because.")),
                      "rejected": hh(("Human", "Hi"), ("Assistant", "Hello"), ("Human", "Why?"),
                                     ("Assistant", "No idea."))})
    assert [m["role"] for m in good.messages] == ["user", "assistant", "user"]
    assert (good.chosen, good.rejected) == ("Because.", "No idea.")
    bad = {"missing side": {"chosen": hh(("Human", "a"), ("Assistant", "b"))},
           "identical sides": {"chosen": hh(("Human", "a"), ("Assistant", "b")),
                               "rejected": hh(("Human", "a"), ("Assistant", "b"))},
           "empty side": {"chosen": hh(("Human", "a"), ("Assistant", "b")),
                          "rejected": hh(("Human", "a"), ("Assistant", ""))},
           "sides differ before the last reply": {
               "chosen": hh(("Human", "a"), ("Assistant", "b")),
               "rejected": hh(("Human", "x"), ("Assistant", "c"))},
           "turns do not alternate": {
               "chosen": hh(("Human", "a"), ("Human", "a2"), ("Assistant", "b")),
               "rejected": hh(("Human", "a"), ("Human", "a2"), ("Assistant", "c"))},
           "does not end with a reply": {"chosen": hh(("Human", "a"), ("Assistant", "b"),
                                                      ("Human", "c")),
                                         "rejected": hh(("Human", "a"), ("Assistant", "d"))}}
    for why, rec in bad.items():
        with pytest.raises(P.PreferenceError, match=why):
            P.hh_pair(rec)


def test_hh_rlhf_files_split_and_counts(data_env):
    pairs, stats = P.hh_rlhf()
    assert stats.read == 8552 and stats.kept == len(pairs) > 8400
    assert stats.skipped["identical sides"] > 0 and "skipped: " in stats.summary()
    train, test = P.split(pairs, "train"), P.split(pairs, "test")
    assert len(train) + len(test) == len(pairs) and 0.07 < len(test) / len(pairs) < 0.13
    assert not {p.key for p in train} & {p.key for p in test}
    assert {p.source for p in pairs} == set(P.HH_SUBSETS)


def test_jsonl_pairs_and_bad_records_counted(tmp_path):
    f = tmp_path / "pairs.jsonl"
    good = {"messages": [{"role": "user", "content": "Hi"}], "chosen": "Hello!", "rejected": "Go."}
    lines = [good, {**good, "rejected": "Hello!"}, {**good, "chosen": ""},
             {"messages": [{"role": "user", "content": "Hi"}], "chosen": "a"},
             {**good, "messages": [{"role": "assistant", "content": "x"}]}]
    f.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    pairs, stats = P.load(f"jsonl:{f}")
    assert len(pairs) == 1 and stats.read == 6 and sum(stats.skipped.values()) == 5
    for why in ("identical sides", "empty side", "missing side", "not JSON"):
        assert stats.skipped[why] == 1, why
    with pytest.raises(P.PreferenceError, match="known sources"):
        P.load("nope")
    with pytest.raises(P.PreferenceError, match="No such file"):
        P.load(f"jsonl:{tmp_path / 'absent.jsonl'}")


def test_rows_score_only_the_final_reply(tok):
    stats = P.PairStats()
    items = P.encode(PAIRS, tok, 127, stats)
    assert len(items) == 3
    b = P.to_rows(items, 127)
    assert b["inputs"].shape == (6, 127)
    for j, (pair, side) in enumerate((p, s) for p in PAIRS for s in (p.chosen, p.rejected)):
        scored = b["targets"][j][b["weights"][j] > 0].tolist()
        assert tok.decode(scored) == side + "<|assistant_end|>"
    # a pair longer than the row is counted and skipped, never cut
    long = P.Pair([{"role": "user", "content": "cat " * 200}], "a", "b")
    assert P.encode([long], tok, 127, stats) == [] and stats.skipped["longer than 127 tokens"]


def test_preference_loss_values_and_gradient():
    ref = jnp.array([-10.0, -12.0, -5.0, -6.0])
    loss, m = preference_loss(ref, ref, jnp.ones(4), 0.1)          # policy = reference
    assert abs(float(loss) - np.log(2)) < 1e-6 and float(m["pref/margin"]) == 0.0
    logp = jnp.array([-9.0, -13.0, -5.0, -6.0])                     # pair 0 ranked right
    loss, m = preference_loss(logp, ref, jnp.ones(4), 0.5)
    want = np.mean([-np.log(1 / (1 + np.exp(-0.5 * 2.0))), np.log(2)])
    assert abs(float(loss) - want) < 1e-6 and float(m["pref/accuracy"]) == 0.5
    g = jax.grad(lambda x: preference_loss(x, ref, jnp.ones(4), 0.1)[0])(ref)
    assert g[0] < 0 < g[1] and g[2] < 0 < g[3]     # descent raises chosen, lowers rejected
    ipo, _ = preference_loss(logp, ref, jnp.array([2.0, 4.0, 1.0, 1.0]), 0.1, "ipo")
    want = np.mean([(1 / 2 - (-1) / 4 - 5.0) ** 2, 25.0])
    assert abs(float(ipo) - want) < 1e-4


def _tiny_sft_parent(root, tok):
    from lm import runs
    cfg = Config(name="tiny_sft", stage="sft", init_from="x",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1,
                                   n_head=2, n_embd=32), data=DataConfig(tokenizer="parent"))
    return runs.save_run(root, cfg, tok)


def _dpo_cfg(parent, tok, data, **kw):
    return Config(name="tiny_dpo", stage="dpo", init_from=parent,
                  model=ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=1,
                                    n_head=2, n_embd=32),
                  data=DataConfig(tokenizer="parent", seq_len=127, batch_size=4),
                  optim=OptimConfig(lr=1e-2, min_lr=1e-2, schedule="constant", warmup_steps=0),
                  pref=PrefConfig(data=data, beta=0.5, val_pairs=8),
                  eval=EvalConfig(tasks=""), mesh=MeshConfig(data=1),
                  train=TrainConfig(steps=12, eval_every=6, log_every=1, sample_tokens=0, **kw),
                  checkpoint=CheckpointConfig(every=6)).validate()


def test_dpo_stage_learns_the_preference_and_resumes(tok, tmp_path):
    from lm import runs, train
    from lm.logs import read_metrics
    f = tmp_path / "pairs.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say something {i}"}],
             "chosen": "I am fine.", "rejected": "The cat sat on the mat."} for i in range(40)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    parent = _tiny_sft_parent(str(tmp_path / "parent"), tok)
    cfg = _dpo_cfg(parent, tok, f"jsonl:{f}")
    train.run(cfg, run_dir=str(tmp_path / "r"), progress=False)
    m = read_metrics(str(tmp_path / "r" / "metrics.jsonl"))
    steps = [r for r in m if "loss" in r]
    assert len(steps) == 12 and all("pref/margin" in r for r in steps)
    assert steps[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)     # starts at the reference
    evals = [r for r in m if "val/accuracy" in r]
    assert [r["step"] for r in evals] == [6, 12]
    assert evals[-1]["val/accuracy"] == 1.0 and evals[-1]["val/margin"] > 0.5
    assert evals[-1]["val/loss"] < 0.5 * np.log(2)
    run = runs.load(str(tmp_path / "r"))
    assert run.stage == "dpo"
    # resumed from step 6, it makes the same steps 7-12
    import shutil
    shutil.copytree(tmp_path / "r", tmp_path / "r2")
    shutil.rmtree(tmp_path / "r2" / "checkpoints" / "12")
    train.run(cfg, run_dir=str(tmp_path / "r2"), resume=True, progress=False)
    again = [r for r in read_metrics(str(tmp_path / "r2" / "metrics.jsonl")) if "loss" in r]
    assert [r["loss"] for r in again[-6:]] == pytest.approx([r["loss"] for r in steps[6:]],
                                                           abs=1e-6)


def test_dpo_config_errors(tok, tmp_path):
    from lm import runs, stages
    parent = runs.load(_tiny_sft_parent(str(tmp_path / "parent"), tok))
    with pytest.raises(ConfigError, match="even"):
        cfg = _dpo_cfg(str(tmp_path / "parent"), tok, "hh_rlhf")
        cfg.data.batch_size = 3
        stages.build(cfg, parent.tokenizer, parent)
    with pytest.raises(ConfigError, match="known sources"):
        stages.build(_dpo_cfg(str(tmp_path / "parent"), tok, "pairs.json"), parent.tokenizer,
                     parent)


def _noisy(cfg, seed, scale=0.1):
    """Random parameters a little away from init (non-trivial log-ratios, moderate logits)."""
    p = model.init(cfg, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("kind", ["sigmoid", "ipo"])
def test_dpo_loss_matches_trl(tok, kind):
    pytest.importorskip("trl", reason="trl: pip install -r requirements-bench.txt")
    from tools import rlhf_parity
    mc = dataclasses.replace(modern(vocab_size=tok.vocab_size, block_size=128, n_layer=2,
                                    n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu",
                                    mlp_hidden=96), logit_softcap=0.0, tie_embeddings=True)
    cfg = Config(model=mc, data=DataConfig(seq_len=128)).validate()
    items = P.encode(PAIRS, tok, 127)
    out = rlhf_parity.compare(_noisy(mc, 0), _noisy(mc, 5), cfg, tok, items, 0.1, kind)
    # the losses differ from ln 2 / (1/2β)² by far more than the tolerance: the check can fail
    base = np.log(2) if kind == "sigmoid" else 25.0
    assert abs(out["ours"] - base) > 5e-3
    assert out["max_abs_diff"] <= 1e-4, out


def _pairs_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say something {i}"}],
             "chosen": "I am fine.", "rejected": "The cat sat on the mat."} for i in range(40)]
    f.write_text("\n".join(json.dumps(r) for r in rows))
    return f


def run_pairs_held_out(cfg, run):
    from lm.data import preferences
    pairs, _ = preferences.load(cfg.pref.data, cfg.pref.pairs, cfg.pref.noise)
    held = preferences.encode(preferences.split(pairs, "test"), run.tokenizer,
                              cfg.data.seq_len - 1)
    return held[:cfg.pref.val_pairs]


def test_reward_model_stage_learns_loads_and_refuses_to_generate(tok, tmp_path):
    from lm import runs, sampling, train
    from lm.logs import read_metrics
    parent = _tiny_sft_parent(str(tmp_path / "parent"), tok)
    cfg = _dpo_cfg(parent, tok, f"jsonl:{_pairs_file(tmp_path)}")
    cfg.stage, cfg.model.head = "rm", "score"
    cfg.optim.lr = cfg.optim.min_lr = 3e-3
    train.run(cfg.validate(), run_dir=str(tmp_path / "rm"), progress=False)
    m = read_metrics(str(tmp_path / "rm" / "metrics.jsonl"))
    steps = [r for r in m if "loss" in r]
    assert len(steps) == 12 and all("rm/accuracy" in r for r in steps)
    final = [r for r in m if "val/accuracy" in r][-1]
    assert final["val/accuracy"] == 1.0 and final["val/margin"] > 0.5
    assert final["val/length_baseline"] == 0.0       # the chosen reply is the shorter one here
    # the report card plots the held-out accuracy curve
    from lm import report
    assert "pair_accuracy.png" in open(report.write(str(tmp_path / "rm"))).read()
    assert (tmp_path / "rm" / "pair_accuracy.png").stat().st_size > 1000
    run = runs.load(str(tmp_path / "rm"))
    # tools.rm_breakdown rebuilds the same held-out pairs and ranks them as the stage did
    from tools import rm_breakdown
    res = rm_breakdown.breakdown(run)
    assert res["pairs"] == len(run_pairs_held_out(cfg, run)) and res["accuracy"] == 1.0
    assert rm_breakdown.kind("arithmetic_easy:wrong>reference") == \
        "arithmetic_easy: reference vs wrong"
    p = runs.load(parent)
    # the body is the parent's (trained on from there), the head is new
    assert set(run.params) == set(p.params) | {"score"}
    with pytest.raises(ValueError, match="does not generate"):
        sampling.Engine(run.params, run.config.model)
    # without the scalar head the stage says what to set
    bad = _dpo_cfg(parent, tok, f"jsonl:{_pairs_file(tmp_path)}")
    bad.stage = "rm"
    from lm import stages
    with pytest.raises(ConfigError, match="model.head=score"):
        stages.build(bad.validate(), p.tokenizer, p)


def test_reward_model_loss_matches_trl(tok):
    pytest.importorskip("trl", reason="trl: pip install -r requirements-bench.txt")
    from tools import rlhf_parity
    mc = dataclasses.replace(modern(vocab_size=tok.vocab_size, block_size=128, n_layer=2,
                                    n_head=4, n_kv_head=2, n_embd=32, mlp="swiglu",
                                    mlp_hidden=96), logit_softcap=0.0, tie_embeddings=True,
                             head="score")
    cfg = Config(model=mc, data=DataConfig(seq_len=128)).validate()
    items = P.encode(PAIRS, tok, 127)
    out = rlhf_parity.compare_rm(_noisy(mc, 0), cfg, tok, items)
    assert abs(out["ours"] - np.log(2)) > 5e-3 and out["max_abs_diff"] <= 1e-4, out


def test_labeller_true_reward_orders_the_variants_and_noise_flips_labels():
    import random
    from lm import tasks
    from lm.rl import labeller
    rng = random.Random(0)
    off = []
    for name in ("arithmetic_easy", "word_problems"):
        task = tasks.get(name)
        for i in range(20):
            conv = task.example("train", i)
            other = task.example("train", 10_000 + i)
            r = {k: labeller.true_reward(task, conv, labeller.variant(k, task, conv, rng, other))
                 for k in labeller.VARIANTS}
            assert r["reference"] == pytest.approx(1.2), (name, i)
            assert r["wrong"] < r["reference"] and r["rambling"] < r["reference"]
            assert r["off_topic"] <= r["reference"] and r["polite"] == r["reference"]
            off.append(r["off_topic"])
    assert np.mean(off) < 0.5       # another question's reply is rarely right here (by chance)

    def flipped(noise):
        recs = labeller.pairs(["arithmetic_easy"], 300, seed=1, noise=noise)
        task = tasks.get("arithmetic_easy")
        bad = 0
        for rec in recs:
            conv = {"messages": rec["messages"] + [{"role": "assistant", "content": None}],
                    "answer": rec["answer"]}
            conv["messages"][-1]["content"] = rec["chosen"]     # only the grader reads it
            # compare against the reference-free rules: correct + on topic
            c = labeller.true_reward(task, {**conv, "messages": conv["messages"][:-1]},
                                     rec["chosen"])
            r = labeller.true_reward(task, {**conv, "messages": conv["messages"][:-1]},
                                     rec["rejected"])
            bad += c < r
        return bad / len(recs)
    assert flipped(0.0) < 0.05 and 0.2 < flipped(0.3) < 0.45


def test_labeller_pairs_as_a_preference_source():
    pairs, stats = P.load("labeller:arithmetic_easy+word_problems", 200, 0.1)
    assert len(pairs) == stats.kept == 200 and {p.source.split(":")[0] for p in pairs} == {
        "arithmetic_easy", "word_problems"}
    # the source names the variants, chosen first: held-out (noise-free) pairs keep the order
    from lm.rl.labeller import VARIANTS
    for p in P.split(pairs, "test"):
        c, r = p.source.split(":")[1].split(">")
        assert {c, r} <= set(VARIANTS) and (c, r) not in {("wrong", "reference"),
                                                          ("rambling", "reference")}
    assert all(p.chosen != p.rejected for p in pairs)
    # held-out pairs carry the true order (no label noise), training pairs the noisy one
    noisy, _ = P.load("labeller:arithmetic_easy+word_problems", 200, 0.5)
    test, train = P.split(pairs, "test"), P.split(noisy, "train")
    assert {p.key for p in P.split(noisy, "test")} == {p.key for p in test}
    assert [(p.chosen, p.rejected) for p in P.split(noisy, "test")] == \
        [(p.chosen, p.rejected) for p in test]
    flips = sum((a.chosen, a.rejected) != (b.chosen, b.rejected)
                for a, b in zip(P.split(pairs, "train"), train))
    assert 0.3 * len(train) < flips < 0.7 * len(train)
    with pytest.raises(P.PreferenceError, match="unknown tasks"):
        P.load("labeller:nope")
