"""The evaluation harness: likelihood scoring on hand-made items with a model of fixed (bigram)
logits, acc vs acc_norm where they differ, lm-eval's request encoding, bucketing without
recompilation, chat grading, bits per byte, item-by-item parity with lm-evaluation-harness, and
the unbiased pass@k estimator with its CLI's and plot tool's input checks."""
import dataclasses
import itertools
import json
import logging
import math
import os
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import conversation as chat
from lm import model
from lm.config import ModelConfig, modern
from lm.eval import benchmarks, suite
from lm.eval.__main__ import main as eval_main
from lm.eval.chat import (GENERATED_ITEMS, check_pass_at, generate_replies,
                          held_out_indices, pass_at_k_estimate, pass_at_k_from_counts, parse_ks)
from lm.eval.likelihood import loglikelihood
from tools import pass_at_k as pass_at_k_tool
from lm.sampling import Engine
from lm.tokenizer import CharTokenizer, train_bpe, trained_specials

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


# ---- pass@k ---------------------------------------------------------------------------------------

def _enumerated(n: int, c: int, k: int) -> float:
    """pass@k by brute force: the fraction of k-subsets of n samples (the first c correct) that
    hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_is_the_enumerated_and_closed_form_value(n):
    for c in range(n + 1):
        values = []
        for k in range(1, n + 1):
            got = pass_at_k_estimate(n, c, k)
            assert got == pytest.approx(_enumerated(n, c, k), abs=1e-12), (n, c, k)
            assert got == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
            values.append(got)
        assert pass_at_k_estimate(n, c, 1) == pytest.approx(c / n)             # k = 1: c / n
        assert values[-1] == (1.0 if c else 0.0)                               # k = n: any
        assert all(b >= a for a, b in zip(values, values[1:]))                 # monotone in k
    assert all(pass_at_k_estimate(n, 0, k) == 0.0 for k in range(1, n + 1))   # c = 0
    assert all(pass_at_k_estimate(n, n, k) == 1.0 for k in range(1, n + 1))   # c = n


def test_pass_at_k_is_stable_where_binomials_are_huge():
    for n, c, k in ((1000, 3, 500), (2000, 1, 1), (2000, 1999, 7), (5000, 10, 64)):
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert pass_at_k_estimate(n, c, k) == pytest.approx(float(exact), rel=1e-9)


def test_pass_at_k_averages_over_problems_and_refuses_bad_input():
    got = pass_at_k_from_counts([0, 1, 4], 4, [1, 2, 4])
    assert got[1] == pytest.approx((0 + 0.25 + 1) / 3) and got[4] == pytest.approx(2 / 3)
    assert got[2] == pytest.approx((0 + 0.5 + 1) / 3)
    assert pass_at_k_from_counts([], 4, [1]) == {1: 0.0}
    for n, c, k in ((4, 1, 0), (4, 1, 5), (4, 5, 1), (4, -1, 1)):
        with pytest.raises(ValueError):
            pass_at_k_estimate(n, c, k)
    assert parse_ks("1, 2,4,2") == [1, 2, 4] and check_pass_at([1, 8]) == 8
    assert check_pass_at([1, 8], 16) == 16
    with pytest.raises(ValueError, match="at least the largest k"):
        check_pass_at([1, 8], 4)
    with pytest.raises(ValueError, match="--ks '1,0'.*k >= 1"):
        parse_ks("1,0", "--ks")


@pytest.mark.parametrize("args, message", [
    (["--pass_at", "0,1,2"], "--pass_at '0,1,2': pass@k needs every k >= 1"),
    (["--pass_at", "1,two"], "--pass_at '1,two': expected whole numbers"),
    (["--pass_at", ""], "needs at least one k"),
    (["--pass_at", "1,8", "--samples", "4"], "--samples 4: .* cannot estimate pass@8"),
    (["--pass_at", "1,2", "--tasks", "mmlu"], "'mmlu' is categorical, not generative"),
    (["--pass_at", "1,2", "--tasks", "arithmetic_easy,nope"], "'nope' is not a chat task"),
    (["--pass_at", "1,2", "--temperature", "0"], "--temperature 0: .* > 0"),
    (["--samples", "8"], "go with --pass_at"),
])
def test_eval_cli_pass_at_errors_are_messages(args, message, capsys):
    # checked before the run is loaded: the run given here does not exist
    assert eval_main(["--run", "/nonexistent/run", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_pass_at_table_rows_and_the_plot_tool_outputs(tmp_path, capsys):
    result = {"pass_at": {"eval/arithmetic_easy_pass@1": 0.25, "eval/arithmetic_easy_pass@4": 0.5},
              "counts": {"arithmetic_easy": [0, 1, 4, 0]}, "samples": 4}
    rows = suite.table(result).splitlines()
    assert "| arithmetic_easy | pass@4 | 0.5000 | 4 × 4 samples |" in rows
    assert suite.generative_tasks(["mmlu", "gsm8k", "bpb", "identity"]) == ["gsm8k", "identity"]
    ks, counts = [1, 2, 4], {"a": [0, 1, 4, 2], "b": [4, 4, 0, 0]}
    runs_ = []
    for name, c in counts.items():
        mean, err = pass_at_k_tool.summarize(c, 4, ks)
        runs_.append({"label": name, "run_dir": f"runs/x/{name}", "step": 10, "stage": "grpo",
                      "problems": 4, "pass_at": mean, "stderr": err, "counts": c})
    assert runs_[0]["pass_at"][1] == pytest.approx(7 / 16)
    assert runs_[0]["stderr"][1] == pytest.approx(np.std([0, .25, 1, .5], ddof=1) / 2)
    out = pass_at_k_tool.write({"task": "arithmetic_easy", "ks": ks, "samples": 4,
                                "temperature": 1.0, "seed": 1, "limit": 4, "runs": runs_},
                               str(tmp_path))
    md = open(out[1]).read()
    assert "| k | a | b |" in md and "| 4 | 0.7500 ± 0.2500 | 0.5000 ± 0.2887 |" in md
    assert os.path.getsize(out[2]) > 1000
    assert json.load(open(out[0]))["runs"][1]["counts"] == [4, 4, 0, 0]
    # the tool checks its options and finds every run before any evaluation
    for args, message in ((["--ks", "1,4", "--samples", "2"], "--samples 2"),
                          (["--task", "arc_easy"], "categorical, not generative"),
                          (["--runs", "/nonexistent/run"], "not a run directory")):
        base = {"--runs": "/nonexistent/run", "--task": "arithmetic_easy", "--ks": "1,2"}
        base.update(zip(args[::2], args[1::2]))
        argv = [x for kv in base.items() for x in kv] + ["--out", str(tmp_path / "o")]
        assert pass_at_k_tool.main(argv) == 2
        assert message in capsys.readouterr().err


def test_no_limit_reads_a_fixed_split_whole_and_a_generated_one_in_part():
    """`--limit 0` means all of a fixed held-out split; a generated task's split is infinite, so
    it means GENERATED_ITEMS (it once meant a billion conversations, and the OOM killer)."""
    class Fixed:
        def size(self, split):
            return 37

    class Infinite:
        def size(self, split):
            return None

    assert held_out_indices(Fixed(), 0) == list(range(37))
    assert held_out_indices(Fixed(), 100) == list(range(37))
    some = held_out_indices(Fixed(), 5)
    assert len(some) == 5 and some != list(range(5)) and max(some) < 37    # spread, not a prefix
    assert held_out_indices(Infinite(), 0) == list(range(GENERATED_ITEMS))
    assert held_out_indices(Infinite(), 12) == list(range(12))


def test_a_long_prompt_does_not_cut_the_other_replies():
    """Each row's budget is its own room in the context, not the batch's longest prompt's."""
    tok = train_bpe(["hello there, how are you today? fine thanks " * 20],
                    256 + len(trained_specials()) + 30)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=32)
    params = model.init(cfg, jax.random.key(0))
    eng = Engine(params, cfg, tokenizer=tok, tools=tok.chat)
    short = {"messages": [{"role": "user", "content": "hello"}]}
    long = {"messages": [{"role": "user", "content": "hello there " * 30}]}
    assert len(chat.render_for_completion(long, tok)) > 60
    alone = generate_replies(eng, tok, [short], max_new_tokens=40, batch_size=2)
    both = generate_replies(eng, tok, [short, long], max_new_tokens=40, batch_size=2)
    assert both[0]["tokens"] == alone[0]["tokens"]
    assert len(alone[0]["tokens"]) > 96 - len(chat.render_for_completion(long, tok))
