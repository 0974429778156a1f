"""The sampling engine: jitted KV-cache prefill and a `lax.while_loop` decode, ragged batches,
greedy / temperature / top-k / top-p with a PRNG key per row, stop tokens, `n` samples per prompt
from one prefill, streaming in chunks, and calculator tool calls with forced tokens.

Pure, jitted pieces (everything on the device is one of these; the cache / state are donated and
updated in place):

    prefill(params, cfg, cache, tokens_BT, lengths_B) -> (cache, pending_B)
        Appends each row's prompt to the cache in ONE forward call (rows of different lengths are
        padded to a bucket; padding gets position S = "write nothing"). The prompt's last token is
        returned as the row's *pending* token: the first decode step feeds it and samples from its
        logits, so prefill never materializes [B, T, V] logits (XLA drops the unused LM head).
    decode(params, cfg, state, max_steps) -> state
        Up to `max_steps` steps inside one `lax.while_loop` (no host round trip per token). Each
        step feeds every runnable row's pending token at that row's own position, picks the next
        token (the row's forced-token queue first, else a sample), records token / log-prob /
        forced flag, and advances the row's state machine. Finished or tool-waiting rows ride
        along as no-op rows (position S: nothing written, logits ignored). The loop exits early
        once no row can run. `DecodeState` carries everything (cache, per-row keys, positions,
        done flags, outputs, the tool queue, the traced sampler settings; top_k is static).
    step_logits(params, cfg, cache, tokens_B) -> (logits_BV, cache)
        One token per row at `cache.lengths`: scoring and tests.

Tool calls (nanochat's engine state machine, with the forced-token queue inside the jitted loop):
when a row samples `python_start` it starts recording; sampling `python_end` closes the expression
and parks the row (`waiting`). The loop keeps running the other rows and returns when the chunk
ends or no row can run; the host then decodes each parked row's expression, evaluates it with the
safe calculator (`lm.tools_calc.calculate`: never raises, errors come back as text) and writes
`output_start, <result tokens>, output_end` into that row's queue. The next chunk pops the queue
before sampling: those tokens are flagged `forced` (SFT/RL losses mask them) and never trigger the
state machine or stop tokens. So the host only evaluates expressions; per-token work stays on the
device. A parked row waits at most one chunk (`Engine.generate` uses 32-step chunks with tools).

Randomness: row r's token i uses `fold_in(fold_in(key(seed), sample_id[r]), i)`, so samples don't
depend on chunking, batch composition or which rows finished first. Log-probs are under the model's
own distribution (temperature 1, unfiltered), what policy-gradient losses recompute.

Host side, `Engine` (token ids in, token ids out; the tokenizer only for tool text):

    eng = Engine(params, cfg, tokenizer=tok, tools=ToolTokens.from_tokenizer(tok))
    out = eng.generate([[1, 2, 3], [4, 5]], n=4, max_new_tokens=64, temperature=0.8, top_k=50,
                       stop_tokens=[tok.special_id("<|assistant_end|>")])
    out.tokens, out.logprobs, out.forced, out.lengths, out.done, out.stopped, out.prompt_index
    for chunk in eng.stream(prompts, chunk=16, ...): ...     # one Chunk per host round trip
    st = eng.start(prompts, ...); st = eng.decode(st, 64); eng.result(st)   # the pieces

`generate_text(params, cfg, tokenizer, prompt, max_new_tokens, *, temperature, top_k, seed)` is the
trainer's end-of-run sample on top of the engine.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lm import kvcache, model
from lm.config import ModelConfig
from lm.kvcache import KVCache
from lm.tools_calc import calculate

Array = jax.Array

# ------------------------------------------------------------------------------------ sizes

def bucket(n: int, minimum: int = 8) -> int:
    """Next power of two >= n (at least `minimum`): bounds the number of compiled shapes."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def round_up(n: int, m: int) -> int:
    return -(-int(n) // m) * m


# ------------------------------------------------------------------------------------ state

@dataclasses.dataclass(frozen=True)
class ToolTokens:
    """Special-token ids of the tool protocol (the chat tokenizer's python/output tokens)."""
    python_start: int
    python_end: int
    output_start: int
    output_end: int

    @classmethod
    def from_tokenizer(cls, tok) -> Optional["ToolTokens"]:
        """From a tokenizer with `special_id(name)`; None if it lacks the tool tokens."""
        get = getattr(tok, "special_id", None)
        if get is None:
            return None
        try:
            return cls(*(int(get(f"<|{n}|>")) for n in
                         ("python_start", "python_end", "output_start", "output_end")))
        except (KeyError, ValueError):
            return None

    def as_array(self) -> np.ndarray:
        return np.array([self.python_start, self.python_end, self.output_start, self.output_end],
                        np.int32)


NO_TOOLS = np.full((4,), -1, np.int32)


@struct.dataclass
class Sampler:
    """Traced sampling settings (changing them does not recompile). top_k is static (a shape)."""
    temperature: Array      # f32 scalar; 0 = greedy
    top_p: Array            # f32 scalar; 1 = off
    tool_ids: Array         # int32[4]: python_start/end, output_start/end ids (-1 = off)


@struct.dataclass
class DecodeState:
    cache: KVCache
    pending: Array          # [B] int32 token to feed next (position cache.lengths)
    keys: Array             # [B] PRNG keys (typed)
    n_gen: Array            # [B] int32 tokens generated so far (sampled + forced)
    max_new: Array          # [B] int32 budget of new tokens
    done: Array             # [B] bool finished: stop token, budget, or full cache
    stopped: Array          # [B] bool finished by a stop token
    stop: Array             # [B, NS] int32 stop ids (-1 = none)
    tokens: Array           # [B, N] int32 generated tokens
    logprobs: Array         # [B, N] f32 log p(token) under the model (T=1)
    forced: Array           # [B, N] bool token was forced (tool output), not sampled
    in_tool: Array          # [B] bool inside python_start .. python_end
    tool_start: Array       # [B] int32 index in `tokens` of the expression's first token
    waiting: Array          # [B] bool parked: expression complete, waiting for the host
    queue: Array            # [B, Q] int32 forced tokens to emit next
    q_len: Array            # [B] int32
    q_pos: Array            # [B] int32
    limit: Array            # int32 scalar: a row ends when it holds this many tokens (the final
                            # cache length; the buffer itself may be shorter and grow, see Engine)
    sampler: Sampler
    top_k: int = struct.field(pytree_node=False, default=0)        # static: 0 = off
    nucleus: bool = struct.field(pytree_node=False, default=False)  # static: top_p < 1
    n: int = struct.field(pytree_node=False, default=1)             # samples per prompt


# ------------------------------------------------------------------------------------ pure fns

@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def prefill(params, cfg: ModelConfig, cache: KVCache, tokens_BT: Array, lengths_B: Array):
    """Append `tokens_BT[b, :lengths_B[b]]` to row b (at positions cache.lengths[b] + t).

    All but each row's last token go into the cache in one forward call; the last one is
    returned as the row's pending token (the first decode step feeds it). lengths_B >= 1.
    """
    B, T = tokens_BT.shape
    S = cache.max_len
    t_T = jnp.arange(T, dtype=jnp.int32)
    pos_BT = cache.lengths[:, None] + t_T[None, :]
    write_BT = (t_T[None, :] < lengths_B[:, None] - 1) & (pos_BT < S)
    pos_BT = jnp.where(write_BT, pos_BT, S)
    _, kv = model.apply(params, cfg, tokens_BT, positions_BT=pos_BT, cache=cache.model_cache())
    pending = jnp.take_along_axis(tokens_BT, jnp.maximum(lengths_B - 1, 0)[:, None], axis=1)[:, 0]
    lengths = jnp.minimum(cache.lengths + jnp.maximum(lengths_B - 1, 0), S)
    return KVCache(k=kv["k"], v=kv["v"], lengths=lengths), pending


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("cache",))
def step_logits(params, cfg: ModelConfig, cache: KVCache, tokens_B: Array):
    """Feed one token per row at position cache.lengths; (logits_BV, cache advanced by one)."""
    S = cache.max_len
    pos = jnp.where(cache.lengths < S, cache.lengths, S)
    logits, kv = model.apply(params, cfg, tokens_B[:, None], positions_BT=pos[:, None],
                             cache=cache.model_cache())
    return logits[:, 0], KVCache(k=kv["k"], v=kv["v"],
                                 lengths=jnp.minimum(cache.lengths + 1, S))


def argmax(x: Array) -> Array:
    """First index of the maximum along the last axis (int32), as `jnp.argmax` for finite x.

    Two plain reductions: XLA:CPU's variadic (value, index) reduce behind `jnp.argmax` took
    38 µs per [1, 8192] row and 180 µs per [8, 8192] batch, against 6 and 83 µs for this
    (a 256-step loop, 2-core CPU) — it runs once per decode step.
    """
    V = x.shape[-1]
    m = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.min(jnp.where(x == m, jnp.arange(V, dtype=jnp.int32), V), axis=-1)
    return jnp.minimum(idx, V - 1)      # all-NaN row: no element equals the max


def sample_logits(logits_BV: Array, keys_B: Array, temperature: Array, top_p: Array,
                  top_k: int = 0, nucleus: bool = False) -> Array:
    """Next token per row: greedy if temperature == 0, else softmax(logits / T) restricted to the
    top-k (static k; 0 = all) and to the smallest set with probability >= top_p (if `nucleus`)."""
    V = logits_BV.shape[-1]

    def greedy(_):
        return argmax(logits_BV)

    def categorical(keys, x):          # jax.random.categorical: the Gumbel-max trick
        return argmax(x + jax.vmap(lambda k: jax.random.gumbel(k, x.shape[1:], x.dtype))(keys))

    def stochastic(_):
        x = logits_BV / jnp.maximum(temperature, 1e-6)
        k = min(top_k, V) if top_k else (V if nucleus else 0)
        if k:
            vals, idx = jax.lax.top_k(x, k)            # sorted, descending
            if nucleus:
                p = jax.nn.softmax(vals, axis=-1)
                before = jnp.cumsum(p, axis=-1) - p     # mass strictly before each candidate
                vals = jnp.where(before < top_p, vals, -jnp.inf)   # always keeps the first
            choice = categorical(keys_B, vals)
            return jnp.take_along_axis(idx, choice[:, None], axis=1)[:, 0].astype(jnp.int32)
        return categorical(keys_B, x)

    return jax.lax.cond(temperature > 0, stochastic, greedy, None)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def decode(params, cfg: ModelConfig, state: DecodeState, max_steps: Array,
           head_DV: Optional[Array] = None) -> DecodeState:
    """Run up to `max_steps` decode steps in one `lax.while_loop` (see the module docstring).
    `head_DV`: optional [D, V] copy of a tied head (`model.tied_head_DV`), see `Engine`."""
    B, N = state.tokens.shape
    S = state.cache.max_len
    rows = jnp.arange(B)
    sampler, top_k, nucleus = state.sampler, state.top_k, state.nucleus
    t_start, t_end = sampler.tool_ids[0], sampler.tool_ids[1]

    def runnable(st):
        return ~st.done & ~st.waiting

    def cond(carry):
        st, i = carry
        return (i < max_steps) & jnp.any(runnable(st))

    def body(carry):
        st, i = carry
        run = runnable(st)
        c = st.cache
        pos = jnp.where(run, c.lengths, S)                       # S: a no-op row
        logits, kv = model.apply(params, cfg, st.pending[:, None], positions_BT=pos[:, None],
                                 cache=c.model_cache(), head_DV=head_DV)
        logits = logits[:, 0]
        lengths = c.lengths + run.astype(jnp.int32)

        has_forced = st.q_pos < st.q_len
        q_idx = jnp.minimum(st.q_pos, st.queue.shape[1] - 1)
        forced_tok = jnp.take_along_axis(st.queue, q_idx[:, None], axis=1)[:, 0]
        keys = jax.vmap(jax.random.fold_in)(st.keys, st.n_gen)
        sampled = sample_logits(logits, keys, sampler.temperature, sampler.top_p, top_k, nucleus)
        tok = jnp.where(has_forced, forced_tok, sampled)
        logp = (jnp.take_along_axis(logits, tok[:, None], axis=1)[:, 0]
                - jax.nn.logsumexp(logits, axis=-1))

        idx = jnp.where(run, st.n_gen, N)                          # N: dropped
        tokens = st.tokens.at[rows, idx].set(tok, mode="drop")
        logprobs = st.logprobs.at[rows, idx].set(logp, mode="drop")
        forced = st.forced.at[rows, idx].set(has_forced, mode="drop")
        n_gen = st.n_gen + run.astype(jnp.int32)
        q_pos = st.q_pos + (run & has_forced).astype(jnp.int32)

        free = run & ~has_forced                                   # sampled by the model
        start = free & (tok == t_start) & (t_start >= 0)
        end = free & (tok == t_end) & (t_end >= 0) & st.in_tool
        tool_start = jnp.where(start, n_gen, st.tool_start)
        in_tool = (st.in_tool | start) & ~end
        hit_stop = free & jnp.any(tok[:, None] == st.stop, axis=-1)
        finished = run & (hit_stop | (n_gen >= st.max_new) | (lengths >= st.limit))
        done = st.done | finished
        waiting = (st.waiting | end) & ~done
        st = st.replace(
            cache=KVCache(k=kv["k"], v=kv["v"], lengths=lengths),
            pending=jnp.where(run, tok, st.pending), n_gen=n_gen, done=done,
            stopped=st.stopped | (run & hit_stop), tokens=tokens, logprobs=logprobs,
            forced=forced, in_tool=in_tool, tool_start=tool_start, waiting=waiting, q_pos=q_pos)
        return st, i + 1

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.zeros((), jnp.int32)))
    return state


def _init_state_impl(cache: KVCache, pending: Array, seed: Array, sample_ids: Array,
                     max_new: Array, stop: Array, limit: Array, sampler: Sampler, n: int, N: int,
                     Q: int, top_k: int, nucleus: bool) -> DecodeState:
    cache = kvcache.repeat_rows(cache, n)
    pending = jnp.repeat(pending, n, axis=0)
    R = pending.shape[0]
    base = jax.random.key(seed)
    keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(sample_ids)
    zeros_i = jnp.zeros((R,), jnp.int32)
    false = jnp.zeros((R,), bool)
    return DecodeState(
        cache=cache, pending=pending, keys=keys, n_gen=zeros_i, max_new=max_new,
        done=max_new <= 0, stopped=false, stop=stop,
        tokens=jnp.zeros((R, N), jnp.int32), logprobs=jnp.zeros((R, N), jnp.float32),
        forced=jnp.zeros((R, N), bool), in_tool=false, tool_start=zeros_i, waiting=false,
        queue=jnp.zeros((R, Q), jnp.int32), q_len=zeros_i, q_pos=zeros_i, limit=limit,
        sampler=sampler,
        top_k=top_k, nucleus=nucleus, n=n)


# n == 1 donates the prefilled cache straight into the state; n > 1 builds new (repeated) buffers.
_STATIC = ("n", "N", "Q", "top_k", "nucleus")
_init_state_donate = jax.jit(_init_state_impl, static_argnames=_STATIC, donate_argnames=("cache",))
_init_state_copy = jax.jit(_init_state_impl, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=("cfg", "batch", "max_len"))
def _new_cache(cfg: ModelConfig, batch: int, max_len: int) -> KVCache:
    return kvcache.init(cfg, batch, max_len)


_transposed_head = jax.jit(model.tied_head_DV)


@functools.partial(jax.jit, static_argnames=("max_len",))   # a bigger buffer: nothing to donate
def _grow(cache: KVCache, max_len: int) -> KVCache:
    return kvcache.grow(cache, max_len)


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

def calculator_tool(encode: Callable[[str], list[int]], decode: Callable[[Sequence[int]], str],
                    calculator: Callable[[str], str] = calculate,
                    ) -> Callable[[list[int]], list[int]]:
    """expression token ids -> result token ids, through text and the safe calculator."""
    def run(expr_ids: list[int]) -> list[int]:
        try:
            text = decode(expr_ids)
        except Exception:  # noqa: BLE001 - undecodable ids are a tool error, not an engine crash
            return list(encode("Error: undecodable expression"))
        return list(encode(calculator(text)))
    return run


Prompts = Union[Sequence[int], Sequence[Sequence[int]]]


class Engine:
    """Host driver around the jitted prefill/decode: batching, buckets, tool calls, results.

    `tools`: the tool token ids (None: no tool calls). `tool_fn`: expression ids -> result ids
    (default: `calculator_tool(tokenizer.encode, tokenizer.decode)` when a tokenizer is given).
    Compiled functions are shared by all engines (jit caches keyed by config and shapes).

    `grow_cache` (default on): the cache starts sized to the prompts and grows as the rows
    lengthen, to the next power of two (at least `len_multiple` slots of room; never past the
    call's final length `cache_len(...)`). Each decode step attends over every slot of the
    buffer, so this makes a step's cost follow the rows' current length, not the final one
    (`small` config, batch 8: 5.2 ms per step on a 96-slot buffer against 7.2 on 288). Growing
    is a copy between decode calls, so `decode(state, steps)` may run as several device calls;
    the number of buffer sizes, hence compiled decode shapes, is logarithmic in the length.
    Outputs are identical with and without it (a test checks).

    `head_copy_rows` (default 2; 0 = never): with a tied head, batches of at least this many rows
    decode through a [D, V] copy of wte made once per engine (`model.tied_head_DV`; 12.6 MB on
    `small`): XLA:CPU's batched matmul is faster on that layout. Decode tokens/s on `small`,
    2-core CPU, interleaved A/B: +9% at 2, 4 and 8 rows (8 rows: 1480 against 1360), neutral at
    one row (361 against 358).
    """

    def __init__(self, params, cfg: ModelConfig, *, tokenizer=None,
                 tools: Optional[ToolTokens] = None,
                 tool_fn: Optional[Callable[[list[int]], list[int]]] = None,
                 max_tool_tokens: int = 64, max_len: Optional[int] = None, len_multiple: int = 32,
                 min_buffer: int = 16, mesh: Optional[jax.sharding.Mesh] = None,
                 batch_axes: Sequence[str] = ("data",), grow_cache: bool = True,
                 head_copy_rows: int = 2):
        self.params, self.cfg = params, cfg
        self.tools = tools
        if tools is not None and tool_fn is None:
            if tokenizer is None:
                raise ValueError("tool calls need `tool_fn` or a `tokenizer` (to decode the "
                                 "expression and encode the result)")
            tool_fn = calculator_tool(tokenizer.encode, tokenizer.decode)
        self.tool_fn = tool_fn
        self.Q = max(4, int(max_tool_tokens)) if tools is not None else 1
        self.max_len = max_len
        self.len_multiple = len_multiple
        self.min_buffer = min_buffer
        self.mesh, self.batch_axes = mesh, tuple(batch_axes)
        self.grow_cache = grow_cache
        self.head_copy_rows, self._head_DV = int(head_copy_rows), None

    def _shard_rows(self, tree):
        """Split every leaf's leading (row) dimension over the mesh's batch axes, if they divide
        it (rows are independent, so the decode loop then runs data-parallel)."""
        if self.mesh is None:
            return tree
        axes = [a for a in self.batch_axes if a in self.mesh.axis_names]
        n = int(np.prod([self.mesh.shape[a] for a in axes])) if axes else 1
        rows = jax.tree.leaves(tree)[0].shape[0]
        if n == 1 or rows % n:
            return tree
        spec = jax.sharding.PartitionSpec(tuple(axes) if len(axes) > 1 else axes[0])
        return jax.device_put(tree, jax.sharding.NamedSharding(self.mesh, spec))

    # -- sizes --------------------------------------------------------------------------------
    def _limit(self) -> int:
        return self.cfg.block_size if self.max_len is None else self.max_len

    def cache_len(self, longest_prompt: int, max_new_tokens: int) -> int:
        """Cache slots for a call: prompt + budget, rounded up, at most the model's limit."""
        need = longest_prompt + max_new_tokens
        return min(self._limit(), round_up(need, self.len_multiple))

    def buffer_len(self, longest: int, limit: int) -> int:
        """Cache buffer for rows of up to `longest` tokens (growing caches): the next power of two
        with at least `len_multiple` free slots, at most `limit`."""
        if not self.grow_cache:
            return limit
        return min(limit, bucket(longest + self.len_multiple, self.len_multiple))

    # -- device-side steps (public so benchmarks / RL loops can drive them) --------------------
    def start(self, prompts: Prompts, *, n: int = 1, max_new_tokens: Union[int, Sequence[int]] = 64,
              temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
              sample_ids: Optional[Sequence[int]] = None,
              stop_tokens: Union[Sequence[int], Sequence[Sequence[int]]] = ()) -> DecodeState:
        """Prefill the prompts (one forward call) and build the decode state for P*n rows."""
        prompts = _as_prompts(prompts)
        P = len(prompts)
        R = P * n
        lens = np.array([len(p) for p in prompts], np.int32)
        if (lens < 1).any():
            raise ValueError("every prompt needs at least one token (e.g. BOS)")
        budget = np.broadcast_to(np.asarray(max_new_tokens, np.int32), (P,))
        S = self.cache_len(int(lens.max()), int(budget.max()))
        if int(lens.max()) > S:
            raise ValueError(f"a prompt of {int(lens.max())} tokens does not fit the cache "
                             f"({S} slots; block_size {self.cfg.block_size})")
        T = bucket(int(lens.max()))
        toks = np.zeros((P, T), np.int32)
        for i, p in enumerate(prompts):
            toks[i, :len(p)] = p
        cache = _new_cache(self.cfg, P, self.buffer_len(int(lens.max()), S))
        cache, toks, lens = self._shard_rows((cache, jnp.asarray(toks), jnp.asarray(lens)))
        cache, pending = prefill(self.params, self.cfg, cache, toks, lens)
        stop = _stop_array(stop_tokens, P)
        ids = (np.arange(R, dtype=np.int32) if sample_ids is None
               else np.asarray(sample_ids, np.int32))
        if ids.shape != (R,):
            raise ValueError(f"sample_ids must have one id per row ({R}), got {ids.shape}")
        sampler = Sampler(temperature=jnp.asarray(temperature, jnp.float32),
                          top_p=jnp.asarray(top_p, jnp.float32),
                          tool_ids=jnp.asarray(NO_TOOLS if self.tools is None
                                               else self.tools.as_array()))
        init = _init_state_donate if n == 1 else _init_state_copy
        state = init(cache, pending, jnp.asarray(seed, jnp.uint32), jnp.asarray(ids),
                     jnp.asarray(np.repeat(budget, n)), jnp.asarray(np.repeat(stop, n, 0)),
                     jnp.asarray(S, jnp.int32), sampler, n=n,
                     N=bucket(int(budget.max()), self.min_buffer), Q=self.Q, top_k=int(top_k),
                     nucleus=bool(top_p < 1.0))
        sampler, limit = state.sampler, state.limit   # scalars: replicated, not row-sharded
        rows = self._shard_rows(state.replace(sampler=None, limit=None))
        return rows.replace(sampler=sampler, limit=limit)

    def decode(self, state: DecodeState, steps: int) -> DecodeState:
        """Up to `steps` decode steps (donates `state`): one device call, or, while the cache is
        still growing, one per buffer size (the host reads the rows' lengths to size it)."""
        steps = int(steps)
        while steps > 0:
            S = state.cache.max_len
            if S >= self._limit() or not self.grow_cache:
                return self._decode(state, steps)
            lengths, done, waiting, limit = jax.device_get(
                (state.cache.lengths, state.done, state.waiting, state.limit))
            limit = int(limit)
            if S >= limit:
                return self._decode(state, steps)
            if (done | waiting).all():     # nothing can run until the host serves a tool call
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
        head = None
        if (self.cfg.tie_embeddings and self.head_copy_rows
                and state.tokens.shape[0] >= self.head_copy_rows):
            wte = self.params["wte"]
            if self._head_DV is None or self._head_DV[0] is not wte:   # params may be swapped
                self._head_DV = (wte, _transposed_head(self.params))
            head = self._head_DV[1]
        return decode(self.params, self.cfg, state, jnp.asarray(steps, jnp.int32), head)

    def serve_tools(self, state: DecodeState, host: Optional[dict] = None) -> DecodeState:
        """Evaluate every parked row's expression and queue its forced output tokens."""
        if self.tools is None:
            return state
        if host is None:
            host = jax.device_get({k: getattr(state, k) for k in
                                   ("waiting", "done", "tokens", "tool_start", "n_gen")})
        rows = np.flatnonzero(host["waiting"] & ~host["done"])
        if rows.size == 0:
            return state
        queue, q_len, q_pos, waiting, in_tool = jax.device_get(
            (state.queue, state.q_len, state.q_pos, state.waiting, state.in_tool))
        queue, q_len, q_pos = queue.copy(), q_len.copy(), q_pos.copy()
        waiting, in_tool = waiting.copy(), in_tool.copy()
        t = self.tools
        for r in rows:
            expr = host["tokens"][r, host["tool_start"][r]:host["n_gen"][r] - 1].tolist()
            try:
                result = list(self.tool_fn(expr))
            except Exception as e:  # noqa: BLE001 - a failing tool must not stop generation
                result = []
                print(f"[sampling] tool failed on row {r}: {type(e).__name__}: {e}")
            out = [t.output_start, *result[:self.Q - 2], t.output_end]
            queue[r, :len(out)] = out
            q_len[r], q_pos[r] = len(out), 0
            waiting[r], in_tool[r] = False, False
        put = lambda new, old: jax.device_put(new, old.sharding)   # keep the state's placement
        return state.replace(queue=put(queue, state.queue), q_len=put(q_len, state.q_len),
                             q_pos=put(q_pos, state.q_pos), waiting=put(waiting, state.waiting),
                             in_tool=put(in_tool, state.in_tool))

    @staticmethod
    def result(state: DecodeState) -> Generation:
        """The state's outputs on the host (rows in prompt-major order)."""
        h = jax.device_get({k: getattr(state, k) for k in
                            ("tokens", "logprobs", "forced", "n_gen", "done", "stopped")})
        R, N = h["tokens"].shape
        valid = np.arange(N)[None, :] < h["n_gen"][:, None]
        return Generation(tokens=np.where(valid, h["tokens"], 0),
                          logprobs=np.where(valid, h["logprobs"], 0.0),
                          forced=h["forced"] & valid, lengths=h["n_gen"], done=h["done"],
                          stopped=h["stopped"],
                          prompt_index=np.arange(R, dtype=np.int32) // state.n)

    # -- host loops ----------------------------------------------------------------------------
    def stream(self, prompts: Prompts, *, chunk: int = 16, **kw) -> Iterator[Chunk]:
        """Generate, yielding the new tokens of every row after each chunk of <= `chunk` decode
        steps (tool calls are served between chunks). Returns the `Generation` (StopIteration)."""
        state = self.start(prompts, **kw)
        seen = np.zeros(state.n_gen.shape, np.int64)
        while True:
            state = self.decode(state, chunk)
            host = jax.device_get({k: getattr(state, k) for k in
                                   ("waiting", "done", "tokens", "forced", "tool_start", "n_gen")})
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


def _as_prompts(prompts: Prompts) -> list[list[int]]:
    if len(prompts) and isinstance(prompts[0], (int, np.integer)):
        return [list(map(int, prompts))]
    return [list(map(int, p)) for p in prompts]


def _stop_array(stop_tokens, P: int) -> np.ndarray:
    """[P, NS] int32, -1 padded: one list for all prompts, or one list per prompt."""
    st = list(stop_tokens)
    if st and not isinstance(st[0], (int, np.integer)):
        if len(st) != P:
            raise ValueError(f"per-prompt stop_tokens needs {P} lists, got {len(st)}")
        per = [list(map(int, s)) for s in st]
    else:
        per = [list(map(int, st))] * P
    width = bucket(max((len(s) for s in per), default=1), 4)
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
    ids = list(tokenizer.encode(prompt)) or [getattr(tokenizer, "bos_id", 0)]
    T = cfg.block_size
    eng = Engine(params, cfg, len_multiple=T, min_buffer=T)   # one cache/buffer shape throughout
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
