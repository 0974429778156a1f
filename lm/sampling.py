"""The sampling engine: jitted KV-cache prefill and a `lax.while_loop` decode over ragged rows,
per-row sampling settings and PRNG keys, stop tokens, `n` samples per prompt from one prefill,
streaming in chunks, and tool calls (`lm.tool_use`).

Pure, jitted pieces (the cache and state are donated and updated in place):

    prefill(params, cfg, cache, tokens_BT, lengths_B) -> (cache, pending_B)
        Appends each row's prompt to the cache in ONE forward call (rows of different lengths
        are padded to a bucket; padding gets position S = "write nothing"). The prompt's last
        token becomes the row's *pending* token: the first decode step feeds it.
    decode(params, cfg, state, max_steps) -> state
        Up to `max_steps` steps inside one `lax.while_loop` (no host round trip per token). Each
        step feeds every runnable row's pending token at the row's own position, picks the next
        token (`Sampler.next_tokens`, or the row's forced tool-output token), records token,
        log-prob and forced flag, and finishes rows on a stop token, their budget or a full
        cache. Finished and tool-parked rows ride along as no-ops (position S).
    step_logits(params, cfg, cache, tokens_B) -> (logits_BV, cache)
        One token per row at `cache.lengths`: scoring and tests.

Randomness: row r's token i uses `fold_in(fold_in(key(seed), sample_id[r]), i)`, so samples do
not depend on chunking, batch composition or which rows finished first. Log-probs are the
model's own (temperature 1, unfiltered): what policy-gradient losses recompute.

Host side, `Engine` (token ids in, token ids out; the tokenizer only for tool text):

    eng = Engine(params, cfg, tokenizer=tok, tools=tok.chat)     # EngineSettings: how it runs
    out = eng.generate([[1, 2, 3], [4, 5]], n=4, max_new_tokens=64, temperature=0.8, top_k=50,
                       stop_tokens=tok.chat.stops)
    out.tokens, out.logprobs, out.forced, out.lengths, out.done, out.stopped, out.prompt_index
    for chunk in eng.stream(prompts, chunk=16, ...): ...     # one Chunk per host round trip
    st = eng.start(prompts, ...); st = eng.decode(st, 64); eng.result(st)   # the pieces

`generate_text(params, cfg, tokenizer, prompt, max_new_tokens, ...)` is the trainer's end-of-run
sample on top of the engine.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lm import kernels, kvcache, model, structured, tool_use
from lm.config import ModelConfig
from lm.kvcache import KVCache
from lm.tokenizer import ChatTokens
from lm.search import engine_tool
from lm.tool_use import ToolState

Array = jax.Array

# ------------------------------------------------------------------------------------ sizes

def bucket(n: int, minimum: int = 8) -> int:
    """Next power of two >= n (at least `minimum`): bounds the number of compiled shapes."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


# ------------------------------------------------------------------------------------ sampler

@struct.dataclass
class Sampler:
    """Per-row sampling settings (traced: changing them does not recompile).

    temperature 0 = greedy; top_k 0 = off; top_p 1 = off. `k_max` (static) is how many
    candidates top-k / top-p look at: 0 when no row uses either, else at least every row's top_k
    (the vocabulary when a row uses top-p alone).
    """
    temperature: Array      # [R] f32
    top_k: Array            # [R] int32
    top_p: Array            # [R] f32
    k_max: int = struct.field(pytree_node=False, default=0)
    impl: str = struct.field(pytree_node=False, default="plain")

    @classmethod
    def make(cls, rows: int, vocab: int, temperature=1.0, top_k=0, top_p=1.0,
             impl: str = "plain") -> "Sampler":
        """From scalars or per-row sequences (host values)."""
        t = np.broadcast_to(np.asarray(temperature, np.float64), (rows,))
        k = np.broadcast_to(np.asarray(top_k, np.float64), (rows,))
        p = np.broadcast_to(np.asarray(top_p, np.float64), (rows,))
        if not (np.isfinite(t).all() and np.isfinite(p).all()) or (t < 0).any() \
                or (k < 0).any() or ((p <= 0) | (p > 1)).any():
            raise ValueError("sampling: temperature must be >= 0, top_k >= 0, top_p in (0, 1]")
        # what float32 / int32 cannot hold means the same here: a top_k past the vocabulary is
        # the whole vocabulary, a top_p under float32's tiniest keeps the first candidate only
        k = np.minimum(k, vocab).astype(np.int32)
        p = np.maximum(p, np.finfo(np.float32).tiny).astype(np.float32)
        t = np.minimum(t, np.finfo(np.float32).max).astype(np.float32)
        live = t > 0
        if (live & (p < 1) & (k == 0)).any():
            k_max = vocab
        elif (live & (k > 0)).any():
            k_max = min(vocab, bucket(int(k[live].max())))
        else:
            k_max = 0
        return cls(jnp.asarray(t), jnp.asarray(k), jnp.asarray(p), k_max=k_max, impl=impl)

    def repeat(self, n: int) -> "Sampler":
        return self if n == 1 else jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), self)

    def next_tokens(self, logits_RV: Array, keys_R: Array) -> Array:
        """One token per row: greedy where temperature is 0, else a draw from softmax(logits / T)
        restricted to the row's top-k and to its smallest set of probability >= top_p."""
        greedy = kernels.argmax(logits_RV, self.impl)

        def categorical(x_RC):          # the Gumbel-max trick, one key per row
            g = jax.vmap(lambda k: jax.random.gumbel(k, x_RC.shape[1:], x_RC.dtype))(keys_R)
            return kernels.argmax(x_RC + g, self.impl)

        def stochastic(_):
            x_RV = logits_RV / jnp.maximum(self.temperature, 1e-6)[:, None]
            if not self.k_max:
                tok = categorical(x_RV)
            else:
                vals_RC, idx_RC = jax.lax.top_k(x_RV, self.k_max)        # sorted, descending
                rank = jnp.arange(self.k_max)[None, :]
                k = jnp.where(self.top_k > 0, self.top_k, self.k_max)[:, None]
                vals_RC = jnp.where(rank < k, vals_RC, -jnp.inf)
                p_RC = jax.nn.softmax(vals_RC, axis=-1)
                before = jnp.cumsum(p_RC, axis=-1) - p_RC     # mass strictly before a candidate
                keep = (before < self.top_p[:, None]) | (self.top_p[:, None] >= 1.0)
                vals_RC = jnp.where(keep, vals_RC, -jnp.inf)  # always keeps the first
                choice = categorical(vals_RC)
                tok = jnp.take_along_axis(idx_RC, choice[:, None], axis=1)[:, 0]
            return jnp.where(self.temperature > 0, tok.astype(jnp.int32), greedy)

        return jax.lax.cond(jnp.any(self.temperature > 0), stochastic, lambda _: greedy, None)


# ------------------------------------------------------------------------------------ state

@struct.dataclass
class DecodeState:
    cache: KVCache
    pending: Array          # [R] int32 token to feed next (at position cache.lengths)
    keys: Array             # [R] PRNG keys (typed)
    n_gen: Array            # [R] int32 tokens generated so far (sampled + forced)
    max_new: Array          # [R] int32 budget of new tokens
    stop: Array             # [R, NS] int32 stop ids (-1 = none)
    done: Array             # [R] bool finished: stop token, budget, or full cache
    stopped: Array          # [R] bool finished by a stop token
    tokens: Array           # [R, N] int32 generated tokens
    logprobs: Array         # [R, N] f32 log p(token) under the model (temperature 1)
    forced: Array           # [R, N] bool the token was forced (tool output), not sampled
    top_ids: Array          # [R, N, K] int32 the K most likely tokens at each step (K may be 0)
    top_logprobs: Array     # [R, N, K] f32 their log-probs (temperature 1)
    sampler: Sampler
    tools: Optional[ToolState]   # None: no tool calls
    mask: Optional[structured.MaskState]   # None: no row can be constrained by a grammar
    limit: Array            # int32 scalar: a row ends when it holds this many tokens (the final
                            # cache length; the buffer itself may be shorter and grow, see Engine)
    n: int = struct.field(pytree_node=False, default=1)             # samples per prompt

    def runnable(self) -> Array:
        """[R] bool: rows the next decode step feeds (not finished, not parked on a tool)."""
        run = ~self.done
        if self.tools is not None:
            run &= ~self.tools.waiting
        if self.mask is not None:
            run &= ~self.mask.waiting
        return run

    def parked(self) -> Array:
        """[R] bool: unfinished rows that wait for the host (a tool result, a grammar mask)."""
        return ~self.done & ~self.runnable()


# ------------------------------------------------------------------------------------ pure fns

def _append(params, cfg: ModelConfig, cache: KVCache, tokens_BT: Array, n_B: Array,
            logits_at_B: Optional[Array] = None):
    """Write `tokens_BT[b, :n_B[b]]` into row b at positions cache.lengths[b] + t (one forward
    call; padding and positions past the cache write nothing); (cache, the logits at
    `logits_at_B` or None)."""
    T = tokens_BT.shape[1]
    S = cache.max_len
    t_T = jnp.arange(T, dtype=jnp.int32)
    pos_BT = cache.lengths[:, None] + t_T[None, :]
    pos_BT = jnp.where((t_T[None, :] < n_B[:, None]) & (pos_BT < S), pos_BT, S)
    logits, kv = model.apply(params, cfg, tokens_BT, positions_BT=pos_BT,
                             cache=cache.model_cache(), logits_at_B=logits_at_B)
    lengths = jnp.minimum(cache.lengths + n_B, S)
    return KVCache(k=kv["k"], v=kv["v"], lengths=lengths), (
        None if logits_at_B is None else logits[:, 0])


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def prefill(params, cfg: ModelConfig, cache: KVCache, tokens_BT: Array, lengths_B: Array):
    """Append `tokens_BT[b, :lengths_B[b]]` to row b (at positions cache.lengths[b] + t).

    All but each row's last token go into the cache in one forward call; the last one is
    returned as the row's pending token (the first decode step feeds it). lengths_B >= 1.
    """
    n_B = jnp.maximum(lengths_B - 1, 0)
    cache, _ = _append(params, cfg, cache, tokens_BT, n_B)
    return cache, jnp.take_along_axis(tokens_BT, n_B[:, None], axis=1)[:, 0]


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def prefill_last(params, cfg: ModelConfig, cache: KVCache, tokens_BT: Array, lengths_B: Array):
    """Append all of `tokens_BT[b, :lengths_B[b]]` to row b; (cache, logits_BV at each row's
    last token): `prefill` and the first decode step's forward in one call, so a row's first
    token comes from these logits (`take_token`) without another pass. lengths_B >= 1."""
    return _append(params, cfg, cache, tokens_BT, lengths_B, logits_at_B=lengths_B - 1)


@functools.partial(jax.jit, donate_argnames=("state",))
def _first_step(state: DecodeState, logits_PV: Array) -> DecodeState:
    """Every runnable row takes its first token from its prompt's last logits (`prefill_last`)."""
    return take_token(state, jnp.repeat(logits_PV, state.n, axis=0), state.runnable())


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def step_logits(params, cfg: ModelConfig, cache: KVCache, tokens_B: Array):
    """Feed one token per row at position cache.lengths; (logits_BV, cache advanced by one)."""
    S = cache.max_len
    pos = jnp.where(cache.lengths < S, cache.lengths, S)
    logits, kv = model.apply(params, cfg, tokens_B[:, None], positions_BT=pos[:, None],
                             cache=cache.model_cache())
    return logits[:, 0], KVCache(k=kv["k"], v=kv["v"],
                                 lengths=jnp.minimum(cache.lengths + 1, S))


def take_token(st: DecodeState, logits_RV: Array, run: Array) -> DecodeState:
    """One decode step's bookkeeping, given the logits of the token each `run` row just fed
    (its key/value already in the cache): choose the next token (the grammar mask, the sampler,
    a forced tool token), record it with its log-probs, and finish rows on a stop token, the
    budget or a full cache. Shared by `decode` and a prefill that computes the last logits."""
    R, N = st.tokens.shape
    rows = jnp.arange(R)
    allowed = logits_RV if st.mask is None else structured.apply(st.mask, logits_RV)
    tok = st.sampler.next_tokens(allowed, jax.vmap(jax.random.fold_in)(st.keys, st.n_gen))
    forced = jnp.zeros((R,), bool)
    if st.tools is not None:
        forced_tok, forced = tool_use.next_forced(st.tools)
        tok = jnp.where(forced, forced_tok, tok)
    lse = jax.nn.logsumexp(logits_RV, axis=-1)
    logp = jnp.take_along_axis(logits_RV, tok[:, None], axis=1)[:, 0] - lse

    at = (rows, jnp.where(run, st.n_gen, N))                       # N: dropped
    n_gen = st.n_gen + run.astype(jnp.int32)
    hit_stop = run & ~forced & jnp.any(tok[:, None] == st.stop, axis=-1)
    done = st.done | (run & (hit_stop | (n_gen >= st.max_new) | (st.cache.lengths >= st.limit)))
    tools = st.tools
    if tools is not None:
        tools = tool_use.advance(tools, tok, run, forced, n_gen, done)
    st = st.replace(
        pending=jnp.where(run, tok, st.pending), n_gen=n_gen, done=done,
        stopped=st.stopped | hit_stop,
        tokens=st.tokens.at[at].set(tok, mode="drop"),
        logprobs=st.logprobs.at[at].set(logp, mode="drop"),
        forced=st.forced.at[at].set(forced, mode="drop"), tools=tools,
        mask=None if st.mask is None else structured.advance(st.mask, run))
    K = st.top_ids.shape[-1]
    if K:                                   # static: only when top log-probs are asked for
        top_v, top_i = jax.lax.top_k(logits_RV, K)
        st = st.replace(top_ids=st.top_ids.at[at].set(top_i, mode="drop"),
                        top_logprobs=st.top_logprobs.at[at].set(top_v - lse[:, None],
                                                                mode="drop"))
    return st


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def decode(params, cfg: ModelConfig, state: DecodeState, max_steps: Array) -> DecodeState:
    """Run up to `max_steps` decode steps in one `lax.while_loop` (see the module docstring).
    `params` may hold decode layouts (`lm.kernels.with_head_copy`, packed weights)."""
    S = state.cache.max_len

    def cond(carry):
        st, i = carry
        return (i < max_steps) & jnp.any(st.runnable())

    def body(carry):
        st, i = carry
        run = st.runnable()
        pos = jnp.where(run, st.cache.lengths, S)                    # S: a no-op row
        logits, kv = model.apply(params, cfg, st.pending[:, None], positions_BT=pos[:, None],
                                 cache=st.cache.model_cache())
        st = st.replace(cache=KVCache(k=kv["k"], v=kv["v"],
                                      lengths=st.cache.lengths + run.astype(jnp.int32)))
        return take_token(st, logits[:, 0], run), i + 1

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))
    return state


def _init_state_impl(cache: KVCache, pending: Array, seed: Array, sample_ids: Array,
                     max_new: Array, stop: Array, limit: Array, sampler: Sampler,
                     tools: Optional[ChatTokens], n: int, N: int, Q: int,
                     K: int = 0, constrained: Optional[Array] = None,
                     V: int = 0) -> DecodeState:
    cache = kvcache.repeat_rows(cache, n)
    pending = jnp.repeat(pending, n, axis=0)
    R = pending.shape[0]
    base = jax.random.key(seed)
    return DecodeState(
        cache=cache, pending=pending,
        keys=jax.vmap(lambda s: jax.random.fold_in(base, s))(sample_ids),
        n_gen=jnp.zeros((R,), jnp.int32), max_new=max_new, stop=stop, done=max_new <= 0,
        stopped=jnp.zeros((R,), bool), tokens=jnp.zeros((R, N), jnp.int32),
        logprobs=jnp.zeros((R, N), jnp.float32), forced=jnp.zeros((R, N), bool),
        top_ids=jnp.zeros((R, N, K), jnp.int32), top_logprobs=jnp.zeros((R, N, K), jnp.float32),
        sampler=sampler.repeat(n), tools=None if tools is None else tool_use.init(tools, R, Q),
        mask=None if constrained is None else structured.init(R, V, jnp.repeat(constrained, n)),
        limit=limit, n=n)


# n == 1 donates the prefilled cache straight into the state; n > 1 builds new (repeated) buffers.
_STATIC = ("tools", "n", "N", "Q", "K", "V")
_init_state_donate = jax.jit(_init_state_impl, static_argnames=_STATIC, donate_argnames=("cache",))
_init_state_copy = jax.jit(_init_state_impl, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=("cfg", "batch", "max_len"))
def _new_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    return kvcache.init(cfg, batch, max_len)


_with_head_copy = jax.jit(kernels.with_head_copy, static_argnums=(1, 2))
_decode_weights = jax.jit(kernels.decode_weights, static_argnums=(1, 2))


_take_rows = jax.jit(kvcache.take_rows)


@functools.partial(jax.jit, static_argnames=("max_len",))   # a bigger buffer: nothing to donate
def _grow(cache: KVCache, max_len: int) -> KVCache:
    return kvcache.grow(cache, max_len)


@functools.partial(jax.jit, donate_argnames=("state",))
def _insert_rows(state: DecodeState, sub: DecodeState, slots: Array) -> DecodeState:
    """`sub`'s rows written into `state` at `slots` (every per-row leaf; the scalar limit stays).
    One dynamic-update per row (slots is static in length): XLA writes those in place in the
    donated buffers, where a scatter (`.at[slots].set`) copied every cache buffer (30 ms for 16
    slots of 512, against 3 ms; docs/performance.md)."""
    limit = state.limit

    def rows(a, b):
        for i in range(b.shape[0]):
            a = jax.lax.dynamic_update_index_in_dim(a, b[i].astype(a.dtype), slots[i], 0)
        return a
    out = jax.tree.map(rows, state.replace(limit=jnp.zeros((state.tokens.shape[0],))),
                       sub.replace(limit=jnp.zeros((sub.tokens.shape[0],))))
    return out.replace(limit=limit)


# ------------------------------------------------------------------------------------ results

@dataclasses.dataclass
class Generation:
    """Per row (row = prompt_index * n + sample): the generated tokens and their annotations."""
    tokens: np.ndarray        # [R, N] int32 (0 past `lengths`); includes forced tool tokens and
                              # the stop token that ended the row (see `stopped`)
    logprobs: np.ndarray      # [R, N] float32 log p(token) under the model (temperature 1)
    forced: np.ndarray        # [R, N] bool: written by the engine (tool output), not sampled
    lengths: np.ndarray       # [R] int32 tokens generated
    done: np.ndarray          # [R] bool: finished (stop token, max_new_tokens or full cache)
    stopped: np.ndarray       # [R] bool: ended by a stop token (the last token)
    prompt_index: np.ndarray  # [R] int32
    top_ids: Optional[np.ndarray] = None        # [R, N, K] (K = start(top_logprobs=K))
    top_logprobs: Optional[np.ndarray] = None   # [R, N, K]

    @property
    def mask(self) -> np.ndarray:
        """[R, N] bool: positions holding generated tokens."""
        return np.arange(self.tokens.shape[1])[None, :] < self.lengths[:, None]

    def row(self, r: int, *, strip_stop: bool = False) -> list[int]:
        n = int(self.lengths[r]) - (1 if strip_stop and self.stopped[r] else 0)
        return self.tokens[r, :n].tolist()

    def rows(self, *, strip_stop: bool = False) -> list[list[int]]:
        return [self.row(r, strip_stop=strip_stop) for r in range(len(self.lengths))]


@dataclasses.dataclass
class Chunk:
    """What one decode round trip produced: per row, the tokens since the previous chunk."""
    tokens: list[list[int]]
    forced: list[list[bool]]
    done: np.ndarray          # [R] bool after this chunk


# ------------------------------------------------------------------------------------ engine

Prompts = Union[Sequence[int], Sequence[Sequence[int]]]


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    """How the engine runs, not what it computes: outputs are the same for every setting (up to
    the rounding of bfloat16 `weights`).

    `grow_cache` (default on): the cache starts sized to the prompts and grows as the rows
    lengthen, to the next power of two (at least `len_multiple` slots of room; never past the
    call's final length `Engine.cache_len(...)`). Each decode step attends over every slot of the
    buffer, so this makes a step's cost follow the rows' current length, not the final one
    (docs/performance.md). Growing is a copy between decode calls, so `decode(state, steps)` may
    run as several device calls; the number of buffer sizes, hence compiled decode shapes, is
    logarithmic in the length. `min_buffer`: the smallest output buffer (new tokens per row).

    `head_copy_rows` (default: `lm.kernels.head_copy_rows` of the model's kernels; 0 = never):
    with a tied head, batches of at least this many rows decode through a [D, V] copy of wte
    (`lm.kernels.with_head_copy`), made once per engine and params object.

    `weights="bfloat16"`: decode with a bfloat16 copy of the parameters (made once per params
    object): half the bytes read per token (`lm.kernels.decode_config`). Log-probs stay float32.
    A model that computes in bf16 on the onednn path decodes with its kernels packed without it
    (the same numbers: `lm.kernels.packs_decode`).

    `mesh` / `batch_axes`: rows split over these mesh axes (data-parallel decode).
    """
    grow_cache: bool = True
    len_multiple: int = 32
    min_buffer: int = 16
    head_copy_rows: Optional[int] = None
    weights: Optional[str] = None
    mesh: Optional[jax.sharding.Mesh] = None
    batch_axes: tuple = ("data",)


class Engine:
    """Host driver around the jitted prefill/decode: batching, buckets, tool calls, results.

    `tools`: the tokenizer's chat tokens (`tok.chat`), which carry the tool protocol's ids (None:
    no tool calls). `tool_fn`: expression ids -> result ids (default: `calculator_tool` over the
    tokenizer with `lm.search.run_tool`: the calculator, and `search("...")` over the knowledge
    base). `max_len`: a cache limit below the model's context. `settings`: how it runs
    (`EngineSettings`). `structured`: every decode state carries a grammar mask
    (`lm.structured`), so rows with a `response_format` can join any batch (the server's slots);
    `stream`/`generate` add it on their own when given a `response_format`. Compiled functions are
    shared by all engines (jit caches keyed by config and shapes).
    """

    def __init__(self, params, cfg: ModelConfig, *, tokenizer=None,
                 tools: Optional[ChatTokens] = None,
                 tool_fn: Optional[Callable[[list[int]], list[int]]] = None,
                 max_tool_tokens: int = 96, max_len: Optional[int] = None,
                 settings: Optional[EngineSettings] = None, structured: bool = False):
        if cfg.head != "lm":
            raise ValueError("this model scores text (model.head='score': a reward model); it "
                             "does not generate")
        self.settings = settings = settings or EngineSettings()
        self.tokenizer, self.structured, self._grammars = tokenizer, structured, None
        self.params, self.cfg = params, kernels.decode_config(cfg, settings.weights)
        self.impl = kernels.resolve_for(self.cfg)
        self.tools = tools
        if tools is not None and tool_fn is None:
            if tokenizer is None:
                raise ValueError("tool calls need `tool_fn` or a `tokenizer` (to decode the "
                                 "expression and encode the result)")
            tool_fn = engine_tool(tokenizer)
        self.tool_fn = tool_fn
        self.Q = max(4, int(max_tool_tokens)) if tools is not None else 1
        self.max_len = max_len
        rows = settings.head_copy_rows
        self.head_copy_rows = kernels.head_copy_rows(self.impl) if rows is None else int(rows)
        # (params, derived) caches: see run_params and _decode
        self._lowp = self._packed = self._headed = None

    def _shard_rows(self, tree):
        """Split every leaf's leading (row) dimension over the mesh's batch axes, if they divide
        it (rows are independent, so the decode loop then runs data-parallel)."""
        mesh = self.settings.mesh
        if mesh is None:
            return tree
        axes = [a for a in self.settings.batch_axes if a in mesh.axis_names]
        n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        rows = jax.tree.leaves(tree)[0].shape[0]
        if n == 1 or rows % n:
            return tree
        spec = jax.sharding.PartitionSpec(tuple(axes) if len(axes) > 1 else axes[0])
        return jax.device_put(tree, jax.sharding.NamedSharding(mesh, spec))

    @property
    def grammars(self) -> structured.Grammars:
        """The tokenizer as llguidance sees it (built on first use, ~1 s): replies end at
        `<|assistant_end|>` (the BOS for a tokenizer without the chat set)."""
        if self._grammars is None:
            if self.tokenizer is None:
                raise structured.FormatError("structured outputs need the engine's tokenizer")
            chat = self.tokenizer.chat
            stop = [chat.assistant_end] if chat is not None else [self.tokenizer.bos_id]
            self._grammars = structured.Grammars(self.tokenizer, self.cfg.vocab_size, stop)
        return self._grammars

    def matchers(self, response_format, P: int, n: int = 1
                 ) -> list[Optional[structured.RowMatcher]]:
        """One matcher per row (None: a free row) for `response_format` given once or per
        prompt; raises `structured.FormatError` naming what is wrong."""
        formats = list(response_format) if isinstance(response_format, (list, tuple)) \
            else [response_format] * P
        if len(formats) != P:
            raise ValueError(f"response_format: give one or one per prompt ({P}), "
                             f"got {len(formats)}")
        grammars = [None if f is None else self.grammars.compile(f) for f in formats]
        return [None if g is None else self.grammars.matcher(g)
                for g in grammars for _ in range(n)]

    # -- sizes --------------------------------------------------------------------------------
    def _limit(self) -> int:
        return self.cfg.block_size if self.max_len is None else self.max_len

    def cache_len(self, longest_prompt: int, max_new_tokens: int) -> int:
        """Cache slots for a call: prompt + budget, rounded up, at most the model's limit."""
        need = longest_prompt + max_new_tokens
        return min(self._limit(), round_up(need, self.settings.len_multiple))

    def buffer_len(self, longest: int, limit: int) -> int:
        """Cache buffer for rows of up to `longest` tokens (growing caches): the next power of two
        with at least `len_multiple` free slots, at most `limit`."""
        if not self.settings.grow_cache:
            return limit
        m = self.settings.len_multiple
        return min(limit, bucket(longest + m, m))

    # -- device-side steps (public so benchmarks / RL loops can drive them) --------------------
    def start(self, prompts: Prompts, *, n: int = 1, max_new_tokens: Union[int, Sequence[int]] = 64,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
              sample_ids: Optional[Sequence[int]] = None,
              stop_tokens: Union[Sequence[int], Sequence[Sequence[int]]] = (),
              top_logprobs: int = 0, cache_len: Optional[int] = None,
              out_len: Optional[int] = None,
              constrained: Optional[Sequence[bool]] = None,
              cache: Optional[KVCache] = None, first_token: bool = False,
              k_max: int = 0) -> DecodeState:
        """Prefill the prompts (one forward call) and build the decode state for P*n rows.

        `top_logprobs`: record the K most likely tokens at every step. `cache_len` / `out_len`:
        fixed cache and output sizes (a full-size, non-growing cache), as `open_slots` uses.
        `constrained`: per prompt, whether its rows decode under a grammar mask; they wait for
        their first mask (`serve_grammar`) before they run. `cache`: one row per prompt already
        holding tokens (its `lengths`) that the prompt continues (prefix caching, `admit`); the
        prompts are then the tokens after them, and `cache_len` must be its size.
        `first_token`: every row takes its first token from the prefill's last logits (one
        forward pass fewer before it exists: time to first token); rows under a grammar wait
        for their mask and take theirs in `decode`. `k_max`: at least this many sampling
        candidates (a slot state's count, so that a joining row's first token is drawn as its
        later ones)."""
        prompts = _as_prompts(prompts)
        P = len(prompts)
        R = P * n
        lens = np.array([len(p) for p in prompts], np.int32)
        if (lens < 1).any():
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        held = np.zeros((P,), np.int32) if cache is None else np.asarray(cache.lengths)
        budget = np.broadcast_to(np.asarray(max_new_tokens, np.int32), (P,))
        S = cache_len or self.cache_len(int(lens.max()), int(budget.max()))
        if int((held + lens).max()) > S:
            raise ValueError(f"a prompt of {int((held + lens).max())} tokens does not fit the "
                             f"cache ({S} slots; block_size {self.cfg.block_size})")
        T = bucket(int(lens.max()))
        toks = np.zeros((P, T), np.int32)
        for i, p in enumerate(prompts):
            toks[i, :len(p)] = p
        if cache is None:
            cache = _new_cache(self.cfg, P, S if cache_len else self.buffer_len(int(lens.max()),
                                                                                S))
        elif cache.max_len != S or cache.batch != P:
            raise ValueError(f"start: the given cache is {cache.batch} x {cache.max_len}, the "
                             f"call needs {P} x {S}")
        cache, toks, lens = self._shard_rows((cache, jnp.asarray(toks), jnp.asarray(lens)))
        con = None
        if constrained is not None or self.structured:
            con = np.zeros((P,), bool) if constrained is None else np.asarray(constrained, bool)
            if con.shape != (P,):
                raise ValueError(f"constrained: one flag per prompt ({P}), got {con.shape}")
        # a constrained row's first token needs its mask first: those take the plain prefill
        first_token = first_token and (con is None or not con.any())
        if first_token:
            cache, first_logits = prefill_last(self.run_params(), self.cfg, cache, toks, lens)
            pending = jnp.zeros((P,), jnp.int32)        # replaced by the first token
        else:
            cache, pending = prefill(self.run_params(), self.cfg, cache, toks, lens)
        stop = _stop_array(stop_tokens, P, STOP_WIDTH if cache_len else None)
        ids = (np.arange(R, dtype=np.int32) if sample_ids is None
               else np.asarray(sample_ids, np.int32))
        if ids.shape != (R,):
            raise ValueError(f"sample_ids must have one id per row ({R}), got {ids.shape}")
        sampler = Sampler.make(P, self.cfg.vocab_size, _per_prompt(temperature, P, "temperature"),
                               _per_prompt(top_k, P, "top_k"), _per_prompt(top_p, P, "top_p"),
                               self.impl)
        if k_max > sampler.k_max:
            sampler = sampler.replace(k_max=int(k_max))
        init = _init_state_donate if n == 1 else _init_state_copy
        state = init(cache, pending, jnp.asarray(seed, jnp.uint32), jnp.asarray(ids),
                     jnp.asarray(np.repeat(budget, n)), jnp.asarray(np.repeat(stop, n, 0)),
                     jnp.asarray(S, jnp.int32), sampler, n=n,
                     tools=self.tools,
                     N=out_len or bucket(int(budget.max()), self.settings.min_buffer),
                     Q=self.Q, K=int(top_logprobs),
                     constrained=None if con is None else jnp.asarray(con),
                     V=self.cfg.vocab_size)
        if first_token:
            state = _first_step(state, first_logits)
        limit = state.limit            # a scalar: replicated, not row-sharded
        return self._shard_rows(state.replace(limit=None)).replace(limit=limit)

    def decode(self, state: DecodeState, steps: int) -> DecodeState:
        """Up to `steps` decode steps (donates `state`): one device call, or, while the cache is
        still growing, one per buffer size (the host reads the rows' lengths to size it)."""
        steps = int(steps)
        if steps <= 0:
            return state
        while steps > 0:
            S = state.cache.max_len
            if S >= self._limit() or not self.settings.grow_cache:
                return self._decode(state, steps)
            lengths, done, parked, limit = jax.device_get(
                (state.cache.lengths, state.done, state.parked(), state.limit))
            limit = int(limit)
            if S >= limit:
                return self._decode(state, steps)
            if (done | parked).all():      # nothing can run until the host serves the rows
                return state
            longest = int(lengths[~done].max())
            if longest >= S:
                state = state.replace(cache=_grow(state.cache, self.buffer_len(longest, limit)))
                continue
            n = min(steps, S - longest)   # no row can outgrow the buffer in n steps
            state = self._decode(state, n)
            steps -= n
        return state

    def _decode(self, state: DecodeState, steps: int) -> DecodeState:
        params = self.run_params()
        packs = self.settings.weights is None and kernels.packs_decode(self.cfg, self.impl)
        if packs:                       # a bf16-compute model's kernels, packed once per params
            if self._packed is None or self._packed[0] is not params:
                self._packed = (params, _decode_weights(params, self.impl, False))
            params = self._packed[1]
        if (self.cfg.tie_embeddings and self.head_copy_rows
                and state.tokens.shape[0] >= self.head_copy_rows):
            if self._headed is None or self._headed[0] is not params:   # params may be swapped
                self._headed = (params, _with_head_copy(params, self.impl,
                                                        self.cfg.compute_dtype))
            params = self._headed[1]
        return decode(params, self.cfg, state, jnp.asarray(steps, jnp.int32))

    def run_params(self):
        """The parameters the engine computes with: `params`, or their bfloat16 copy (made once
        per params object, `lm.kernels.decode_weights`) when the engine decodes with bfloat16
        weights."""
        if self.settings.weights != "bfloat16":
            return self.params
        if self._lowp is None or self._lowp[0] is not self.params:
            self._lowp = (self.params, _decode_weights(self.params, self.impl))
        return self._lowp[1]

    def serve_tools(self, state: DecodeState, host: Optional[dict] = None) -> DecodeState:
        """Answer every parked row's tool call (`lm.tool_use.serve`). `host`: the state's
        `tokens`, `n_gen` and `done` already on the host, if the caller has them."""
        if state.tools is None:
            return state
        if host is None:
            host = jax.device_get({k: getattr(state, k) for k in ("tokens", "n_gen", "done")})
        return state.replace(tools=tool_use.serve(state.tools, host["tokens"], host["n_gen"],
                                                  host["done"], self.tool_fn))

    @staticmethod
    def serve_grammar(state: DecodeState, matchers: Sequence[Optional[structured.RowMatcher]],
                      host: Optional[dict] = None) -> DecodeState:
        """Give every constrained row its next-token mask (`lm.structured.serve`). `host`: the
        state's `tokens`, `n_gen` and `done` already on the host, if the caller has them."""
        if state.mask is None or not any(m is not None for m in matchers):
            return state
        if host is None:
            host = jax.device_get({k: getattr(state, k) for k in ("tokens", "n_gen", "done")})
        return state.replace(mask=structured.serve(state.mask, matchers, host["tokens"],
                                                   host["n_gen"], host["done"]))

    @staticmethod
    def result(state: DecodeState) -> Generation:
        """The state's outputs on the host (rows in prompt-major order)."""
        h = jax.device_get({k: getattr(state, k) for k in
                            ("tokens", "logprobs", "forced", "n_gen", "done", "stopped",
                             "top_ids", "top_logprobs")})
        R, N = h["tokens"].shape
        valid = np.arange(N)[None, :] < h["n_gen"][:, None]
        return Generation(tokens=np.where(valid, h["tokens"], 0),
                          logprobs=np.where(valid, h["logprobs"], 0.0),
                          forced=h["forced"] & valid, lengths=h["n_gen"], done=h["done"],
                          stopped=h["stopped"],
                          prompt_index=np.arange(R, dtype=np.int32) // state.n,
                          top_ids=h["top_ids"], top_logprobs=h["top_logprobs"])

    # -- slots: rows that join and leave a running batch (continuous batching) ------------------
    def open_slots(self, rows: int, *, out_len: int, top_logprobs: int = 0,
                   cache_len: Optional[int] = None) -> DecodeState:
        """A decode state of `rows` empty (finished) slots with a full-size cache of `cache_len`
        slots (default: the model's context) and room for `out_len` new tokens per row. Requests
        join with `admit` between decode calls and leave when done; `decode` runs them all."""
        S = cache_len or self._limit()
        st = self.start([[0]] * rows, max_new_tokens=0, temperature=0.0, cache_len=S,
                        out_len=out_len, top_logprobs=top_logprobs)
        return st

    def admit(self, state: DecodeState, slots: Sequence[int], prompts: Prompts, *,
              cached: Optional[Sequence[tuple[int, int]]] = None, first_token: bool = False,
              **kw) -> DecodeState:
        """Prefill `prompts` (one per slot; `start`'s keyword arguments, per prompt where they
        take lists) and put them into `slots` of a running slot state (donates `state`).

        `cached`: per prompt, `(slot, n)`: the first `n` tokens of the prompt are what that slot
        of `state` holds in its cache (a finished request's prompt and reply: prefix caching).
        Those keys/values are copied, not computed again; only the rest is prefilled. n must
        leave at least one token of the prompt. `first_token`: the new rows take their first
        token from the prefill's last logits before they join (`start`), so it is out without
        waiting for the batch's next step (time to first token)."""
        S, N, K = state.cache.max_len, state.tokens.shape[1], state.top_ids.shape[-1]
        prompts = _as_prompts(prompts)
        if cached is not None and any(n > 0 for _, n in cached):
            src = np.asarray([s for s, _ in cached], np.int32)
            held = np.asarray([n for _, n in cached], np.int32)
            if len(cached) != len(prompts) or (held < 0).any() or \
                    (held >= np.array([len(p) for p in prompts])).any():
                raise ValueError("admit: `cached` needs one (slot, n) per prompt with "
                                 "0 <= n < len(prompt)")
            kw["cache"] = _take_rows(state.cache, jnp.asarray(src), jnp.asarray(held))
            prompts = [p[n:] for p, n in zip(prompts, held)]
        sub = self.start(prompts, cache_len=S, out_len=N, top_logprobs=K,
                         first_token=first_token, k_max=state.sampler.k_max, **kw)
        # one static candidate count for the whole state
        state = state.replace(sampler=state.sampler.replace(k_max=sub.sampler.k_max))
        return _insert_rows(state, sub, jnp.asarray(np.asarray(slots, np.int32)))

    @staticmethod
    def cancel(state: DecodeState, slots: Sequence[int]) -> DecodeState:
        """Finish `slots` now (a client went away): they stop running and can be reused."""
        if not len(slots):
            return state
        return state.replace(done=state.done.at[jnp.asarray(np.asarray(slots, np.int32))]
                             .set(True))

    # -- host loops ----------------------------------------------------------------------------
    def stream(self, prompts: Prompts, *, chunk: int = 16, response_format=None,
               **kw) -> Iterator[Chunk]:
        """Generate, yielding the new tokens of every row after each chunk of <= `chunk` decode
        steps (tool calls are served between chunks). `response_format`: OpenAI's, once or per
        prompt (`lm.structured`); constrained rows take one token per chunk, their masks computed
        between chunks. Returns the `Generation` (StopIteration)."""
        P, n = len(_as_prompts(prompts)), int(kw.get("n", 1))
        matchers = self.matchers(response_format, P, n) if response_format is not None else []
        if any(m is not None for m in matchers):
            kw["constrained"] = [m is not None for m in matchers[::n]]
        else:
            matchers = []
        state = self.start(prompts, **kw)
        seen = np.zeros(state.n_gen.shape, np.int64)
        host = None
        while True:
            state = self.serve_grammar(state, matchers, host)
            live = any(m is not None and (host is None or not host["done"][r])
                       for r, m in enumerate(matchers))
            state = self.decode(state, 1 if live else chunk)
            host = jax.device_get({k: getattr(state, k) for k in
                                   ("done", "tokens", "forced", "n_gen")})
            n_gen = host["n_gen"]
            new = [host["tokens"][r, seen[r]:n_gen[r]].tolist() for r in range(len(n_gen))]
            flags = [host["forced"][r, seen[r]:n_gen[r]].tolist() for r in range(len(n_gen))]
            seen = n_gen.astype(np.int64)
            if any(new):
                yield Chunk(tokens=new, forced=flags, done=host["done"].copy())
            if host["done"].all():
                break
            state = self.serve_tools(state, host)
        return self.result(state)

    def generate(self, prompts: Prompts, *, chunk: Optional[int] = None, **kw) -> Generation:
        """All rows to completion. Without tools: one `decode` for the whole budget (one device
        call per cache size while the cache grows); with tools: chunks of `chunk` (default 32)
        steps, tool calls between them."""
        if chunk is None:
            budget = np.max(np.asarray(kw.get("max_new_tokens", 64)))
            chunk = 32 if self.tools is not None else int(budget)
        it = self.stream(prompts, chunk=max(1, chunk), **kw)
        while True:
            try:
                next(it)
            except StopIteration as stop:
                return stop.value


def _per_prompt(value, P: int, name: str):
    """A scalar, or one value per prompt (as a numpy array)."""
    arr = np.asarray(value)
    if arr.ndim == 0:
        return arr
    if arr.shape != (P,):
        raise ValueError(f"{name}: give one value or one per prompt ({P}), got shape {arr.shape}")
    return arr


def _as_prompts(prompts: Prompts) -> list[list[int]]:
    if len(prompts) and isinstance(prompts[0], (int, np.integer)):
        return [list(map(int, prompts))]
    return [list(map(int, p)) for p in prompts]


STOP_WIDTH = 8   # stop ids per row in fixed-shape (slot) states


def _stop_array(stop_tokens, P: int, width: Optional[int] = None) -> np.ndarray:
    """[P, NS] int32, -1 padded: one list for all prompts, or one list per prompt."""
    st = list(stop_tokens)
    if st and not isinstance(st[0], (int, np.integer)):
        if len(st) != P:
            raise ValueError(f"per-prompt stop_tokens needs {P} lists, got {len(st)}")
        per = [list(map(int, s)) for s in st]
    else:
        per = [list(map(int, st))] * P
    longest = max((len(s) for s in per), default=1)
    if width is not None and longest > width:
        raise ValueError(f"at most {width} stop tokens per row, got {longest}")
    width = width or bucket(longest, 4)
    out = np.full((P, width), -1, np.int32)
    for i, s in enumerate(per):
        out[i, :len(s)] = s
    return out


# ------------------------------------------------------------------------------------ text

def generate_text(params, cfg: ModelConfig, tokenizer, prompt: str, max_new_tokens: int, *,
                  temperature: float = 1.0, top_k: int = 0, seed: int = 0) -> str:
    """Sample a continuation of `prompt` (the trainer's end-of-run sample) with the engine.

    When the continuation outgrows the context, the engine restarts from the last half window of
    tokens (re-prefilled in one call) and keeps going until `max_new_tokens` are produced.
    """
    ids = list(tokenizer.encode(prompt)) or [tokenizer.bos_id or 0]
    T = cfg.block_size
    eng = Engine(params, cfg, settings=EngineSettings(len_multiple=T, min_buffer=T))  # one shape
    out: list[int] = []
    part = 0
    while len(out) < max_new_tokens:
        ctx = ids + out
        if len(ctx) > T - 1:
            ctx = ctx[-(T // 2):]
        budget = min(max_new_tokens - len(out), T - len(ctx))
        g = eng.generate([ctx], max_new_tokens=budget, temperature=temperature, top_k=top_k,
                         seed=seed, sample_ids=[part])
        out += g.row(0)
        part += 1
    return tokenizer.decode(out)
