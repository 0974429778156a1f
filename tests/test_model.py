"""Model: published GPT-2 shapes, causality, packed-segment isolation, families, dtypes, FLOPs."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import layers, model
from lm.config import ConfigError, ModelConfig, depth_preset, gpt2_preset, modern

TINY = ModelConfig(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
TINY_MODERN = modern(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32, n_kv_head=2)


# Published GPT-2 sizes (HF GPT2LMHeadModel parameter counts, tied embeddings).
@pytest.mark.parametrize("name,count", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                        ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_gpt2_presets_match_published_counts(name, count):
    assert model.param_count(gpt2_preset(name)) == count


def test_gpt2_init_statistics():
    cfg = dataclasses.replace(TINY, n_layer=8, n_embd=128, n_head=4)
    p = model.init(cfg, jax.random.key(0))
    assert abs(float(jnp.std(p["wte"])) - 0.02) < 0.002
    resid = float(jnp.std(p["h_0"]["mlp"]["c_proj"]["kernel"]))
    assert abs(resid - 0.02 / math.sqrt(2 * 8)) < 0.001
    assert float(jnp.abs(p["h_0"]["attn"]["c_attn"]["bias"]).max()) == 0.0
    assert "lm_head" not in p  # tied


def test_modern_structure():
    p = model.init(TINY_MODERN, jax.random.key(0))
    assert "wpe" not in p and "lm_head" in p
    assert "bias" not in p["h_0"]["attn"]["c_attn"] and "bias" not in p["h_0"]["ln_1"]
    # GQA: q has 4 heads, k/v 2 heads of dim 8 -> fused (4 + 2·2)·8 = 64 outputs
    assert p["h_0"]["attn"]["c_attn"]["kernel"].shape == (32, 64)
    logits = model.apply(p, TINY_MODERN, jnp.zeros((1, 8), jnp.int32))
    assert float(jnp.abs(logits).max()) <= TINY_MODERN.logit_softcap


@pytest.mark.parametrize("cfg", [TINY, TINY_MODERN, modern(vocab_size=97, block_size=32,
                                                          n_layer=1, n_head=4, n_embd=32,
                                                          mlp="swiglu")],
                         ids=["gpt2", "modern-gqa", "swiglu"])
def test_causal(cfg):
    p = model.init(cfg, jax.random.key(1))
    x = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
    y = x.at[:, 10:].set((x[:, 10:] + 1) % cfg.vocab_size)
    a, b = model.apply(p, cfg, x), model.apply(p, cfg, y)
    np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)
    assert not np.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


@pytest.mark.parametrize("cfg", [TINY, TINY_MODERN], ids=["gpt2", "modern"])
def test_packed_segments_do_not_attend_across_documents(cfg):
    p = model.init(cfg, jax.random.key(3))
    doc1 = jax.random.randint(jax.random.key(4), (1, 6), 0, cfg.vocab_size)
    doc2 = jax.random.randint(jax.random.key(5), (1, 10), 0, cfg.vocab_size)
    packed = jnp.concatenate([doc1, doc2], axis=1)
    seg = jnp.array([[0] * 6 + [1] * 10])
    pos = jnp.array([list(range(6)) + list(range(10))])
    out = model.apply(p, cfg, packed, positions_BT=pos, segment_ids_BT=seg)
    alone1, alone2 = model.apply(p, cfg, doc1), model.apply(p, cfg, doc2)
    np.testing.assert_allclose(out[:, :6], alone1, atol=1e-5)
    np.testing.assert_allclose(out[:, 6:], alone2, atol=1e-5)
    # without segment ids the second document does see the first
    leaky = model.apply(p, cfg, packed, positions_BT=pos)
    assert not np.allclose(leaky[:, 6:], alone2, atol=1e-3)


def test_bfloat16_compute_float32_params():
    cfg = dataclasses.replace(TINY, dtype="bfloat16")
    p = model.init(cfg, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    lo, hi = model.apply(p, cfg, x), model.apply(p, TINY, x)
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, hi, atol=0.1)   # same function, bf16 rounding only


def test_dropout_only_with_rng():
    cfg = dataclasses.replace(TINY, dropout=0.5)
    p = model.init(cfg, jax.random.key(0))
    x = jnp.zeros((1, 8), jnp.int32)
    np.testing.assert_array_equal(model.apply(p, cfg, x), model.apply(p, cfg, x))
    a = model.apply(p, cfg, x, dropout_rng=jax.random.key(1))
    b = model.apply(p, cfg, x, dropout_rng=jax.random.key(2))
    assert not np.allclose(a, b)


def test_flops_per_token_counts_every_matmul():
    # Independent count from the parameter shapes: every 2-D kernel and the output projection
    # is one multiply-add per weight per token; attention adds 6·(T+1)·D per layer (causal).
    cfg = TINY_MODERN
    p = model.init(cfg, jax.random.key(0))
    kernels = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(p)
                  if x.ndim == 2 and "wte" not in jax.tree_util.keystr(path))
    T = 32
    expected = 6 * kernels + cfg.n_layer * 6 * (T + 1) * cfg.n_embd
    assert model.flops_per_token(cfg, T) == expected
    tied = TINY
    p = model.init(tied, jax.random.key(0))
    kernels = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(p)
                  if x.ndim == 2 and "wpe" not in jax.tree_util.keystr(path))  # wte = lm_head
    assert model.flops_per_token(tied, T) == 6 * kernels + tied.n_layer * 6 * (T + 1) * tied.n_embd


def test_depth_dial_and_validation():
    d12 = depth_preset(12)
    assert (d12.n_layer, d12.n_embd, d12.n_embd % d12.n_head) == (12, 768, 0)
    assert depth_preset(24).n_embd == 2 * d12.n_embd
    with pytest.raises(ConfigError, match="n_head"):
        ModelConfig(n_embd=30, n_head=4).validate()
    with pytest.raises(ConfigError, match="n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3).validate()


def test_tied_head_gradient_matches_autodiff():
    x = jax.random.normal(jax.random.key(0), (6, 8))
    w = jax.random.normal(jax.random.key(1), (11, 8))
    g = jax.random.normal(jax.random.key(2), (6, 11))
    f_custom = lambda x, w: jnp.sum(model.tied_logits(x, w) * g)
    f_plain = lambda x, w: jnp.sum(jnp.dot(x, w.T) * g)
    np.testing.assert_allclose(model.tied_logits(x, w), jnp.dot(x, w.T), rtol=1e-6)
    for a, b in zip(jax.grad(f_custom, (0, 1))(x, w), jax.grad(f_plain, (0, 1))(x, w)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_linear_matmul_gradient_matches_autodiff():
    x = jax.random.normal(jax.random.key(0), (6, 8))
    w = jax.random.normal(jax.random.key(1), (8, 11))
    g = jax.random.normal(jax.random.key(2), (6, 11))
    f_custom = lambda x, w: jnp.sum(layers.matmul(x, w) * g)
    f_plain = lambda x, w: jnp.sum(jnp.dot(x, w) * g)
    np.testing.assert_allclose(layers.matmul(x, w), jnp.dot(x, w), rtol=1e-6)
    for a, b in zip(jax.grad(f_custom, (0, 1))(x, w), jax.grad(f_plain, (0, 1))(x, w)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY_MODERN, dtype="bfloat16")],
                         ids=["gpt2", "modern-bf16"])
def test_model_gradients_match_plain_dot(cfg, monkeypatch):
    """Every Linear's hand-written backward gives the gradients JAX's own dot rule gives."""
    params = model.init(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)

    def loss(p):
        logits = model.apply(p, cfg, tokens)
        return jnp.mean(jax.nn.logsumexp(logits.astype(jnp.float32), -1))

    ours = jax.grad(loss)(params)
    monkeypatch.setattr(layers, "matmul", jnp.dot)
    plain = jax.grad(loss)(params)
    tol = 1e-5 if cfg.dtype == "float32" else 2e-2
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(plain)):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 1e-2, err_msg=str(path))
