"""The evaluation harness: likelihood scoring on hand-made items with a model of fixed (bigram)
logits, acc vs acc_norm where they differ, lm-eval's request encoding, bucketing without
recompilation, chat grading, bits per byte, and item-by-item parity with lm-evaluation-harness."""
import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import model
from lm.config import modern
from lm.eval import benchmarks
from lm.eval.likelihood import loglikelihood
from lm.tokenizer import CharTokenizer

CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz .:?\n"))
V = 64
BIGRAM = dataclasses.replace(modern(vocab_size=V, block_size=64, n_layer=1, n_head=4, n_embd=V,
                                    mlp="relu2"), logit_softcap=0.0, qk_norm=False,
                             kernels="plain")


def bigram_params(table: np.ndarray):
    """A model whose logits at a position are `table[token]`: attention and MLP outputs zeroed,
    one-hot embeddings, the (unnormalised) table as the LM head."""
    p = model.init(BIGRAM, jax.random.key(0))
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "c_proj" in jax.tree_util.keystr(path) else x, p)
    p["wte"] = jnp.eye(V) * 8.0          # RMSNorm of a one-hot row: sqrt(V) at the token
    p["lm_head"]["kernel"] = jnp.asarray(table, jnp.float32) / np.sqrt(V)
    return p


class Tok(CharTokenizer):
    bos_id = len(CHARS)

    def __init__(self):
        super().__init__(CHARS)


def test_loglikelihood_is_the_sum_of_the_table_on_hand_made_requests():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(V, V)) * 2
    params = bigram_params(table)
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    reqs = [([1, 2, 3], [4, 5]), ([7], [7, 7, 7, 1]), ([9, 8], [2])]
    got = loglikelihood(params, BIGRAM, reqs, batch_size=2)
    for (ctx, cont), (ll, greedy) in zip(reqs, got):
        seq = ctx + cont
        want = sum(logp[seq[i - 1], seq[i]] for i in range(len(ctx), len(seq)))
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == all(np.argmax(table[seq[i - 1]]) == seq[i]
                             for i in range(len(ctx), len(seq)))


def test_acc_and_acc_norm_differ_where_length_matters():
    # choice 0 is short and likely in total, choice 1 longer with a higher per-character score
    its = [benchmarks.Item("q", ["ab", "abcdefgh"], gold=1)]
    r = benchmarks.score(its, [-2.0, -4.0])
    assert r["pred"] == [0] and r["pred_norm"] == [1]
    assert r["acc"] == 0.0 and r["acc_norm"] == 1.0


def test_requests_are_encoded_as_lm_eval_encodes_them():
    tok = Tok()
    ctx, cont = benchmarks.encode_pair(tok, "what is it: ", "a cat")
    # the context's trailing space moves to the continuation; BOS starts the context
    assert ctx == [tok.bos_id] + tok.encode("what is it:")
    assert cont == tok.encode(" a cat")
    assert benchmarks.preprocess(" A man [title] is here.  Then [step] he goes ") == \
        "A man. is here. Then he goes"


def test_scoring_buckets_lengths_and_compiles_once_per_bucket(caplog):
    params = bigram_params(np.random.default_rng(1).normal(size=(V, V)))
    reqs = [([1] * n, [2, 3]) for n in range(1, 40)]
    loglikelihood(params, BIGRAM, reqs[:2], batch_size=8)           # compile the bucket
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        loglikelihood(params, BIGRAM, reqs, batch_size=8)
    assert not [r for r in caplog.records if "_token_logprobs" in r.getMessage()]


def test_benchmark_items_follow_lm_eval_formats(data_env):
    arc = benchmarks.items("arc_easy")
    assert arc[0].context.startswith("Question: ") and arc[0].context.endswith("\nAnswer:")
    assert len(arc) == 2376
    m0 = benchmarks.items("mmlu")[0]
    assert m0.context.startswith("The following are multiple choice questions (with answers) "
                                 "about abstract algebra.\n\n")
    assert m0.context.endswith("\nD. 6\nAnswer:") and m0.choices == ["A", "B", "C", "D"]
    m5 = benchmarks.items("mmlu_5shot")[0]
    assert m5.context.count("\nAnswer:") == 6 and len(benchmarks.items("mmlu")) == 1531
    hs = benchmarks.items("hellaswag")
    assert len(hs) == 10042 and hs[0].context.startswith("Roof shingle removal: ")


def test_bits_per_byte_of_a_known_model(data_env):
    """A uniform model over V ids costs log2(V) bits per token: 1 byte per char token."""
    from lm.eval import bpb
    params = bigram_params(np.zeros((V, V)))
    tok = Tok()
    stream = bpb.stream(tok, ["hello world. what is this?"])
    from lm.eval.likelihood import text_nats
    nats, nbytes, count = text_nats(params, BIGRAM, stream, np.array(
        [1] * len(CHARS) + [0] * (V - len(CHARS))), batch_size=2)
    assert count == len("hello world. what is this?")
    assert nats / (math.log(2) * nbytes) == pytest.approx(math.log2(V), rel=1e-5)


def test_parity_with_lm_evaluation_harness(data_env, tmp_path):
    """Item by item against lm-eval on a small random Qwen3-compatible model: the same
    predictions (acc and acc_norm) on at least 99% of items, accuracies within 0.5 points."""
    pytest.importorskip("lm_eval", reason="lm-eval (requirements-eval.txt) is not installed")
    pytest.importorskip("transformers", reason="pip install -r requirements-eval.txt")
    from lm.config import Config, DataConfig
    from lm.eval import parity
    from lm.tokenizer import BPETokenizer
    tok = BPETokenizer.gpt2()
    m = dataclasses.replace(modern(vocab_size=50304, block_size=512, n_layer=2, n_head=4,
                                   n_kv_head=2, n_embd=64, mlp="swiglu"), logit_softcap=0.0)
    cfg = Config(model=m, data=DataConfig(seq_len=64)).validate()
    params = model.init(m, jax.random.key(0))
    res = parity.run(params, cfg, tok, tasks=("arc_easy", "hellaswag", "mmlu"), limit=40,
                     batch_size=8, hf_dir=str(tmp_path / "hf"))
    for task, r in res.items():
        assert r["items"] == 40
        assert r["agreement"] >= 0.99, (task, r)
        assert abs(r["acc_ours"] - r["acc_ref"]) <= 0.005 and \
            abs(r["acc_norm_ours"] - r["acc_norm_ref"]) <= 0.005, (task, r)
        assert r["max_abs_ll_diff"] < 1e-2


def test_report_chain_reads_runs_and_plots_only_task_accuracies(tmp_path):
    import json
    from lm import report
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 10, "loss": 2.0}, {"step": 10, "final": True, "eval/spelling": 0.5,
            "eval/spelling_n": 200, "eval/format": 0.9, "val_loss": 1.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({"likelihood": {"arc_easy": {"acc": 0.3,
                                   "acc_norm": 0.35}}, "chat": {}, "bpb": {}}))
    ev = report.final_evals(str(run))
    assert ev == {"eval/spelling": 0.5, "eval/format": 0.9, "val_loss": 1.5,
                  "lm_eval/arc_easy/acc": 0.3, "lm_eval/arc_easy/acc_norm": 0.35}
    # aggregates alone (format, chatcore: means over each run's own tasks) make no chart
    assert not report.plot_chain([("sft", {"eval/format": 0.9, "eval/chatcore": 0.3})],
                                 str(tmp_path / "none.png"))
    assert report.plot_chain([("base", {"val_loss": 3.0}), ("sft", ev)], str(tmp_path / "c.png"))
    assert (tmp_path / "c.png").stat().st_size > 1000 and not (tmp_path / "none.png").exists()
