"""GRPO: advantages on hand-made groups, the loss's gradient direction on a tiny model, masked
tokens get exactly zero gradient, KL is zero when policy equals reference, clipping engages
exactly outside [1 - eps, 1 + eps_high], aggregation variants, rewards that raise are counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import losses, model
from lm.config import ModelConfig, RLConfig
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
    for key in ("rl/reward", "rl/response_tokens", "kl", "entropy", "clip_frac",
                "rl/zero_var_groups", "rl/rollout_s"):
        assert all(key in r for r in step_rows), key
    # updates=2: steps 1-2 share a rollout batch (same reward), 3-4 the next
    assert step_rows[0]["rl/reward"] == step_rows[1]["rl/reward"]
    final = [r for r in rows if r.get("final")][-1]
    assert "eval/arithmetic_easy" in final and "eval/arithmetic_easy_pass@2" in final
    assert "eval/arithmetic_easy_tokens" in final
    assert os.path.getsize(str(tmp_path / "r" / "rl_curves.png")) > 1000
    # the same seed gives the same rollouts
    st = grpo.Stage(cfg, tokenizer=parent.tokenizer, parent=parent)
    a, _ = st.rollouts(parent.params, 3)
    b, _ = st.rollouts(parent.params, 3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c, _ = st.rollouts(parent.params, 4)
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
