"""Tool calls during generation: the protocol's tokens, the per-row state the decode loop carries,
and the host side that answers a call between decode chunks.

The protocol (nanochat's): the model writes `<|python_start|> expr <|python_end|>`; the engine
parks the row, the host evaluates `expr` with the safe calculator (`lm.tools_calc.calculate`,
never raises) and queues `<|output_start|> result <|output_end|>`; the next decode chunk emits
the queued tokens before sampling again. Queued tokens are flagged `forced` (SFT/RL losses mask
them) and never start a call or end a row.

    ToolState        per-row pytree: in a call?, where the expression starts, parked?, the queue
    next_forced(ts)  the token each row must emit next, if any     (inside the jitted loop)
    advance(ts, ..)  the state machine after one decode step        (inside the jitted loop)
    serve(ts, ..)    evaluate parked rows' expressions, fill queues (host, between chunks)
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lm.tokenizer import ChatTokens
from lm.tools_calc import calculate

Array = jax.Array


@struct.dataclass
class ToolState:
    in_call: Array          # [R] bool: between python_start and python_end
    call_start: Array       # [R] int32: index in the row's output of the expression's first token
    waiting: Array          # [R] bool: the expression is complete; parked until the host answers
    queue: Array            # [R, Q] int32: forced tokens to emit next
    q_len: Array            # [R] int32
    q_pos: Array            # [R] int32
    tokens: ChatTokens = struct.field(pytree_node=False, default=None)


def init(tokens: ChatTokens, rows: int, queue_len: int) -> ToolState:
    zeros, false = jnp.zeros((rows,), jnp.int32), jnp.zeros((rows,), bool)
    return ToolState(in_call=false, call_start=zeros, waiting=false,
                     queue=jnp.zeros((rows, queue_len), jnp.int32), q_len=zeros, q_pos=zeros,
                     tokens=tokens)


def next_forced(ts: ToolState) -> tuple[Array, Array]:
    """(token, has_one) per row: the head of the row's forced-token queue."""
    has = ts.q_pos < ts.q_len
    idx = jnp.minimum(ts.q_pos, ts.queue.shape[1] - 1)
    return jnp.take_along_axis(ts.queue, idx[:, None], axis=1)[:, 0], has


def advance(ts: ToolState, tok: Array, ran: Array, forced: Array, n_gen: Array,
            done: Array) -> ToolState:
    """After a decode step that emitted `tok` in the rows that `ran` (`n_gen`: tokens per row
    now): pop forced tokens; a sampled python_start opens a call, a sampled python_end parks the
    row (unless it is `done`)."""
    t = ts.tokens
    sampled = ran & ~forced
    start = sampled & (tok == t.python_start)
    end = sampled & (tok == t.python_end) & ts.in_call
    return ts.replace(
        in_call=(ts.in_call | start) & ~end,
        call_start=jnp.where(start, n_gen, ts.call_start),
        waiting=(ts.waiting | end) & ~done,
        q_pos=ts.q_pos + (ran & forced).astype(jnp.int32))


def serve(ts: ToolState, out_tokens: np.ndarray, n_gen: np.ndarray, done: np.ndarray,
          tool_fn: Callable[[list[int]], list[int]]) -> ToolState:
    """Host side: run `tool_fn` on every parked row's expression and queue
    `output_start, result, output_end` (the result cut to fit the queue). A tool that raises
    gives an empty result; generation goes on."""
    host = jax.device_get({"waiting": ts.waiting, "call_start": ts.call_start})
    rows = np.flatnonzero(host["waiting"] & ~done)
    if rows.size == 0:
        return ts
    queue, q_len, q_pos, waiting, in_call = (np.array(x) for x in jax.device_get(
        (ts.queue, ts.q_len, ts.q_pos, ts.waiting, ts.in_call)))
    Q, t = queue.shape[1], ts.tokens
    for r in rows:
        expr = out_tokens[r, host["call_start"][r]:n_gen[r] - 1].tolist()   # drop python_end
        try:
            result = list(tool_fn(expr))
        except Exception as e:  # noqa: BLE001 - a failing tool must not stop generation
            result = []
            print(f"[tools] tool failed on row {r}: {type(e).__name__}: {e}")
        out = [t.output_start, *result[:Q - 2], t.output_end]
        queue[r, :len(out)] = out
        q_len[r], q_pos[r] = len(out), 0
        waiting[r], in_call[r] = False, False
    put = lambda new, old: jax.device_put(new, old.sharding)   # keep the state's placement
    return ts.replace(queue=put(queue, ts.queue), q_len=put(q_len, ts.q_len),
                      q_pos=put(q_pos, ts.q_pos), waiting=put(waiting, ts.waiting),
                      in_call=put(in_call, ts.in_call))


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
