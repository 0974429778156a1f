"""The sampling engine: cache exactness, ragged batches, sampling controls, compile-once, streaming,
and the tool-call path with a scripted model."""
import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lm import kernels, kvcache, model, sampling, tool_use
from lm.config import ModelConfig, modern
from lm.tokenizer import ChatTokens
from lm.tools_calc import calculate

V = 64
CONFIGS = {
    "gpt2": ModelConfig(vocab_size=V, block_size=48, n_layer=2, n_head=4, n_embd=32),
    "modern_gqa": modern(vocab_size=V, block_size=48, n_layer=2, n_head=4, n_kv_head=2,
                         n_embd=32, mlp="swiglu"),
}


_init = jax.jit(model.init, static_argnums=0)


@pytest.fixture(scope="module", params=list(CONFIGS))
def family(request):
    cfg = CONFIGS[request.param]
    return cfg, _init(cfg, jax.random.PRNGKey(1))


@pytest.fixture(scope="module")
def gpt2():
    cfg = CONFIGS["gpt2"]
    return cfg, _init(cfg, jax.random.PRNGKey(1))


PROMPTS = [[5, 9, 2, 7, 1], [3], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [8, 8]]


_forward = jax.jit(model.apply, static_argnums=1)


def test_prefill_and_decode_match_full_forward(family):
    """Ragged prefill through model.apply(cache) and through `prefill` + one-token steps give the
    full forward pass's logits at every position (float32, atol 1e-4)."""
    cfg, params = family
    rng = np.random.default_rng(0)
    B, L = 3, 24
    seq = rng.integers(0, V, (B, L)).astype(np.int32)
    full = np.asarray(_forward(params, cfg, jnp.asarray(seq)))
    lens = np.array([6, 11, 1], np.int32)

    # (1) model.apply with a cache over the ragged prompts: logits at every prompt position
    # (padding gets position S: it writes nothing).
    c = kvcache.init(cfg, B, 32)
    pos = np.where(np.arange(16)[None] < lens[:, None], np.arange(16)[None], 32)
    logits, _ = jax.jit(lambda p, t, q, c: model.apply(p, cfg, t, positions_BT=q, cache=c))(
        params, jnp.asarray(seq[:, :16]), jnp.asarray(pos), c.model_cache())
    for b in range(B):
        np.testing.assert_allclose(np.asarray(logits)[b, :lens[b]], full[b, :lens[b]], atol=1e-4)

    # (2) engine prefill (all but the last prompt token), then cached steps to position L-1.
    c = kvcache.init(cfg, B, 32)
    toks = np.where(np.arange(16)[None] < lens[:, None], seq[:, :16], 0)
    c, pending = sampling.prefill(params, cfg, c, jnp.asarray(toks), jnp.asarray(lens))
    np.testing.assert_array_equal(np.asarray(pending), seq[np.arange(B), lens - 1])
    np.testing.assert_array_equal(np.asarray(c.lengths), lens - 1)
    p = lens - 1
    while p.min() < L:
        live = p < L
        feed = seq[np.arange(B), np.minimum(p, L - 1)]
        out, c = sampling.step_logits(params, cfg, c, jnp.asarray(feed))
        for b in np.flatnonzero(live):
            np.testing.assert_allclose(np.asarray(out)[b], full[b, p[b]], atol=1e-4,
                                       err_msg=f"row {b} position {p[b]}")
        p = p + 1


def test_stacked_view_of_the_cache(gpt2):
    """kvcache.stacked gives the [L, B, S, K, H] single-array view of the per-layer buffers."""
    cfg, params = gpt2
    seq = jnp.asarray(np.random.default_rng(3).integers(0, V, (2, 10)), jnp.int32)
    c = kvcache.init(cfg, 2, 16)
    _, kv = jax.jit(lambda p, t, c: model.apply(p, cfg, t, cache=c))(params, seq, c.model_cache())
    k, v = kvcache.stacked(c.replace(k=kv["k"], v=kv["v"]))
    assert k.shape == (cfg.n_layer, 2, 16, cfg.kv_heads, cfg.head_dim)
    for i in range(cfg.n_layer):
        np.testing.assert_array_equal(k[i], jnp.swapaxes(kv["k"][i], 1, 2))
        np.testing.assert_array_equal(v[i], jnp.swapaxes(kv["v"][i], 1, 2))
    assert float(jnp.abs(k[:, :, 10:]).max()) == 0.0 and float(jnp.abs(k[:, :, :10]).min()) >= 0


def test_bfloat16_cache_close_to_full_forward():
    cfg = modern(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                 dtype="bfloat16")
    params = _init(cfg, jax.random.PRNGKey(2))
    seq = np.random.default_rng(1).integers(0, V, (2, 12)).astype(np.int32)
    full = np.asarray(_forward(params, cfg, jnp.asarray(seq)))
    c = kvcache.init(cfg, 2, 16)
    assert c.k[0].dtype == kvcache.storage_dtype(cfg)
    # a cache stored in bf16 itself: the float32 storage of the CPU kernels holds the same numbers
    c16 = kvcache.init(cfg, 2, 16, dtype=jnp.bfloat16)
    c, _ = sampling.prefill(params, cfg, c, jnp.asarray(seq[:, :8]), jnp.asarray([4, 4]))
    c16, _ = sampling.prefill(params, cfg, c16, jnp.asarray(seq[:, :8]), jnp.asarray([4, 4]))
    for p in range(3, 12):
        out, c = sampling.step_logits(params, cfg, c, jnp.asarray(seq[:, p]))
        out16, c16 = sampling.step_logits(params, cfg, c16, jnp.asarray(seq[:, p]))
        np.testing.assert_allclose(np.asarray(out), full[:, p], atol=0.1)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(out16))
    k = np.asarray(c.k[0], np.float32)
    np.testing.assert_array_equal(k, np.asarray(jnp.asarray(k).astype(jnp.bfloat16), np.float32))
    g = sampling.Engine(params, cfg).generate(PROMPTS, max_new_tokens=8, temperature=0.7, seed=0)
    assert (g.lengths == 8).all() and np.isfinite(g.logprobs).all() and (g.logprobs <= 0).all()


def test_cpu_kernel_decode_matches_xla_decode():
    """A bf16 model whose head_dim the decode-attention kernel takes (16): on the onednn path
    the cache is stored bf16, each step writes and attends through one custom call and the
    engine reads packed kernels; logits stay within bf16 noise of XLA's path, and greedy rows
    part only at near ties."""
    from lm import cpu
    if not (cpu.cpu_has_avx512_bf16() and cpu.load() is not None):
        pytest.skip("host hardware: no AVX512-BF16 (or no oneDNN build): XLA's decode here")
    base = modern(vocab_size=V, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                  dtype="bfloat16", tie_embeddings=True)        # tied, as the chat chain's
    fast, ref = (dataclasses.replace(base, kernels=k) for k in ("onednn", "xla_cpu"))
    assert kvcache.storage_dtype(fast) == jnp.bfloat16
    assert kvcache.storage_dtype(ref) == jnp.float32
    params = _init(fast, jax.random.PRNGKey(3))
    seq = jnp.asarray(np.random.default_rng(2).integers(0, V, (3, 20)), jnp.int32)
    caches = {}
    for name, cfg in (("fast", fast), ("ref", ref)):
        c, _ = sampling.prefill(params, cfg, kvcache.init(cfg, 3, 32), seq[:, :6],
                                jnp.asarray([6, 3, 1]))
        caches[name] = (cfg, c)
    for p in range(6, 20):
        outs = []
        for name, (cfg, c) in caches.items():
            out, c = sampling.step_logits(params, cfg, c, seq[:, p])
            caches[name] = (cfg, c)
            outs.append(np.asarray(out))
        np.testing.assert_allclose(outs[0], outs[1], atol=0.05 * np.abs(outs[1]).max())
    engine = sampling.Engine(params, fast)
    a = sampling.Engine(params, ref).generate(PROMPTS, max_new_tokens=10, temperature=0.0)
    b = engine.generate(PROMPTS, max_new_tokens=10, temperature=0.0)
    assert (b.lengths == 10).all()
    # it decoded with its kernels packed once (the bf16 values it computes with), other leaves
    # as they were, and the tied head's packed copy
    packed, headed = engine._packed[1], engine._headed[1]
    assert kernels.PACKED in packed["h_0"]["mlp"]["c_fc"] and packed["wte"].dtype == jnp.float32
    assert headed[kernels.HEAD].ndim == 3
    for r, prompt in enumerate(PROMPTS):     # where a row first differs: a near tie under XLA's
        i = next((j for j in range(10) if a.row(r)[j] != b.row(r)[j]), None)
        if i is not None:
            lp = np.asarray(jax.nn.log_softmax(_forward(params, ref, jnp.asarray(
                [prompt + a.row(r)[:i]]))[0, -1].astype(jnp.float32)))
            assert lp[a.row(r)[i]] - lp[b.row(r)[i]] < 0.05, (r, i)


def test_ragged_batch_equals_each_prompt_alone(family):
    cfg, params = family
    eng = sampling.Engine(params, cfg)
    together = eng.generate(PROMPTS, max_new_tokens=12, temperature=0.0)
    assert together.done.all() and (together.lengths == 12).all()
    for i, p in enumerate(PROMPTS):
        alone = eng.generate([p], max_new_tokens=12, temperature=0.0)
        assert alone.row(0) == together.row(i), f"prompt {i}"
        np.testing.assert_allclose(alone.logprobs[0], together.logprobs[i], atol=1e-5)


def test_first_token_from_the_prefill_is_a_decode_step(family):
    """`start(first_token=True)` takes each row's first token from the prefill's last logits:
    the same tokens, log-probs and top log-probs as a plain prefill and one more decode step,
    greedy and sampled, one sample or several per prompt; a budget of one ends there."""
    cfg, params = family
    eng = sampling.Engine(params, cfg)
    greedy = None
    for kw in (dict(temperature=0.0), dict(temperature=1.0, seed=3, n=2),
               dict(temperature=0.8, top_k=5, seed=1)):
        a = eng.result(eng.decode(eng.start(PROMPTS, max_new_tokens=6, top_logprobs=3, **kw), 6))
        b = eng.start(PROMPTS, max_new_tokens=6, top_logprobs=3, first_token=True, **kw)
        assert (np.asarray(b.n_gen) == 1).all() and not np.asarray(b.done).any()
        b = eng.result(eng.decode(b, 5))
        assert b.rows() == a.rows(), kw
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)
        np.testing.assert_array_equal(b.top_ids, a.top_ids)
        np.testing.assert_allclose(b.top_logprobs, a.top_logprobs, atol=1e-4)
        greedy = greedy if kw.get("temperature") else b.rows()
    one = eng.start(PROMPTS, max_new_tokens=1, temperature=0.0, first_token=True)
    assert np.asarray(one.done).all()
    assert eng.result(one).rows() == [r[:1] for r in greedy]


# Most tests below keep to one set of shapes (4 rows, <= 16 new tokens) so that they share the
# compiled prefill/decode functions; each distinct static top_k is one more decode compile.
KW = dict(max_new_tokens=10)


def test_greedy_equivalents_and_seeds(gpt2):
    cfg, params = gpt2
    eng = sampling.Engine(params, cfg)
    g = eng.generate(PROMPTS, temperature=0.0, **KW)
    greedy = g.rows()
    assert eng.generate(PROMPTS, temperature=1.0, top_k=1, seed=3, **KW).rows() == greedy
    assert eng.generate(PROMPTS, temperature=1e-6, seed=4, **KW).rows() == greedy
    assert eng.generate(PROMPTS, temperature=1.0, top_p=1e-6, seed=5, **KW).rows() == greedy
    # The log-probs are the model's own: log_softmax of the full forward pass's logits.
    seq = np.array([PROMPTS[0] + greedy[0]], np.int32)
    lp = np.asarray(jax.nn.log_softmax(_forward(params, cfg, jnp.asarray(seq)), -1))[0]
    n = len(PROMPTS[0])
    want = lp[np.arange(n - 1, seq.shape[1] - 1), seq[0, n:]]
    np.testing.assert_allclose(g.logprobs[0, :10], want, atol=1e-4)

    a = eng.generate(PROMPTS, temperature=1.0, seed=7, **KW)
    assert eng.generate(PROMPTS, temperature=1.0, seed=7, **KW).rows() == a.rows()
    assert eng.generate(PROMPTS, temperature=1.0, seed=8, **KW).rows() != a.rows()
    # A row's randomness is its (seed, sample_id), not its place in the batch.
    rev = eng.generate(PROMPTS[::-1], temperature=1.0, seed=7, sample_ids=[3, 2, 1, 0], **KW)
    assert rev.rows() == a.rows()[::-1]
    # n samples of one prompt share its prefill; different rows draw different samples.
    s = eng.generate([PROMPTS[0]], n=4, temperature=1.0, seed=1, **KW)
    assert s.prompt_index.tolist() == [0, 0, 0, 0]
    assert len({tuple(r) for r in s.rows()}) == 4
    # n greedy samples all equal the single greedy continuation.
    ng = eng.generate(PROMPTS[:2], n=2, temperature=0.0, **KW)
    assert ng.rows() == [greedy[0]] * 2 + [greedy[1]] * 2
    assert ng.prompt_index.tolist() == [0, 0, 1, 1]


def test_sampler_draw_is_jax_categorical():
    """The sampler's Gumbel-max draw is jax.random.categorical's, key for key."""
    x = np.random.default_rng(0).integers(-3, 4, (16, 50)).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), 16)
    want = jax.vmap(jax.random.categorical)(keys, jnp.asarray(x) / 0.7)
    for impl in ("plain", "xla_cpu"):
        got = sampling.Sampler.make(16, 50, 0.7, impl=impl).next_tokens(jnp.asarray(x), keys)
        np.testing.assert_array_equal(got, want)


def test_per_row_sampler_settings():
    """Rows of one batch sample with their own settings: greedy rows are the argmax, top-k rows
    stay in their top k, top-p rows in their nucleus; the rest is a plain draw."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(4, 40)) * 3, jnp.float32)
    s = sampling.Sampler.make(4, 40, temperature=[0.0, 2.0, 2.0, 2.0], top_k=[0, 3, 0, 0],
                              top_p=[1.0, 1.0, 0.5, 1.0])
    assert s.k_max == 40           # a top-p row without top-k looks at the whole vocabulary
    order = np.argsort(-np.asarray(x), -1)
    p = np.asarray(jax.nn.softmax(x / 2.0, -1))        # the nucleus at the row's temperature
    nucleus = set(order[2][:np.searchsorted(np.cumsum(p[2][order[2]]), 0.5) + 1].tolist())
    seen = [set() for _ in range(4)]
    draw = jax.jit(lambda i: s.next_tokens(x, jax.random.split(jax.random.key(i), 4)))
    for i in range(200):                       # (jitted once: eager, each call recompiles)
        toks = np.asarray(draw(i))
        for r in range(4):
            seen[r].add(int(toks[r]))
    assert seen[0] == {int(order[0][0])}
    assert seen[1] <= set(order[1][:3].tolist()) and len(seen[1]) > 1
    assert seen[2] <= nucleus
    assert len(seen[3]) > 3
    with pytest.raises(ValueError, match="temperature"):
        sampling.Sampler.make(2, 40, temperature=-1.0)


def test_decoding_through_a_head_copy_changes_nothing(gpt2):
    """Batched decode reads a [D, V] copy of the tied head; tokens and log-probs must equal the
    wte path's, and new params (as an RL loop swaps them in) must not reuse the old copy."""
    cfg, params = gpt2
    copy = sampling.Engine(params, cfg, settings=sampling.EngineSettings(head_copy_rows=1))
    assert sampling.Engine(params, dataclasses.replace(cfg, kernels="plain")).head_copy_rows == 0
    plain = sampling.Engine(params, cfg, settings=sampling.EngineSettings(head_copy_rows=0))
    for p in (params, _init(cfg, jax.random.PRNGKey(7))):
        copy.params = plain.params = p
        a = copy.generate(PROMPTS, temperature=0.0, **KW)
        b = plain.generate(PROMPTS, temperature=0.0, **KW)
        assert a.rows() == b.rows()
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
        assert copy._headed[0] is p and kernels.HEAD in copy._headed[1]


def test_top_k_restricts_support(gpt2):
    cfg, params = gpt2
    eng = sampling.Engine(params, cfg)
    g = eng.generate([PROMPTS[0]], n=4, temperature=5.0, top_k=3, seed=0, **KW)
    logits = np.asarray(_forward(params, cfg, jnp.asarray([PROMPTS[0]])))[0, -1]
    allowed = set(np.argsort(-logits)[:3].tolist())
    assert {r[0] for r in g.rows()} <= allowed


def test_stop_tokens_budget_and_full_cache(gpt2):
    cfg, params = gpt2
    eng = sampling.Engine(params, cfg)
    greedy = eng.generate(PROMPTS, temperature=0.0, **KW)
    stops = [[greedy.row(0)[3]], [greedy.row(1)[5], 63], [], [greedy.row(3)[0]]]
    g = eng.generate(PROMPTS, temperature=0.0, stop_tokens=stops, **KW)
    for r in (0, 1, 3):
        first = greedy.row(r).index(stops[r][0])        # the first occurrence ends the row
        assert g.row(r) == greedy.row(r)[:first + 1] and g.stopped[r] and g.done[r]
        assert g.row(r, strip_stop=True) == greedy.row(r)[:first]
    assert g.row(2) == greedy.row(2) and not g.stopped[2] and g.done[2]
    # Budgets: per prompt.
    b = eng.generate(PROMPTS, temperature=0.0, max_new_tokens=[3, 10, 0, 7])
    assert b.lengths.tolist() == [3, 10, 0, 7] and b.done.all()
    assert b.row(1) == greedy.row(1) and b.row(3) == greedy.row(3)[:7]
    # A prompt that nearly fills the context: the row ends when the cache is full (the last
    # token is sampled from the full context and never fed).
    long = list(range(1, cfg.block_size - 2))
    g = eng.generate([long], max_new_tokens=20, temperature=0.0)
    assert g.done[0] and not g.stopped[0] and g.lengths[0] == cfg.block_size - len(long) + 1


def test_streaming_matches_generate_and_compiles_once(gpt2, caplog):
    cfg, params = gpt2
    eng = sampling.Engine(params, cfg)
    kw = dict(max_new_tokens=16, temperature=0.8, top_k=3, seed=11)
    ref = eng.generate(PROMPTS, **kw)
    it = eng.stream(PROMPTS, chunk=6, **kw)
    got = [[] for _ in PROMPTS]
    chunks = 0
    while True:
        try:
            ch = next(it)
        except StopIteration as stop:
            final = stop.value
            break
        chunks += 1
        for r, toks in enumerate(ch.tokens):
            got[r] += toks
    assert chunks == 3 and got == ref.rows() and final.rows() == ref.rows()
    # Same shapes again (other prompts in the same buckets, other seed / temperature / budget /
    # chunk size): nothing compiles.
    other = [[p % 7 + 1 for p in q] for q in PROMPTS]
    caplog.clear()
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        eng.generate(other, max_new_tokens=16, temperature=0.5, top_k=3, seed=12)
        eng.generate(PROMPTS, max_new_tokens=13, temperature=0.9, top_k=3, seed=13)
        list(eng.stream(other, chunk=5, **kw))
    compiles = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert compiles == []


def test_growing_cache_gives_the_full_size_results(family):
    """The cache starts at the prompts' size and grows between device calls (a step attends over
    the whole buffer, so that is what makes it cheaper); nothing else may change: tokens,
    log-probs, stops, budgets, and the end of a row at the final length."""
    cfg, params = family
    kw = dict(n=2, max_new_tokens=[30, 3, 40, 20], temperature=0.9, top_k=5, seed=3,
              stop_tokens=[[7], [], [], []])
    fixed = sampling.Engine(params, cfg, settings=sampling.EngineSettings(grow_cache=False,
                                                                          len_multiple=8))
    ref = fixed.generate(PROMPTS, **kw)
    eng = sampling.Engine(params, cfg, settings=sampling.EngineSettings(len_multiple=8))
    st = eng.start(PROMPTS, **kw)
    sizes = [st.cache.max_len]
    while not np.asarray(st.done).all():
        st = eng.decode(st, 5)
        sizes.append(st.cache.max_len)
    got = eng.result(st)
    assert sizes[0] < sizes[-1] == cfg.block_size and sizes == sorted(sizes), sizes
    assert got.rows() == ref.rows()
    np.testing.assert_allclose(got.logprobs, ref.logprobs, atol=1e-5)
    assert (got.lengths == ref.lengths).all() and (got.stopped == ref.stopped).all()
    # The row that reached the context's end stopped there, as with a full-size cache.
    assert got.lengths[4] == cfg.block_size - len(PROMPTS[2]) + 1


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_batch_sharded_generation_matches(gpt2):
    """Rows are independent: a cache / decode state split over 8 devices along the batch gives
    the same tokens as one device."""
    cfg, params = gpt2
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    prompts = PROMPTS * 2
    kw = dict(temperature=0.0, max_new_tokens=30)
    ref = sampling.Engine(params, cfg, settings=sampling.EngineSettings(grow_cache=False)
                          ).generate(prompts, **kw)
    eng = sampling.Engine(params, cfg, settings=sampling.EngineSettings(mesh=mesh, len_multiple=8))
    st = eng.start(prompts, **kw)
    first = st.cache.max_len
    assert len(st.cache.k[0].sharding.device_set) == 8
    st = eng.decode(st, 30)
    assert len(st.tokens.sharding.device_set) == 8
    assert st.cache.max_len > first
    assert len(st.cache.k[0].sharding.device_set) == 8     # still split after growing
    assert eng.result(st).rows() == ref.rows()


# ------------------------------------------------------------------------------------ tools

CHARS = "0123456789+-*/() .abcdefghijklmnopqrstuvwxyzE:'"
PY_START, PY_END, OUT_START, OUT_END, BOS, END = range(V - 6, V)
TOOLS = ChatTokens(bos=BOS, user_start=-1, user_end=-1, assistant_start=-1, assistant_end=END,
                   python_start=PY_START, python_end=PY_END, output_start=OUT_START,
                   output_end=OUT_END)


def encode(text):
    return [CHARS.index(c) for c in text.lower() if c in CHARS]


def decode(ids):
    return "".join(CHARS[i] for i in ids if i < len(CHARS))


SCRIPTED = modern(vocab_size=V, block_size=64, n_layer=1, n_head=4, n_embd=V, mlp="relu2",
                  logit_softcap=0.0)


def scripted_params(transitions: dict[int, int]):
    """A model whose greedy next token is `transitions[current token]` (attention and MLP outputs
    zeroed, one-hot embeddings, the LM head holds the table)."""
    p = _init(SCRIPTED, jax.random.PRNGKey(0))
    p = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "c_proj" in jax.tree_util.keystr(path) else x, p)
    p["wte"] = jnp.eye(V)
    head = np.zeros((V, V), np.float32)
    for a, b in transitions.items():
        head[a, b] = 10.0
    p["lm_head"]["kernel"] = jnp.asarray(head)
    return p


def script(*pairs):
    seq = {}
    for chain in pairs:
        for a, b in zip(chain, chain[1:]):
            seq[a] = b
    return seq


def c(s):
    return encode(s)


def test_tool_call_with_scripted_model():
    # Row 0: BOS -> <py> 2 + 3 </py> ; forced: <out> 5 </out> ; then OUT_END -> END (a stop).
    # Row 1: 'a' -> 'b' -> 'c' -> END, no tool call (runs on while row 0 waits for the host).
    trans = script([BOS, PY_START, *c("2+3"), PY_END], [OUT_END, END], [*c("abc"), END])
    eng = sampling.Engine(scripted_params(trans), SCRIPTED, tools=TOOLS,
                          tool_fn=tool_use.calculator_tool(encode, decode))
    kw = dict(max_new_tokens=40, temperature=0.0, stop_tokens=[END])
    g = eng.generate([[BOS], c("a")], **kw)
    want = [PY_START, *c("2+3"), PY_END, OUT_START, *c("5"), OUT_END, END]
    assert g.row(0) == want
    assert g.forced[0].tolist()[:len(want) + 1] == [False] * 5 + [True] * 3 + [False] * 2
    assert g.row(1) == [*c("bc"), END] and not g.forced[1].any()
    assert g.stopped.all()

    # A failing expression: the output is an error string, the engine carries on.
    trans = script([BOS, PY_START, *c("1/0"), PY_END], [OUT_END, END], [*c("abc"), END])
    eng.params = scripted_params(trans)
    g = eng.generate([[BOS], c("a")], **kw)
    out = g.row(0)
    i, j = out.index(OUT_START), out.index(OUT_END)
    assert decode(out[i + 1:j]) == "error: division by zero"
    assert g.forced[0, i:j + 1].all() and not g.forced[0, :i].any() and out[-1] == END
    # The engine hands the expression's tokens to the tool and writes back what it returns (a
    # bigram model can't write 9**99999 itself, so the spy evaluates that instead).
    seen = []

    def spy(ids):
        seen.append(decode(ids))
        return encode(calculate("9**99999"))
    eng2 = sampling.Engine(eng.params, SCRIPTED, tools=TOOLS, tool_fn=spy)
    out = eng2.generate([[BOS], c("a")], **kw).row(0)
    assert seen == ["1/0"]
    assert decode(out[out.index(OUT_START) + 1:out.index(OUT_END)]) == "error: exponent too large"

    # A tool function that raises: empty output, no exception; chunks of 3 steps.
    def boom(_):
        raise RuntimeError("tool crashed")
    eng3 = sampling.Engine(eng.params, SCRIPTED, tools=TOOLS, tool_fn=boom)
    g = eng3.generate([[BOS], c("a")], chunk=3, **kw)
    assert g.row(0)[-3:] == [OUT_START, OUT_END, END] and g.forced[0, len(g.row(0)) - 3:][:2].all()


def test_generate_text_runs_past_the_context():
    class Tok:
        def encode(self, s):
            return [ord(ch) % V for ch in s]

        def decode(self, ids):
            return "".join(chr(48 + i % 40) for i in ids)

    cfg, params = CONFIGS["gpt2"], _init(CONFIGS["gpt2"], jax.random.PRNGKey(1))
    text = sampling.generate_text(params, cfg, Tok(), "hello", 70, temperature=1.0, top_k=5,
                                  seed=0)
    assert len(text) == 70


def test_decode_loop_does_not_copy_the_tied_head(gpt2):
    """The tied head is read as stored inside the decode loop: `x @ wte.T` made XLA:CPU copy wteᵀ
    at every step (a [D, V] buffer, 12.6 MB per token on the `small` config)."""
    import re
    cfg, params = gpt2
    cfg = dataclasses.replace(cfg, kernels="xla_cpu")
    eng = sampling.Engine(params, cfg)
    st = eng.start([[1, 2, 3]], max_new_tokens=8, temperature=0.0)
    hlo = sampling.decode.lower(params, cfg, st, jnp.asarray(4, jnp.int32)).compile().as_text()
    # The check below looks for [D, V] copies in HLO text; first make sure that text still has
    # the form it expects (the wte parameter, instructions named with their shapes), so a change
    # of XLA's format fails here instead of passing silently.
    wte = rf"f32\[{cfg.vocab_size},{cfg.n_embd}\]\{{1,0\}} parameter\(\d+\)"
    assert re.search(wte, hlo), "HLO text format changed: no wte parameter found"
    assert re.search(r"= f32\[[\d,]+\]\{[\d,]+\} (?:copy|transpose|fusion)\(", hlo)
    d_v = rf"f32\[{cfg.n_embd},{cfg.vocab_size}\]\{{[01,]+\}} (?:copy|transpose)\("
    assert not re.findall(d_v, hlo)
    # the plain path (`x @ wte.T`) does make the copy: the pattern finds what it looks for
    plain = dataclasses.replace(cfg, kernels="plain")
    st = sampling.Engine(params, plain).start([[1, 2, 3]], max_new_tokens=8, temperature=0.0)
    hlo = sampling.decode.lower(params, plain, st, jnp.asarray(4, jnp.int32)).compile().as_text()
    assert re.findall(d_v, hlo)


def test_bfloat16_weights_greedy_matches_float32_or_differs_only_at_near_ties(family):
    """The engine with bf16 weights (on a CPU with the bf16 kernels: fp32 activations and cache,
    matmuls reading the bf16 weights) against the fp32 engine, greedy on the sampling prompts.
    Where a row first differs, bf16's token must be a near tie under fp32: its fp32 log-prob within
    0.05 of the fp32 choice's (the bound documented in docs/performance.md)."""
    cfg, params = family
    f32 = sampling.Engine(params, cfg).generate(PROMPTS, max_new_tokens=16, temperature=0.0)
    b16 = sampling.Engine(params, cfg, settings=sampling.EngineSettings(weights="bfloat16")).generate(
        PROMPTS, max_new_tokens=16, temperature=0.0)
    assert (b16.lengths == 16).all()
    same = 0
    for r, prompt in enumerate(PROMPTS):
        a, b = f32.row(r), b16.row(r)
        if a == b:
            same += 1
            continue
        i = next(j for j in range(16) if a[j] != b[j])
        logits = _forward(params, cfg, jnp.asarray([prompt + a[:i]]))[0, -1]
        lp = np.asarray(jax.nn.log_softmax(logits))
        assert lp[a[i]] - lp[b[i]] < 0.05, (r, i, a[i], b[i], lp[a[i]], lp[b[i]])
    assert same >= len(PROMPTS) // 2          # most rows are identical
