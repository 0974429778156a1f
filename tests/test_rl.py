"""GRPO: advantages on hand-made groups, the loss's gradient direction on a tiny model, masked
tokens get exactly zero gradient, KL is zero when policy equals reference, clipping engages
exactly outside [1 - eps, 1 + eps_high], aggregation variants, rewards that raise are counted; the
stage end to end (held-out curves from step 0, once); pass@k samples independent of batching."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lm import losses, model, tasks
from lm.config import ModelConfig, RLConfig
from lm.eval.__main__ import main as eval_main
from lm.eval.chat import (correct_counts, generate_replies, pass_at_k, pass_at_k_from_counts,
                          pass_at_ks)
from lm.sampling import Engine
from tools import pass_at_k as pass_at_k_tool
from lm.rl import rewards
from lm.rl.loss import advantages, policy_loss


def test_advantages_on_hand_made_groups():
    r = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0], [3, 1, 2, 2]], np.float32)
    a, zero = advantages(r, std_norm=False)
    np.testing.assert_allclose(a[0], [0.5, -0.5, -0.5, 0.5])
    assert (a[1] == 0).all() and (a[2] == 0).all() and zero.tolist() == [False, True, True, False]
    np.testing.assert_allclose(a[3], [1, -1, 0, 0])
    s, _ = advantages(r, std_norm=True, eps=1e-6)
    np.testing.assert_allclose(s[0], [1, -1, -1, 1], atol=1e-5)            # std 0.5
    np.testing.assert_allclose(s[3], np.array([1, -1, 0, 0]) / (np.std([3, 1, 2, 2]) + 1e-6),
                               rtol=1e-5)
    assert (s[1] == 0).all()


CFG = ModelConfig(vocab_size=32, block_size=16, n_layer=1, n_head=2, n_embd=16, kernels="plain")


def _logp(params, x, y):
    return losses.token_logprobs(model.apply(params, CFG, x), y)[0]


def _setup(seed=0):
    params = model.init(CFG, jax.random.key(seed))
    x = jax.random.randint(jax.random.key(seed + 1), (4, 8), 0, 32)
    y = jax.random.randint(jax.random.key(seed + 2), (4, 8), 0, 32)
    return params, x, y


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_scale"])
def test_gradient_raises_positive_and_lowers_negative_advantage_tokens(agg):
    params, x, y = _setup()
    rl = RLConfig(aggregation=agg, max_new_tokens=8)
    mask = jnp.ones((4, 8))
    adv = jnp.array([1.0, -1.0, 1.0, -1.0])
    old = _logp(params, x, y)

    def loss(p):
        lp = _logp(p, x, y)
        return policy_loss(lp, old, old, adv, mask, jnp.zeros_like(lp), rl)[0]
    g = jax.grad(loss)(params)
    new = jax.tree.map(lambda a, b: a - 0.5 * b, params, g)     # one SGD step
    delta = np.asarray(_logp(new, x, y) - old).sum(axis=1)
    assert delta[0] > 0 and delta[2] > 0 and delta[1] < 0 and delta[3] < 0


def test_masked_tokens_get_exactly_zero_gradient():
    params, x, y = _setup(3)
    rl = RLConfig(kl="k3", beta=0.1)
    mask = jnp.ones((4, 8)).at[:, :5].set(0.0)
    old = jax.lax.stop_gradient(_logp(params, x, y))

    def per_position_grad(t):
        def loss(lp_row):
            lp = jax.lax.stop_gradient(_logp(params, x, y)).at[:, t].set(lp_row)
            return policy_loss(lp, old, old - 0.3, jnp.ones(4), mask, jnp.zeros_like(lp), rl)[0]
        return jax.grad(loss)(_logp(params, x, y)[:, t])
    for t in range(5):
        assert float(jnp.abs(per_position_grad(t)).max()) == 0.0
    assert float(jnp.abs(per_position_grad(6)).max()) > 0


def test_kl_is_zero_when_policy_equals_reference():
    params, x, y = _setup(4)
    lp = _logp(params, x, y)
    for kind in ("k3", "kl"):
        rl = RLConfig(kl=kind, beta=1.0)
        zero_adv = jnp.zeros(4)
        loss, m = policy_loss(lp, lp, lp, zero_adv, jnp.ones((4, 8)), jnp.zeros_like(lp), rl)
        assert abs(float(loss)) < 1e-7 and abs(float(m["kl"])) < 1e-7
        g = jax.grad(lambda p: policy_loss(_logp(p, x, y), lp, lp, zero_adv, jnp.ones((4, 8)),
                                           jnp.zeros_like(lp), rl)[0])(params)
        if kind == "k3":   # k3's gradient vanishes there too (the plain estimator's does not)
            assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(g)) < 1e-6
    # and positive when they differ
    _, m = policy_loss(lp, lp, lp - 0.5, jnp.zeros(4), jnp.ones((4, 8)), jnp.zeros_like(lp),
                       RLConfig(kl="k3"))
    assert float(m["kl"]) > 0


def test_clipping_engages_exactly_outside_the_band():
    rl = RLConfig(clip_eps=0.2, clip_eps_high=0.28)
    ratios = np.array([0.7, 0.79, 0.81, 1.0, 1.27, 1.29, 1.5], np.float32)
    old = jnp.zeros((1, len(ratios)))
    lp = jnp.log(jnp.asarray(ratios))[None]
    mask = jnp.ones_like(lp)
    for A, clipped_where in ((1.0, ratios > 1.28), (-1.0, ratios < 0.8)):
        adv = jnp.array([A])
        g = jax.grad(lambda l: policy_loss(l, old, old, adv, mask, jnp.zeros_like(l), rl)[0])(lp)
        # a clipped token has zero gradient, every other one a non-zero one
        np.testing.assert_array_equal(np.asarray(g[0]) == 0, clipped_where)
        _, m = policy_loss(lp, old, old, adv, mask, jnp.zeros_like(lp), rl)
        assert float(m["clip_frac"]) == pytest.approx(clipped_where.mean())


def test_nanochat_setting_is_plain_reinforce():
    """std off, no KL, one update (ratio 1): the loss is -mean_seq(A · mean_t logp) in value and
    gradient."""
    params, x, y = _setup(5)
    rl = RLConfig(std_norm=False, kl="none", updates=1)
    adv = jnp.array([0.5, -0.5, 0.25, -0.25])
    old = jax.lax.stop_gradient(_logp(params, x, y))
    ours = jax.grad(lambda p: policy_loss(_logp(p, x, y), old, old, adv, jnp.ones((4, 8)),
                                          jnp.zeros((4, 8)), rl)[0])(params)
    plain = jax.grad(lambda p: -jnp.mean(adv * _logp(p, x, y).mean(axis=1)))(params)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_reward_that_raises_is_counted_not_fatal():
    @rewards.register("test_boom")
    def boom(task, conv, reply):
        raise RuntimeError("broken reward")
    try:
        comp = rewards.Composite("correct:1,test_boom:1")

        class T:
            def reward(self, conv, text):
                return 1.0
        assert comp(T(), {}, {"text": "x", "format_ok": True, "tokens": []}) == 1.0
        assert comp.errors == 1
    finally:
        rewards.REWARDS.pop("test_boom")
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.parse("nope:1")


# ---- the grpo stage end to end on a tiny model -----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_parent(tmp_path_factory):
    """A tiny 'sft' run with random weights and a BPE tokenizer with the chat tokens."""
    from lm import runs
    from lm.config import Config, DataConfig
    from lm.tokenizer import train_bpe, trained_specials
    root = str(tmp_path_factory.mktemp("sft_parent"))
    tok = train_bpe(["Emily has 3 apples and buys 2 more. 3 + 2 = 5 apples. #### 5 "] * 60,
                    256 + len(trained_specials()) + 80)
    cfg = Config(name="tiny_sft", stage="sft", init_from="x",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1,
                                   n_head=2, n_embd=32), data=DataConfig(tokenizer="parent"))
    return runs.save_run(root, cfg, tok)


def _grpo_cfg(parent, vocab, **rl):
    from lm.config import (CheckpointConfig, Config, DataConfig, EvalConfig, MeshConfig,
                           OptimConfig, TrainConfig)
    return Config(name="tiny_grpo", stage="grpo", init_from=parent,
                  model=ModelConfig(vocab_size=vocab, block_size=256, n_layer=1, n_head=2,
                                    n_embd=32),
                  data=DataConfig(tokenizer="parent", seq_len=255, batch_size=8),
                  optim=OptimConfig(lr=1e-3, min_lr=1e-3, schedule="constant", warmup_steps=0),
                  rl=RLConfig(task="arithmetic_easy", prompts=2, samples=4, max_new_tokens=24,
                              pass_k=2, **rl),
                  eval=EvalConfig(tasks="arithmetic_easy", every=2, limit=4, batch_size=8),
                  train=TrainConfig(steps=4, eval_every=2, log_every=1, sample_tokens=0),
                  mesh=MeshConfig(data=1), checkpoint=CheckpointConfig(every=2)).validate()


def test_grpo_stage_runs_logs_and_is_reproducible(tiny_parent, tmp_path):
    import os
    from lm import runs, train
    from lm.logs import read_metrics
    from lm.stages import grpo
    parent = runs.load(tiny_parent)
    cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size, updates=2, kl="k3", beta=0.1)
    train.run(cfg, run_dir=str(tmp_path / "r"), progress=False)
    rows = read_metrics(str(tmp_path / "r" / "metrics.jsonl"))
    step_rows = [r for r in rows if "loss" in r]
    assert len(step_rows) == 4
    for key in ("rl/reward", "rl/response_tokens", "rl/worked", "kl", "entropy", "clip_frac",
                "rl/zero_var_groups", "rl/rollout_s"):
        assert all(key in r for r in step_rows), key
    # updates=2: steps 1-2 share a rollout batch (same reward), 3-4 the next
    assert step_rows[0]["rl/reward"] == step_rows[1]["rl/reward"]
    final = [r for r in rows if r.get("final")][-1]
    assert "eval/arithmetic_easy" in final and "eval/arithmetic_easy_pass@2" in final
    assert 0 <= final["eval/arithmetic_easy_worked"] <= 1 and "eval/arithmetic_easy_tokens" in final
    assert all(0 <= r["rl/worked"] <= 1 for r in step_rows)
    # the held-out curves start at step 0 (the parent, before the first update), logged first
    evals = [r for r in rows if "eval/arithmetic_easy" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and rows[0] is evals[0]
    assert "eval/arithmetic_easy_pass@2" in evals[0]
    assert "eval/arithmetic_easy_pass@2" not in evals[1]      # pass@k at the ends only
    assert "eval/arithmetic_easy_tokens" in final
    assert os.path.getsize(str(tmp_path / "r" / "rl_curves.png")) > 1000
    # the same seed gives the same rollouts
    st = grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
    a, _, _ = st.rollouts(parent.params, 3)
    b, _, _ = st.rollouts(parent.params, 3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c, _, _ = st.rollouts(parent.params, 4)
    assert not np.array_equal(a["targets"], c["targets"])
    # forced tool outputs and prompts have no weight; some sampled tokens do
    assert a["weights"].sum() > 0 and (a["weights"][:, :5] == 0).all()


def test_grpo_config_errors(tiny_parent):
    from lm import runs
    from lm.stages import grpo
    parent = runs.load(tiny_parent)
    cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size)
    cfg.data.batch_size = 6
    with pytest.raises(ValueError, match="rl.prompts × rl.samples"):
        grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
    cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size)
    cfg.rl.task = "mmlu"
    with pytest.raises(ValueError, match="generative"):
        grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
    for split, ok in (("test", False), ("dev", False), ("rl", True), ("train", True)):
        cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size, split=split)
        if ok:
            assert grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent).prompts(0)
        else:
            with pytest.raises(ValueError, match="held out for evaluation"):
                grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)


@pytest.mark.parametrize("task,split", [("arithmetic_easy", "rl"), ("gsm8k_easy", "train")])
def test_grpo_draws_again_a_prompt_with_no_room_for_its_reply(tiny_parent, task, split,
                                                               tmp_path):
    """GSM8K's longest problems leave no room in a row for the reply; they are drawn again,
    and a prompt that fits is the one drawn before (a generated task's stream: k * P + j)."""
    from lm import conversation as chat
    from lm import runs
    from lm import tasks as task_lib
    from lm.stages import grpo
    # the fixture's parent at block size 512: its byte-level BPE spends ~250 tokens on a GSM8K
    # problem
    pcfg = runs.load(tiny_parent).config
    pcfg.model.block_size = 512
    long_parent = runs.save_run(str(tmp_path / "parent"), pcfg, runs.load(tiny_parent).tokenizer)
    parent = runs.load(long_parent)
    tok = parent.tokenizer
    cfg = _grpo_cfg(long_parent, tok.vocab_size, split=split)
    cfg.rl.task, cfg.rl.prompts, cfg.data.batch_size = task, 8, 32
    cfg.model.block_size, cfg.data.seq_len = 512, 511
    size = lambda c: len(chat.render_for_completion(c, tok))
    lens = sorted(size(c) for k in range(6) for c in grpo.Stage(
        cfg, tokenizer=tok, parent=parent).prompts(k))
    room = lens[len(lens) * 7 // 8]
    cfg.rl.max_new_tokens = cfg.data.seq_len - room - 1
    a = grpo.Stage(cfg, tokenizer=tok, parent=parent)
    b = grpo.Stage(cfg, tokenizer=tok, parent=parent)
    redrawn = 0
    for k in range(6):
        convs, n = a._draw(k)
        redrawn += n
        assert len(convs) == 8 and all(size(c) <= room for c in convs)
        assert convs == b.prompts(k)                                # deterministic
        if task == "arithmetic_easy":
            first = [task_lib.get(task).example(split, k * 8 + j) for j in range(8)]
            assert [c for c, f in zip(convs, first) if c == f] == [f for f in first
                                                                  if size(f) <= room]
            assert n >= sum(size(f) > room for f in first)     # a redraw may not fit either
    assert redrawn > 0
    if task == "gsm8k_easy":
        _, stats, _ = a.rollouts(parent.params, 0)
        assert stats["rl/prompts_redrawn"] == a._draw(0)[1]
    # the typical prompt must fit: a median that cannot is a config error that names the fix
    cfg.rl.max_new_tokens = cfg.data.seq_len - lens[0]
    with pytest.raises(ValueError, match="median prompt.*raise data.seq_len"):
        grpo.Stage(cfg, tokenizer=tok, parent=parent)


def test_grpo_evaluates_the_parent_once_at_step_0_and_not_again_on_resume(tiny_parent, tmp_path):
    from lm import runs, train
    from lm.eval.chat import evaluate_tasks
    from lm.logs import read_metrics
    parent = runs.load(tiny_parent)
    cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size)
    cfg.rl.pass_k, cfg.eval.limit, cfg.checkpoint.every = 1, 2, 1
    cfg.train.steps = 3
    d = str(tmp_path / "r")
    train.run(cfg, run_dir=d, progress=False, stop_after=1)
    train.run(cfg, run_dir=d, progress=False, resume=True)
    rows = read_metrics(os.path.join(d, "metrics.jsonl"))
    evals = [r for r in rows if "eval/arithmetic_easy" in r]
    assert [r["step"] for r in evals] == [0, 2, 3] and rows[0] is evals[0]
    # step 0 is the parent's policy: its greedy replies have the parent's lengths
    m, _ = evaluate_tasks(parent.params, parent.config.model, parent.tokenizer,
                          ["arithmetic_easy"], limit=2, batch_size=8, lengths=True)
    assert evals[0]["eval/arithmetic_easy_tokens"] == m["eval/arithmetic_easy_tokens"]


class _EvenLength:
    """arithmetic_easy's held-out problems graded by the reply's length parity, so a random
    model gets some samples right and some wrong."""
    name, kind = "even_length", "generative"

    def __init__(self):
        self.base = tasks.get("arithmetic_easy")

    def size(self, split):
        return self.base.size(split)

    def example(self, split, i):
        return self.base.example(split, i)

    def evaluate(self, conv, reply):
        return len(reply) % 2 == 0

    def max_new_tokens(self):
        return 10


class _SomeGroupsVary(_EvenLength):
    """The reply's length parity on a third of the problems (their groups mostly differ), 0 on
    the rest (groups that teach nothing)."""

    def reward(self, conv, reply):
        from lm.stages.grpo import _last_user
        return float(len(_last_user(conv)) % 3 == 0 and len(reply) % 2 == 0)


class _NeverRight(_EvenLength):
    def reward(self, conv, reply):
        return 0.0


def _rollout_like(vocab, seed=0, B=16, T=96, G=4):
    """A rollout batch by hand: prompts of 10-30 tokens, replies of 5-40 (the only weighted
    positions), groups of G with rewards that differ in half of them."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, vocab, (B, T)).astype(np.int32)
    targets = np.roll(inputs, -1, axis=1)
    weights = np.zeros((B, T), np.float32)
    for r in range(B):
        start = int(rng.integers(10, 30))
        weights[r, start:start + int(rng.integers(5, 40))] = 1.0
    rewards = rng.integers(0, 2, (B // G, G)).astype(np.float32)
    rewards[0::2] = 1.0                                    # half the groups: all equal
    rewards[1::2, 0], rewards[1::2, 1] = 0.0, 1.0
    adv, _ = advantages(rewards, std_norm=True)
    return {"inputs": inputs, "targets": targets, "weights": weights,
            "advantages": adv.reshape(-1)}


@pytest.mark.parametrize("how,agg", [("jit", "token_mean"), ("jit", "seq_mean_token_mean"),
                                     ("jit", "seq_mean_token_scale"),
                                     ("pmap_accum", "seq_mean_token_mean")])
def test_trimmed_step_takes_the_whole_batchs_gradient(tiny_parent, how, agg):
    """rl.trim drops the rows without a gradient and cuts the rest after their last sampled
    token; dividing by the whole batch's aggregate (over devices and micro-batches) keeps the
    step's loss, gradient norm and update those of the whole padded batch."""
    from lm import runs, steps
    from lm.config import MeshConfig
    from lm.stages import grpo
    parent = runs.load(tiny_parent)
    out = {}
    for trim in (False, True):
        cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size, aggregation=agg, trim=trim)
        cfg.rl.prompts, cfg.data.batch_size = 4, 16
        if how == "jit":
            cfg.mesh = MeshConfig(parallelism="jit", data=2)
        else:
            cfg.mesh, cfg.train.grad_accum = MeshConfig(parallelism="pmap", data=2), 2
        stage = grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
        c = steps.compile_steps(cfg, grpo.Stage.loss_fn(cfg), devices=jax.devices()[:2])
        start = jax.tree.map(jnp.copy, parent.params)           # the step donates its state
        state = c.device_state(c.host_state(c.init_state(0)).replace(params=start))
        batch = stage.train_batch(parent.params, _rollout_like(parent.tokenizer.vocab_size), c)
        state, m = c.train_step(state, c.put_batch(batch))
        out[trim] = (batch, c.place.fetch(m), c.host_state(state).params)
    (full, m_full, p_full), (cut, m_cut, p_cut) = out[False], out[True]
    assert full["inputs"].shape == (16, 96)
    assert cut["inputs"].shape[0] == 8 and cut["inputs"].shape[1] < 96     # half the rows
    assert (cut["advantages"] != 0).all()
    # the definition: the policy loss of the whole batch on one device, in one piece
    b = {k: jnp.asarray(v) for k, v in _rollout_like(parent.tokenizer.vocab_size).items()}
    mcfg = dataclasses.replace(parent.config.model, dtype="float32")
    lp = lambda p: losses.token_logprobs(model.apply(p, mcfg, b["inputs"]), b["targets"])[0]
    ref = lambda p: policy_loss(lp(p), None, lp(p), b["advantages"], b["weights"],
                                jnp.zeros_like(b["weights"]), cfg.rl)[0]
    loss, g = jax.value_and_grad(ref)(parent.params)
    norm = float(optax.global_norm(g))
    assert norm > 0
    for m in (m_full, m_cut):
        assert float(m["loss"]) == pytest.approx(float(loss), rel=1e-4, abs=1e-7)
        assert float(m["grad_norm"]) == pytest.approx(norm, rel=1e-4)
    for a, b in zip(jax.tree.leaves(p_cut), jax.tree.leaves(p_full)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_train_rows_pads_to_the_multiple_and_cuts_after_the_last_weighted_position():
    from lm.stages import grpo
    b = _rollout_like(50, seed=3, B=16, T=200)
    keep = np.zeros(16, bool)
    keep[[1, 5, 6]] = True
    out = grpo.train_rows(b, keep, multiple=4, len_quantum=32)
    last = max(int(np.flatnonzero(b["weights"][r])[-1]) for r in (1, 5, 6)) + 1
    assert out["inputs"].shape == (4, -(-last // 32) * 32)
    cut = out["inputs"].shape[1]
    np.testing.assert_array_equal(out["inputs"][:3], b["inputs"][[1, 5, 6], :cut])
    assert out["weights"][3].sum() == 0 and out["advantages"][3] == 0          # padding row
    assert grpo.train_rows(b, np.zeros(16, bool), 4)["inputs"].shape[0] == 4    # nothing kept
    assert grpo.train_rows(b, np.ones(16, bool), 6)["inputs"].shape[0] == 16    # at most B


def test_dynamic_sampling_trains_on_groups_whose_rewards_differ(tiny_parent):
    """rl.dynamic_sampling replaces groups with equal rewards by groups from further batches
    until P differ or N batches are drawn; the policy's statistics stay the first P prompts'."""
    from lm import runs
    from lm.stages import grpo
    parent = runs.load(tiny_parent)

    def rollouts(n, task):
        cfg = _grpo_cfg(tiny_parent, parent.tokenizer.vocab_size, dynamic_sampling=n)
        cfg.rl.prompts, cfg.data.batch_size = 4, 16
        stage = grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
        stage.task = task
        return stage.rollouts(parent.params, 0)

    informative = lambda b: float((b["advantages"].reshape(4, 4) != 0).any(1).mean())
    b0, s0, _ = rollouts(0, _SomeGroupsVary())
    b1, s1, _ = rollouts(6, _SomeGroupsVary())
    assert s0["rl/extra_batches"] == 0 and 0 < s0["rl/zero_var_groups"] < 1
    assert s0["rl/trained_informative"] == informative(b0) == 1 - s0["rl/zero_var_groups"]
    for key in ("rl/reward", "rl/zero_var_groups", "rl/response_tokens", "rl/format"):
        assert s1[key] == s0[key]                      # the policy's own statistics
    assert s1["rl/trained_informative"] == informative(b1) > informative(b0)
    assert 1 <= s1["rl/extra_batches"] <= 6
    assert s1["rl/trained_informative"] == 1.0 or s1["rl/extra_batches"] == 6
    # the first draw's groups that differ come first, as they were
    kept = [g for g in range(4) if (b0["advantages"].reshape(4, 4)[g] != 0).any()]
    for slot, g in enumerate(kept):
        assert (b1["inputs"][slot * 4:slot * 4 + 4] == b0["inputs"][g * 4:g * 4 + 4]).all()
    b2, s2, _ = rollouts(6, _SomeGroupsVary())
    assert s2 == s1 and all((b2[k] == b1[k]).all() for k in b1)          # deterministic
    # nothing ever differs: every allowed batch is drawn, the row is the first draw's groups
    b3, s3, _ = rollouts(3, _NeverRight())
    assert s3["rl/extra_batches"] == 3 and s3["rl/trained_informative"] == 0.0
    assert (b3["inputs"] == b0["inputs"]).all() and (b3["weights"] == b0["weights"]).all()


def test_pass_at_k_samples_do_not_depend_on_batching(tiny_parent):
    from lm import runs
    parent = runs.load(tiny_parent)
    tok, task = parent.tokenizer, _EvenLength()
    eng = Engine(parent.params, parent.config.model, tokenizer=tok, tools=tok.chat)
    convs = [task.example("test", i) for i in range(3)]
    kw = dict(max_new_tokens=10, temperature=1.0, seed=5, n=2)
    whole = generate_replies(eng, tok, convs, batch_size=3, **kw)
    split = [r for i, c in enumerate(convs)
             for r in generate_replies(eng, tok, [c], batch_size=1, first=i, **kw)]
    assert [r["tokens"] for r in whole] == [r["tokens"] for r in split]
    assert len({tuple(r["tokens"]) for r in whole}) > 1           # samples differ
    one = correct_counts(eng, tok, task, limit=3, n=4, batch_size=4, seed=5)     # 1 per call
    three = correct_counts(eng, tok, task, limit=3, n=4, batch_size=12, seed=5)  # 3 per call
    assert one == three and len(one) == 3 and 0 < sum(one) < 3 * 4   # some right, some wrong
    got = pass_at_ks(eng, tok, task, limit=3, ks=(1, 2, 4), batch_size=12, seed=5)
    assert got == pass_at_k_from_counts(one, 4, (1, 2, 4))
    assert got[1] <= got[2] <= got[4]
    assert pass_at_k(eng, tok, task, limit=3, k=4, batch_size=12, seed=5) == \
        np.mean([c > 0 for c in one])                              # n = k: "any correct"


def test_eval_cli_and_plot_tool_write_pass_at_k(tiny_parent, tmp_path, capsys):
    out = str(tmp_path / "p.json")
    assert eval_main(["--run", tiny_parent, "--tasks", "arithmetic_easy", "--pass_at", "1,2",
                      "--limit", "2", "--batch_size", "4", "--out", out, "--no_progress"]) == 0
    res = json.load(open(out))
    assert set(res["pass_at"]) == {"eval/arithmetic_easy_pass@1", "eval/arithmetic_easy_pass@2"}
    assert len(res["counts"]["arithmetic_easy"]) == 2 and res["samples"] == 2
    assert "| arithmetic_easy | pass@2 |" in capsys.readouterr().out
    assert pass_at_k_tool.main(["--runs", tiny_parent, tiny_parent, "--task", "arithmetic_easy",
                                "--ks", "1,2", "--limit", "2", "--out", str(tmp_path / "o"),
                                "--no_progress"]) == 0
    got = json.load(open(tmp_path / "o" / "pass_at_k.json"))
    assert [r["pass_at"] for r in got["runs"]] == [{"1": res["pass_at"][
        "eval/arithmetic_easy_pass@1"], "2": res["pass_at"]["eval/arithmetic_easy_pass@2"]}] * 2
    assert (tmp_path / "o" / "pass_at_k.png").stat().st_size > 1000


def _rm_run(parent, tmp_path):
    """(config, dir) of a tiny reward model (random weights) on the parent's tokenizer."""
    import dataclasses
    from lm import runs
    from lm.config import Config, DataConfig
    cfg = Config(name="tiny_rm", stage="rm", init_from="x",
                 model=dataclasses.replace(parent.config.model, head="score"),
                 data=DataConfig(tokenizer="parent"))
    return cfg, runs.save_run(str(tmp_path / "rm"), cfg, parent.tokenizer)


def test_grpo_rewards_from_a_reward_model_run(tiny_parent, tmp_path):
    """`rl.rewards=model:1` with an rm run: each rollout's reward is the reward model's score of
    prompt + reply at its last token (one batched forward pass); bad pairings are named errors."""
    import dataclasses
    from lm import runs
    from lm.config import Config, ConfigError, DataConfig
    from lm.stages import grpo
    from lm.tokenizer import train_bpe, trained_specials
    parent = runs.load(tiny_parent)
    tok = parent.tokenizer
    rm_cfg, rm_dir = _rm_run(parent, tmp_path)
    cfg = _grpo_cfg(tiny_parent, tok.vocab_size, rewards="model:1,labeller:0",
                    reward_model=rm_dir)
    st = grpo.Stage(cfg, tokenizer=tok, parent=parent)
    batch, stats, shown = st.rollouts(parent.params, 0)
    rm = runs.load(rm_dir)
    # the same scores, recomputed one sequence at a time from the rows the policy trains on
    want = []
    for r in range(batch["inputs"].shape[0]):
        n = int(np.nonzero(batch["targets"][r])[0].max()) + 2     # the sequence's length
        seq = np.concatenate([batch["inputs"][r, :1], batch["targets"][r, :n - 1]])
        x = jnp.asarray(seq[None, :].astype(np.int32))
        want.append(float(model.apply(rm.params, rm.config.model, x)[0, -1]))
    assert stats["rl/reward/model"] == pytest.approx(np.mean(want), abs=1e-4)
    # the labeller's true reward is logged beside it, weight 0: not in the optimised reward
    assert stats["rl/reward"] == pytest.approx(np.mean(want), abs=1e-4)
    assert "rl/reward/labeller" in stats and stats["rl/reward/labeller"] >= -0.5
    # the rollouts shown (rollouts.jsonl): the best-rewarded one has the batch's top model score
    best = [x for x in shown if x["which"] == "best"][0]
    assert best["rewards"]["model"] == pytest.approx(max(want), abs=1e-4)
    with pytest.raises(ConfigError, match="needs rl.reward_model"):
        grpo.Stage(_grpo_cfg(tiny_parent, tok.vocab_size, rewards="model:1"), tokenizer=tok,
                   parent=parent)
    with pytest.raises(ConfigError, match="nor eval.rewards uses `model`"):
        grpo.Stage(_grpo_cfg(tiny_parent, tok.vocab_size, reward_model=rm_dir), tokenizer=tok,
                   parent=parent)
    with pytest.raises(ConfigError, match="not a reward model"):
        grpo.Stage(_grpo_cfg(tiny_parent, tok.vocab_size, rewards="model:1",
                             reward_model=tiny_parent), tokenizer=tok, parent=parent)
    other = train_bpe(["a different text altogether, 1 2 3"] * 40,
                      256 + len(trained_specials()) + 20)
    other_dir = runs.save_run(str(tmp_path / "rm2"), dataclasses.replace(
        rm_cfg, model=dataclasses.replace(rm_cfg.model, vocab_size=other.vocab_size)), other)
    with pytest.raises(ConfigError, match="tokenizer differs"):
        grpo.Stage(_grpo_cfg(tiny_parent, tok.vocab_size, rewards="model:1",
                             reward_model=other_dir), tokenizer=tok, parent=parent)


def test_held_out_rewards_score_the_evaluation_replies(tiny_parent, tmp_path):
    """`eval.rewards=model,labeller`: the reward model's score and the labeller's true reward of
    each held-out greedy reply, per task and overall; the run also keeps its sample rollouts and
    evaluation replies, and its report card plots and tabulates every reward."""
    import dataclasses
    import json
    import os
    from lm import report, runs, train
    from lm import conversation as chat
    from lm import tasks as task_lib
    from lm.config import Config, DataConfig
    from lm.eval.chat import evaluate_tasks
    from lm.logs import read_metrics
    from lm.rl import labeller
    from lm.rl.rewards import HeldOutRewards
    from lm.sampling import Engine
    parent = runs.load(tiny_parent)
    tok = parent.tokenizer
    rm_cfg, rm_dir = _rm_run(parent, tmp_path)
    cfg = _grpo_cfg(tiny_parent, tok.vocab_size, rewards="model:1,labeller:0",
                    reward_model=rm_dir)
    cfg.eval.rewards = "model,labeller"
    score = HeldOutRewards(cfg, tok)
    seen = {}

    def spy(task, convs, replies):
        out = score(task, convs, replies)
        seen.update(convs=convs, replies=replies, out=out)
        return out
    m, _ = evaluate_tasks(parent.params, parent.config.model, tok, ["arithmetic_easy"], limit=4,
                          batch_size=4, max_new_tokens=16, score=spy,
                          engine=Engine(parent.params, parent.config.model, tokenizer=tok,
                                        tools=tok.chat))
    rm = runs.load(rm_dir)
    task = task_lib.get("arithmetic_easy")
    want_rm, want_true = [], []
    for c, r in zip(seen["convs"], seen["replies"]):
        ids = chat.render_for_completion(c, tok) + list(r["tokens"])
        x = jnp.asarray(np.asarray(ids, np.int32)[None])
        want_rm.append(float(model.apply(rm.params, rm.config.model, x)[0, -1]))
        want_true.append(labeller.true_reward(task, c, r["text"]))
    assert m["eval/reward/model"] == pytest.approx(np.mean(want_rm), abs=1e-4)
    assert m["eval/arithmetic_easy_reward/labeller"] == pytest.approx(np.mean(want_true))
    assert m["eval/reward/labeller"] == pytest.approx(np.mean(want_true))
    # end to end: the metrics, the records and the report's reward table
    run_dir = str(tmp_path / "run")
    train.run(cfg, run_dir=run_dir, progress=False)
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    evals = [r for r in rows if "eval/reward/labeller" in r]
    assert [r["step"] for r in evals] == [0, 2, 4] and all("eval/reward/model" in r
                                                               for r in evals)
    with open(os.path.join(run_dir, "rollouts.jsonl")) as f:
        shown = [json.loads(line) for line in f]
    assert [r["step"] for r in shown] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert {r["which"] for r in shown} == {"best", "first"}
    assert all(set(r["rewards"]) == {"model", "labeller"} for r in shown)
    with open(os.path.join(run_dir, "eval_samples.jsonl")) as f:
        assert {json.loads(line)["step"] for line in f} == {0, 2, 4}
    report.write(run_dir)                   # the report card, as lm.main writes it at the end
    with open(os.path.join(run_dir, "rewards.json")) as f:
        summary = json.load(f)
    assert summary["optimised"] == ["model"] and summary["watched"] == ["labeller"]
    assert summary["rewards"]["labeller"]["held_out"]["start_step"] == 0
    assert os.path.getsize(os.path.join(run_dir, "rewards.png")) > 1000


def test_reward_summary_names_where_a_proxy_and_the_truth_part():
    from lm.report import reward_summary, smooth
    np.testing.assert_allclose(smooth([0, 3, 0, 3], 3), [1.5, 1, 2, 1.5])
    steps = np.arange(1, 41)
    proxy = steps / 40.0                                    # keeps rising
    true = np.where(steps <= 15, steps / 15.0, 1 - (steps - 15) / 50.0)   # peaks at 15, falls
    rows = [{"step": int(s), "rl/reward/model": float(p), "rl/reward/labeller": float(t)}
            for s, p, t in zip(steps, proxy, true)]
    rows += [{"step": s, "eval/reward/model": s / 40, "eval/reward/labeller": v}
             for s, v in ((0, 0.1), (10, 0.8), (20, 0.9), (30, 0.7), (40, 0.5))]
    out = reward_summary(rows, optimised=["model"], window=5)
    held = out["parting"]["labeller"]["held_out"]
    assert held["peak_step"] == 20 and held["hacked"]
    assert held["optimised"]["model"]["change_after_peak"] == pytest.approx(0.5)
    assert abs(out["parting"]["labeller"]["rollout"]["peak_step"] - 15) <= 2
    assert out["parting"]["labeller"]["rollout"]["hacked"]
    # both rising: no hacking
    rows2 = [{"step": int(s), "rl/reward/model": float(p), "rl/reward/labeller": float(p)}
             for s, p in zip(steps, proxy)]
    assert not reward_summary(rows2, optimised=["model"])["parting"]["labeller"]["rollout"]["hacked"]
