"""Model: published GPT-2 shapes, causality, packed-segment isolation, families, dtypes, FLOPs."""
import dataclasses
import math
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import kernels, model
from lm.layers import attention_mask
from lm.config import (Config, ConfigError, DataConfig, ModelConfig, depth_preset, gpt2_preset,
                       modern)
from tools import induction_toy

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


def test_qk_norm_gain_lifts_the_bound_on_attention_logits():
    """Without a gain a normed q·k is at most head_dim, so one key can hold at most
    e^(2·sqrt(head_dim)) times the weight of another; a learned gain lifts that bound."""
    cfg = dataclasses.replace(TINY_MODERN, qk_norm_scale=True)
    p = model.init(cfg, jax.random.key(0))
    H = cfg.n_embd // cfg.n_head
    for x in "qk":
        np.testing.assert_array_equal(p["h_0"]["attn"][f"{x}_norm"]["scale"], np.ones(H))
    assert "q_norm" not in model.init(TINY_MODERN, jax.random.key(0))["h_0"]["attn"]
    # gains of ones: the same function as the unscaled QK-norm
    x = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    np.testing.assert_allclose(model.apply(p, cfg, x),
                               model.apply(model.init(TINY_MODERN, jax.random.key(0)),
                                           TINY_MODERN, x), atol=1e-5)
    # larger gains change the function (the gain is used, not only stored)
    p2 = jax.tree.map(lambda a: a, p)
    for h in ("h_0", "h_1"):
        for n in "qk":
            p2[h]["attn"][f"{n}_norm"]["scale"] = 4.0 * np.ones(H, np.float32)
    assert not np.allclose(model.apply(p2, cfg, x), model.apply(p, cfg, x), atol=1e-3)


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


@pytest.mark.parametrize("name", ["matmul", "tied_logits"])
def test_cpu_kernels_equal_the_plain_path_gradients_included(name):
    """Each XLA:CPU kernel of lm.kernels computes what its plain-JAX twin computes, on random
    shapes, value and both gradients."""
    rng = np.random.default_rng(0)
    for M, D, F in [(6, 8, 11), (1, 16, 3), (33, 5, 64)]:
        x = jnp.asarray(rng.normal(size=(M, D)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(D, F) if name == "matmul" else (F, D)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(M, F)), jnp.float32)
        f = {impl: (lambda x, w, impl=impl: jnp.sum(getattr(kernels, name)(x, w, impl) * g))
             for impl in ("plain", "xla_cpu")}
        np.testing.assert_allclose(getattr(kernels, name)(x, w, "xla_cpu"),
                                   getattr(kernels, name)(x, w, "plain"), rtol=1e-5, atol=1e-5)
        for a, b in zip(jax.grad(f["xla_cpu"], (0, 1))(x, w), jax.grad(f["plain"], (0, 1))(x, w)):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_target_logits_and_argmax_kernels_equal_plain():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.integers(-3, 4, (3, 5, 50)), jnp.float32)        # many ties
    t = jnp.asarray(rng.integers(0, 50, (3, 5)), jnp.int32)
    np.testing.assert_array_equal(kernels.target_logits(x, t, "xla_cpu"),
                                  kernels.target_logits(x, t, "plain"))
    np.testing.assert_array_equal(kernels.argmax(x, "xla_cpu"), np.argmax(np.asarray(x), -1))
    gx = jax.grad(lambda x, impl: jnp.sum(kernels.target_logits(x, t, impl) ** 2))
    np.testing.assert_array_equal(gx(x, "xla_cpu"), gx(x, "plain"))


def test_kernel_choice_resolves_by_backend():
    assert kernels.resolve("auto") == ("xla_cpu" if jax.default_backend() == "cpu" else "plain")
    assert kernels.resolve("plain") == "plain"
    with pytest.raises(ValueError, match="kernels"):
        kernels.resolve("fast")


@pytest.mark.parametrize("cfg", [TINY, dataclasses.replace(TINY_MODERN, dtype="bfloat16")],
                         ids=["gpt2", "modern-bf16"])
def test_model_gradients_equal_across_kernel_paths(cfg):
    """The whole model's gradients are the same through the XLA:CPU kernels and the plain path."""
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)

    def grads(impl):
        c = dataclasses.replace(cfg, kernels=impl)
        params = model.init(c, jax.random.key(0))
        loss = lambda p: jnp.mean(jax.nn.logsumexp(model.apply(p, c, tokens), -1))
        return jax.grad(loss)(params)

    tol = 1e-5 if cfg.dtype == "float32" else 2e-2
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads("xla_cpu")),
                            jax.tree.leaves(grads("plain"))):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * 1e-2, err_msg=str(path))


@pytest.mark.parametrize("cfg", [TINY, TINY_MODERN], ids=["gpt2", "modern"])
def test_forward_mode_works_through_the_plain_path(cfg):
    """jax.jvp and jax.jacfwd go through the model on the plain path (custom VJPs block them)."""
    c = dataclasses.replace(cfg, kernels="plain")
    params = model.init(c, jax.random.key(0))
    tokens = jnp.array([[1, 2, 3, 4]])
    f = lambda p: model.apply(p, c, tokens)[0, -1, :3]
    tangent = jax.tree.map(jnp.ones_like, params)
    y, dy = jax.jvp(f, (params,), (tangent,))
    # the JVP is the VJP's transpose: <J t, u> == <t, Jᵀ u> for a random u
    u = jnp.asarray(np.random.default_rng(0).normal(size=3), jnp.float32)
    _, vjp = jax.vjp(f, params)
    inner = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(vjp(u)[0]), jax.tree.leaves(tangent)))
    np.testing.assert_allclose(jnp.vdot(dy, u), inner, rtol=1e-4)
    jac = jax.jacfwd(lambda w: model.apply(dict(params, wte=w), c, tokens)[0, -1, :3])(params["wte"])
    assert jac.shape == (3,) + params["wte"].shape and np.isfinite(np.asarray(jac)).all()
    with pytest.raises(TypeError):     # and the CPU kernels really are reverse-mode only
        c_cpu = dataclasses.replace(cfg, kernels="xla_cpu")
        jax.jvp(lambda p: model.apply(p, c_cpu, tokens), (params,), (tangent,))


def _onednn_or_skip():
    from lm import cpu
    if not cpu.cpu_has_bf16():
        pytest.skip("host hardware: this CPU has no bf16 matrix hardware (AVX512-BF16 / AMX): "
                    "the oneDNN path is not selected here")
    if cpu.load() is None:
        pytest.fail(f"the oneDNN kernel should build on this machine: {cpu.load_error()}")


# (1024, 256, 512): 134M multiply-adds, over the kernel's serial threshold (2^26): every thread
@pytest.mark.parametrize("shape", [(33, 64, 48), (1, 128, 256), (256, 96, 8), (1024, 256, 512)])
def test_onednn_matmul_equals_the_plain_path_gradients_included(shape):
    """bf16 matmuls through oneDNN: the value and both gradients of XLA's bf16 dot, to bf16
    precision, on random shapes (including transposed operands in the backward), below and above
    the size where the kernel starts to use more than the calling thread."""
    _onednn_or_skip()
    M, D, F = shape
    rng = np.random.default_rng(M)
    x = jnp.asarray(rng.normal(size=(M, D)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(D, F)) * 0.1, jnp.bfloat16)
    g = jnp.asarray(rng.normal(size=(M, F)), jnp.float32)
    f = lambda impl: jax.jit(jax.value_and_grad(
        lambda x, w: jnp.sum(kernels.matmul(x, w, impl).astype(jnp.float32) * g), (0, 1)))
    (v1, (dx1, dw1)), (v2, (dx2, dw2)) = f("onednn")(x, w), f("plain")(x, w)
    ref = np.asarray(x, np.float32) @ np.asarray(w, np.float32)
    out = np.asarray(kernels.matmul(x, w, "onednn"), np.float32)
    np.testing.assert_allclose(out, ref, rtol=2e-2, atol=2e-2 * np.abs(ref).max())
    assert float(v1) == pytest.approx(float(v2), rel=2e-2, abs=1e-2)
    for a, b in ((dx1, dx2), (dw1, dw2)):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=2e-2, atol=2e-2 * np.abs(b).max())
    # and the tied head
    wte = jnp.asarray(rng.normal(size=(F, D)) * 0.1, jnp.bfloat16)
    np.testing.assert_allclose(np.asarray(kernels.tied_logits(x, wte, "onednn"), np.float32),
                               np.asarray(x, np.float32) @ np.asarray(wte, np.float32).T,
                               rtol=2e-2, atol=2e-2 * float(jnp.abs(x).max()))


def test_onednn_serial_and_threaded_products_agree():
    """The same products with every call on the calling thread (LM_ONEDNN_SERIAL_MACS huge) and
    every call split over the threads (0), in two processes: the thread count changes the work
    split, not the arithmetic (and the serial scope leaves later calls their threads)."""
    _onednn_or_skip()
    code = ("import numpy as np, jax.numpy as jnp; from lm import kernels; "
            "rng = np.random.default_rng(0); outs = []\n"
            "for M, D, F in ((768, 128, 384), (1024, 256, 512), (64, 512, 128)):\n"
            "    x = jnp.asarray(rng.normal(size=(M, D)), jnp.bfloat16)\n"
            "    w = jnp.asarray(rng.normal(size=(D, F)) * 0.1, jnp.bfloat16)\n"
            "    outs.append(np.asarray(kernels.matmul(x, w, 'onednn'), np.float32).ravel())\n"
            "np.save('OUT', np.concatenate(outs))")
    res = {}
    with tempfile.TemporaryDirectory() as d:
        for name, macs in (("serial", str(1 << 40)), ("threaded", "0")):
            out = os.path.join(d, f"{name}.npy")
            env = {**os.environ, "LM_ONEDNN_SERIAL_MACS": macs,
                   "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
            r = subprocess.run([sys.executable, "-c", code.replace("OUT", out)], env=env,
                               capture_output=True, text=True, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            res[name] = np.load(out)
    np.testing.assert_allclose(res["serial"], res["threaded"], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("shape", [(1, 384, 1152), (2, 33, 64), (8, 64, 70), (13, 161, 32),
                                   (5, 1536, 200)])
def test_packed_decode_weights_give_the_products_of_the_bf16_values(shape):
    """`kernels.pack` + the few-row kernel (decode with bf16 weights): odd K, N off the 32-column
    grid (zero padding), 1-8 rows and more (blocks of 8); `decode_weights` packs the Linear
    kernels only."""
    _onednn_or_skip()
    from lm import cpu
    if not cpu.cpu_has_avx512_bf16():
        pytest.skip("host hardware: no AVX512-BF16 on this CPU: weights are not packed here")
    M, K, N = shape
    rng = np.random.default_rng(K + M)
    x = jnp.asarray(rng.normal(size=(M, K)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(K, N)) * 0.1, jnp.bfloat16)
    ref = np.asarray(x.astype(jnp.bfloat16), np.float32) @ np.asarray(w, np.float32)
    wp = kernels.pack(w)
    assert wp.shape == (-(-N // 32), (K + 1) // 2, 64) and wp.dtype == jnp.bfloat16
    out = jax.jit(lambda x, wp: kernels.matmul(x, wp, "onednn", n=N))(x, wp)
    assert out.dtype == jnp.float32 and out.shape == (M, N)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    params = model.init(TINY, jax.random.key(0))
    dw = kernels.decode_weights(params, "onednn")
    assert dw["h_0"]["attn"]["c_attn"][kernels.PACKED].ndim == 3   # 32 -> 96 outputs: packed
    assert "kernel" not in dw["h_0"]["attn"]["c_attn"]
    assert dw["wte"].shape == params["wte"].shape and dw["wte"].dtype == jnp.bfloat16
    assert dw["h_0"]["attn"]["c_attn"]["bias"].ndim == 1
    assert all(x.ndim <= 2 for x in jax.tree.leaves(kernels.decode_weights(params, "xla_cpu")))


def _avx512_bf16_or_skip():
    _onednn_or_skip()
    from lm import cpu
    if not cpu.cpu_has_avx512_bf16():
        pytest.skip("host hardware: no AVX512-BF16 on this CPU: decode runs XLA's kernels here")


# (rows, kv heads, queries per kv head, head_dim, slots)
@pytest.mark.parametrize("cache_dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", [(1, 2, 1, 16, 7), (5, 2, 3, 64, 40), (16, 4, 1, 64, 300)])
def test_decode_attention_writes_the_new_slot_and_attends_over_the_filled_ones(shape,
                                                                               cache_dtype):
    """`kernels.decode_attention` (a decode step's cache write and attention in one custom call)
    against float64 numpy: ragged positions, the first and the last slot, a no-op row past the
    buffer (writes nothing, attends to every slot), grouped queries, f32 and bf16 caches; and
    `layers.cached_attention` takes it at T = 1 on the onednn path, with XLA's path agreeing."""
    from lm.layers import cached_attention
    _avx512_bf16_or_skip()
    B, K, G, H, S = shape
    rng = np.random.default_rng(B * S + H)
    cache = [jnp.asarray(rng.normal(size=(B, K, S, H)), cache_dtype) for _ in range(2)]
    q = jnp.asarray(rng.normal(size=(B, 1, K * G, H)), jnp.float32)
    kv_new = [jnp.asarray(rng.normal(size=(B, 1, K, H)), cache_dtype) for _ in range(2)]
    pos = rng.integers(0, S, B)
    pos[0] = 0
    if B > 1:
        pos[1], pos[-1] = S - 1, S                    # the last slot; a no-op row
    kc, vc = (np.asarray(c, np.float64).copy() for c in cache)
    want = np.zeros((B, K, G, H))
    for b in range(B):
        if pos[b] < S:
            kc[b, :, pos[b]] = np.asarray(kv_new[0][b, 0], np.float64)
            vc[b, :, pos[b]] = np.asarray(kv_new[1][b, 0], np.float64)
        L = min(pos[b] + 1, S)
        qb = np.asarray(q[b, 0], np.float64).reshape(K, G, H)
        s = np.einsum("kgh,ksh->kgs", qb, kc[b, :, :L]) * H ** -0.5
        p = np.exp(s - s.max(-1, keepdims=True))
        want[b] = np.einsum("kgs,ksh->kgh", p / p.sum(-1, keepdims=True), vc[b, :, :L])

    pos_B = jnp.asarray(pos, jnp.int32)
    y, k2, v2 = jax.jit(kernels.decode_attention, static_argnums=6)(
        q.reshape(B, K, G, H), kv_new[0][:, 0], kv_new[1][:, 0], cache[0], cache[1], pos_B,
        H ** -0.5)
    assert y.dtype == jnp.float32 and k2.dtype == cache_dtype
    np.testing.assert_array_equal(np.asarray(k2, np.float64), kc)
    np.testing.assert_array_equal(np.asarray(v2, np.float64), vc)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)

    mask = attention_mask(pos_B[:, None], jnp.broadcast_to(jnp.arange(S), (B, S)))
    for impl in ("onednn", "xla_cpu"):
        out, (k3, _) = jax.jit(lambda *a: cached_attention(*a, H ** -0.5, jnp.float32, impl))(
            q, kv_new[0], kv_new[1], pos_B[:, None], mask, tuple(cache))
        np.testing.assert_array_equal(np.asarray(k3, np.float64), kc)
        np.testing.assert_allclose(np.asarray(out).reshape(B, K, G, H), want, rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 4, 8), (3, 37, 2, 16), (1, 64, 6, 64)])
def test_onednn_causal_attention_equals_xla_bf16_gradients_included(shape):
    """bf16 causal attention through oneDNN's batched matmuls (strided head views): value and
    the three gradients of XLA's bf16 attention, and causal (a later key never changes an
    earlier output)."""
    _onednn_or_skip()
    B, T, N, H = shape
    rng = np.random.default_rng(T)
    q, k, v = (jnp.asarray(rng.normal(size=shape), jnp.bfloat16) for _ in range(3))
    g = jnp.asarray(rng.normal(size=shape), jnp.float32)
    f = lambda impl: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(
        kernels.causal_attention(q, k, v, H ** -0.5, impl).astype(jnp.float32) * g), (0, 1, 2)))
    (v1, g1), (v2, g2) = f("onednn")(q, k, v), f("xla_cpu")(q, k, v)
    assert float(v1) == pytest.approx(float(v2), rel=2e-2, abs=2e-2 * float(jnp.abs(g).sum()) / g.size)
    for a, b in zip(g1, g2):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2 * np.abs(b).max())
    o = kernels.causal_attention(q, k, v, H ** -0.5, "onednn")
    k2 = k.at[:, -1].set(0)
    o2 = kernels.causal_attention(q, k2, v, H ** -0.5, "onednn")
    np.testing.assert_array_equal(np.asarray(o[:, :-1], np.float32),
                                  np.asarray(o2[:, :-1], np.float32))
    assert not np.array_equal(np.asarray(o[:, -1], np.float32), np.asarray(o2[:, -1], np.float32))


def test_onednn_attention_over_packed_documents_equals_xla_bf16():
    """With a document mask (packed pretraining rows), the oneDNN path gives XLA's values and
    gradients, and a token never sees another document (changing document 1 leaves document 2's
    outputs unchanged)."""
    _onednn_or_skip()
    B, T, N, H = 2, 24, 2, 16
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.bfloat16) for _ in range(3))
    g = jnp.asarray(rng.normal(size=(B, T, N, H)), jnp.float32)
    seg = jnp.asarray(np.repeat([[0, 1, 2]], B, 0).repeat([7, 9, 8], axis=1), jnp.int32)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = attention_mask(pos, pos, seg, seg)
    f = lambda impl: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(
        kernels.causal_attention(q, k, v, H ** -0.5, impl, mask).astype(jnp.float32) * g),
        (0, 1, 2)))
    (v1, g1), (v2, g2) = f("onednn")(q, k, v), f("xla_cpu")(q, k, v)
    assert float(v1) == pytest.approx(float(v2), rel=2e-2, abs=0.5)
    for a, b in zip(g1, g2):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, rtol=3e-2, atol=3e-2 * np.abs(b).max())
    o = kernels.causal_attention(q, k, v, H ** -0.5, "onednn", mask)
    o2 = kernels.causal_attention(q, k.at[:, :7].set(0), v.at[:, :7].set(0), H ** -0.5,
                                  "onednn", mask)
    np.testing.assert_array_equal(np.asarray(o[:, 7:], np.float32), np.asarray(o2[:, 7:],
                                                                               np.float32))
    assert not np.array_equal(np.asarray(o[:, :7], np.float32), np.asarray(o2[:, :7], np.float32))


@pytest.mark.parametrize("base", ["modern_gqa", "gpt2_mha"])
def test_onednn_model_gradients_match_xla_bf16(base):
    _onednn_or_skip()
    cfg = dataclasses.replace(TINY_MODERN if base == "modern_gqa" else TINY, dtype="bfloat16")
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)
    params = model.init(cfg, jax.random.key(0))

    def grads(impl):
        c = dataclasses.replace(cfg, kernels=impl)
        loss = lambda p: jnp.mean(jax.nn.logsumexp(model.apply(p, c, tokens), -1))
        return jax.grad(loss)(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads("onednn")),
                            jax.tree.leaves(grads("xla_cpu"))):
        np.testing.assert_allclose(a, b, rtol=5e-2, atol=5e-3, err_msg=str(path))
    # auto takes oneDNN only in a one-device process (its custom calls are not partitioned over
    # a mesh); the tests run with 8 simulated devices
    assert kernels.resolve("auto", "bfloat16") == ("onednn" if jax.device_count() == 1
                                                   else "xla_cpu")
    assert kernels.resolve("auto", "float32") == "xla_cpu"


def test_two_layers_learn_induction_and_a_causal_mask_is_what_makes_it_possible():
    """tools.induction_toy on a tiny model: the second copy of a random sequence becomes
    predictable (a head attends to the earlier occurrence), the first copy never can."""
    cfg = Config(model=modern(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32),
                 data=DataConfig(seq_len=16))
    rows = induction_toy.run(cfg, steps=200, length=8, dist="uniform", loss_on="second",
                             batch_size=32, lr=1e-2, seed=0, every=200, log=lambda s: None)
    assert rows[-1]["first"] > 0.8 * math.log(32)          # unpredictable, as it must be
    assert rows[-1]["second"] < 0.3 * rows[-1]["first"]
