"""Optimizer pieces: nanoGPT's LR schedule, WSD, the weight-decay mask, z-loss, clipping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import losses, model, optim
from lm.config import ModelConfig, OptimConfig


def nanogpt_lr(it, lr=1e-3, min_lr=1e-4, warmup=100, decay_iters=2000):
    # nanoGPT train.py get_lr, written out independently
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


@pytest.mark.parametrize("step", [0, 1, 50, 99, 100, 101, 500, 1000, 1999, 2000])
def test_cosine_matches_nanogpt(step):
    fn = optim.schedule(OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100), 2000)
    assert float(fn(step)) == pytest.approx(nanogpt_lr(step), rel=1e-5)


def test_wsd_shape():
    fn = optim.schedule(OptimConfig(lr=1.0, min_lr=0.0, schedule="wsd", warmup_steps=10,
                                    decay_steps=20), 100)
    assert float(fn(5)) < 1.0
    assert float(fn(10)) == pytest.approx(1.0) and float(fn(80)) == pytest.approx(1.0)
    assert float(fn(90)) == pytest.approx(0.5) and float(fn(100)) == pytest.approx(0.0)


def test_decay_mask_excludes_norms_biases_embeddings():
    p = model.init(ModelConfig(vocab_size=16, block_size=8, n_layer=1, n_head=2, n_embd=8),
                   jax.random.key(0))
    m = optim.decay_mask(p)
    assert m["h_0"]["mlp"]["c_fc"]["kernel"] and m["h_0"]["attn"]["c_proj"]["kernel"]
    assert not m["h_0"]["mlp"]["c_fc"]["bias"] and not m["h_0"]["ln_1"]["scale"]
    assert not m["wte"] and not m["wpe"]
    assert optim.decay_mask(p, decay_embeddings=True)["wte"]


def test_weight_decay_only_touches_masked_params():
    p = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
    tx = optim.make_optimizer(OptimConfig(lr=0.1, warmup_steps=0, schedule="constant",
                                          weight_decay=0.5, grad_clip=0.0), 10)
    zero = jax.tree.map(jnp.zeros_like, p)
    upd, _ = tx.update(zero, tx.init(p), p)
    np.testing.assert_allclose(upd["w"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_allclose(upd["b"], 0.0)


def test_clipping_bounds_update_norm_input():
    p = {"w": jnp.zeros((3,))}
    tx = optim.make_optimizer(OptimConfig(lr=1.0, warmup_steps=0, schedule="constant",
                                          weight_decay=0.0, grad_clip=1.0), 10)
    # Adam normalises, so check the clipped gradient through the first moment
    _, st = tx.update({"w": jnp.array([30.0, 40.0, 0.0])}, tx.init(p), p)
    mu = st[1][0].mu["w"]
    np.testing.assert_allclose(mu / (1 - 0.9), [0.6, 0.8, 0.0], rtol=1e-5)


def test_cross_entropy_weights_and_z_loss():
    logits = jax.random.normal(jax.random.key(0), (2, 3, 5))
    t = jnp.array([[0, 1, 2], [3, 4, 0]])
    w = jnp.array([[1, 0, 1], [0, 0, 1]])
    loss, m = losses.cross_entropy(logits, t, w, z_loss=1e-2)
    lp = jax.nn.log_softmax(logits)
    nll = -np.array([lp[0, 0, 0], lp[0, 2, 2], lp[1, 2, 0]])
    assert float(m["loss"]) == pytest.approx(nll.mean(), rel=1e-5)
    lse = jax.nn.logsumexp(logits, -1)
    z = 1e-2 * np.mean([lse[0, 0] ** 2, lse[0, 2] ** 2, lse[1, 2] ** 2])
    assert float(loss) == pytest.approx(nll.mean() + z, rel=1e-5)
    assert float(m["tokens"]) == 3
