"""Continuous batching for the server: one background thread drives the engine's slot state.

Requests wait in a bounded queue. Between decode chunks the scheduler admits waiting requests into
free slots (each choice of a request is one row, prefilled on its own and written into the
running batch), runs one chunk of decode steps for every active row, answers tool calls, and
hands each request the text its rows produced (through the request's own asyncio queue). A row
leaves when it hits a stop token, a stop string, its budget or the context; a cancelled request
(the client disconnected) leaves at the next chunk boundary and frees its rows. So a short request
never waits for a long one, and new requests join a batch already running.

One request can never take the server down: a request whose admission fails gets an error and
its slots back; a failure of a decode chunk fails the requests in that batch, the slot state is
rebuilt, and the scheduler keeps serving (`failures` counts both; `/health` shows them).
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
import traceback
import uuid
from typing import Optional

import jax
import numpy as np

from lm import conversation as chat


class QueueFull(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class Sampling:
    """What to generate: the engine's settings for every choice of a request."""
    n: int = 1
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None        # any 64-bit integer (folded to the engine's 32 bits)
    stop_ids: tuple = ()
    stop_strings: tuple = ()
    top_logprobs: int = 0
    grammar: Optional[str] = None     # response_format as an llguidance grammar (lm.structured)


@dataclasses.dataclass(frozen=True)
class APIOptions:
    """How the answer is shaped (read by the app, and `chat` by the text stream)."""
    chat: bool = True
    logprobs: bool = False
    stream: bool = False
    include_usage: bool = False
    forced: tuple = ()               # reply ids the prompt already ends with (tool_choice)
    calls: bool = True               # report function calls (tool_choice 'none': drop them)


@dataclasses.dataclass
class Choice:
    slot: int = -1
    stream: Optional[chat.TextStream] = None
    seen: int = 0                    # tokens of the row already read
    text: str = ""                   # text handed out
    held: str = ""                   # text held back (could be the start of a stop string)
    tokens: list = dataclasses.field(default_factory=list)      # up to a stop string, if any
    logprobs: list = dataclasses.field(default_factory=list)
    calls: list = dataclasses.field(default_factory=list)       # finished function calls
    finish: Optional[str] = None     # 'stop' | 'length' | 'tool_calls' | 'cancelled' | 'error'


@dataclasses.dataclass
class Runtime:
    """A request's life in the server: its event queue, its rows, whether it was cancelled."""
    loop: Optional[asyncio.AbstractEventLoop] = None
    events: Optional[asyncio.Queue] = None
    choices: list = dataclasses.field(default_factory=list)
    cancelled: bool = False
    admitted_at: Optional[float] = None
    cached: int = 0                  # prompt tokens whose keys/values came from a slot's cache


@dataclasses.dataclass
class Request:
    prompt: list[int]
    sampling: Sampling = Sampling()
    options: APIOptions = APIOptions()
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: float = dataclasses.field(default_factory=time.time)
    rt: Runtime = dataclasses.field(default_factory=Runtime)

    def emit(self, event: dict) -> None:
        rt = self.rt
        if rt.loop is not None and rt.events is not None and not rt.loop.is_closed():
            rt.loop.call_soon_threadsafe(rt.events.put_nowait, event)

    def fail(self, message: str) -> None:
        for c in self.rt.choices:
            c.finish = c.finish or "error"
        self.emit({"type": "error", "message": message})


def engine_seed(seed: Optional[int]) -> int:
    """A request's seed as the engine's uint32 (None: a fresh random one)."""
    if seed is None:
        return int.from_bytes(uuid.uuid4().bytes[:4], "big")
    return int(seed) % (1 << 32)


class Scheduler:
    def __init__(self, engine, tokenizer, *, slots: int = 16, chunk: int = 8,
                 max_queue: int = 64, top_logprobs: int = 0, prefix_cache: bool = True,
                 min_prefix: int = 8):
        self.engine, self.tok = engine, tokenizer
        self.n_slots, self.chunk, self.max_queue = slots, chunk, max_queue
        self.out_len = engine.cfg.block_size
        self.K = top_logprobs
        self.state = self._open()
        self.matchers: list = [None] * slots    # per slot: the grammar of a constrained row
        # prefix caching: per slot, the tokens its cache holds from the last request that ran
        # there; a new prompt that starts with min_prefix or more of them reuses them
        self.prefix_cache, self.min_prefix = prefix_cache, max(1, int(min_prefix))
        self.held: list[list[int]] = [[] for _ in range(slots)]
        self.fresh = False      # a request joined since the last decode call: it took its first
                                # step at admission (Engine.admit first_token), so the next call
                                # hands that token out before decoding on (time to first token)
        self.free = list(range(slots))
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="lm-scheduler", daemon=True)
        self.error: Optional[str] = None     # the scheduler thread died (a bug): why
        self.failures = 0                    # requests failed by an engine error, served on
        self.steps = 0

    def _open(self):
        return self.engine.open_slots(self.n_slots, out_len=self.out_len,
                                      top_logprobs=self.K)

    # -- API (any thread) -----------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
            pending = list(self.active) + list(self.waiting)
        for r in pending:
            r.fail("the server is shutting down")
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)

    def alive(self) -> bool:
        return self.thread.is_alive() and self.error is None

    def submit(self, req: Request) -> None:
        if req.sampling.n > self.n_slots:
            raise ValueError(f"n={req.sampling.n} is more than the server's {self.n_slots} slots")
        with self.lock:
            if self.error is not None or self.stopping:
                raise RuntimeError(self.error or "the server is shutting down")
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self.waiting.append(req)
            self.lock.notify_all()

    def cancel(self, req: Request) -> None:
        with self.lock:
            req.rt.cancelled = True
            self.lock.notify_all()

    def load(self) -> dict:
        with self.lock:
            return {"slots": self.n_slots, "free_slots": len(self.free),
                    "waiting": len(self.waiting), "active": len(self.active),
                    "failures": self.failures}

    # -- the loop (scheduler thread) ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    while not self.stopping and not self.waiting and not self.active:
                        self.lock.wait(timeout=1.0)
                    if self.stopping:
                        return
                    self.waiting = collections.deque(r for r in self.waiting
                                                     if not r.rt.cancelled)
                    admit = []
                    while self.waiting and len(self.free) >= self.waiting[0].sampling.n:
                        req = self.waiting.popleft()
                        req.rt.choices = [Choice(slot=s) for s in self._take_slots(req)]
                        admit.append(req)
                for req in admit:
                    self._admit(req)
                self._step()
        except BaseException as e:  # noqa: BLE001 - a bug in the loop itself: fail loudly
            self.error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
            with self.lock:
                reqs = list(self.active) + list(self.waiting)
            for r in reqs:
                r.fail(f"engine failure: {self.error}")

    def _take_slots(self, req: Request) -> list[int]:
        """Free slots for the request (under the lock): first the one whose cache holds the
        longest start of its prompt (prefix caching), then the least recently used."""
        best, best_n = None, 0
        if self.prefix_cache:
            for s in self.free:
                n = common_prefix(self.held[s], req.prompt)
                if n > best_n:
                    best, best_n = s, n
        if best is not None and min(best_n, len(req.prompt) - 1) >= self.min_prefix:
            self.free.remove(best)
            req.rt.cached = min(best_n, len(req.prompt) - 1)
            return [best] + [self.free.pop(0) for _ in range(req.sampling.n - 1)]
        req.rt.cached = 0
        return [self.free.pop(0) for _ in range(req.sampling.n)]

    def _admit(self, req: Request) -> None:
        s = req.sampling
        slots = [c.slot for c in req.rt.choices]
        try:
            kw = {}
            if req.rt.cached:
                kw["cached"] = [(slots[0], req.rt.cached)] * s.n
            if s.grammar is not None:
                for slot in slots:
                    self.matchers[slot] = self.engine.grammars.matcher(s.grammar)
                kw["constrained"] = [True] * s.n
            self.state = self.engine.admit(
                self.state, slots, [req.prompt] * s.n, max_new_tokens=s.max_tokens,
                temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                seed=engine_seed(s.seed), sample_ids=list(range(s.n)),
                stop_tokens=list(s.stop_ids), first_token=True, **kw)
        except Exception as e:  # noqa: BLE001 - this request fails, the server serves on
            self._recover(f"{type(e).__name__}: {e}", [req])
            return
        for c in req.rt.choices:
            c.stream = chat.TextStream(self.tok, chat=req.options.chat)
            c.stream.push(req.options.forced)        # a forced start (tool_choice) is seen first
        req.rt.admitted_at = time.time()
        self.fresh = True
        with self.lock:
            self.active.append(req)

    def _recover(self, why: str, failed: list[Request], rebuild: bool = False) -> None:
        """Fail `failed` and give their slots back. When the slot state may be lost (a decode
        chunk failed, or the engine had consumed the donated state), every active row fails
        with it and the state is rebuilt; the scheduler then serves on."""
        lost = rebuild or any(x.is_deleted() for x in jax.tree.leaves(self.state)
                              if isinstance(x, jax.Array))
        with self.lock:
            if lost:
                failed = failed + [r for r in self.active if all(r is not f for f in failed)]
            for r in failed:
                if r in self.active:
                    self.active.remove(r)
                self._release(r)
        self.failures += len(failed)
        for r in failed:
            r.fail(f"engine failure: {why}")
        if lost:
            self.state = self._open()
            self.held = [[] for _ in range(self.n_slots)]

    def _step(self) -> None:
        with self.lock:
            active = list(self.active)
        if not active:
            return
        try:
            host = self._decode(active)
        except Exception as e:  # noqa: BLE001 - the batch's requests fail, the server serves on
            self._recover(f"{type(e).__name__}: {e}", active, rebuild=True)
            return
        stop_now = []
        for req in active:
            if req.rt.cancelled:
                for c in req.rt.choices:
                    c.finish = c.finish or "cancelled"
                continue
            for i, c in enumerate(req.rt.choices):
                if c.finish is None:
                    self._advance(req, i, c, host, stop_now)
        try:
            if stop_now:
                self.state = self.engine.cancel(self.state, stop_now)
            self.state = self.engine.serve_tools(self.state, host)
        except Exception as e:  # noqa: BLE001
            self._recover(f"{type(e).__name__}: {e}", active, rebuild=True)
            return
        finished = [r for r in active if all(c.finish is not None for c in r.rt.choices)]
        with self.lock:
            for req in finished:
                self.active.remove(req)
                self._release(req)
        for req in finished:
            if not req.rt.cancelled:
                req.emit({"type": "done", "usage": self.usage(req)})

    def _release(self, req: Request) -> None:
        """The request's slots back to the free list (under the lock), each remembering the
        tokens its cache now holds: the prompt and the reply up to its last token (the last one
        was sampled, never fed back). A failed row holds nothing anyone may reuse."""
        for c in req.rt.choices:
            self.free.append(c.slot)
            self.matchers[c.slot] = None
            ok = c.finish in ("stop", "length", "tool_calls")
            self.held[c.slot] = (list(req.prompt) + c.tokens[:-1]) if ok else []

    def _decode(self, active: list[Request]) -> dict:
        cancel_slots = [c.slot for r in active if r.rt.cancelled for c in r.rt.choices
                        if c.finish is None]
        if cancel_slots:
            self.state = self.engine.cancel(self.state, cancel_slots)
        # constrained rows take one token per call: their masks are computed between calls
        steps, self.fresh = (0 if self.fresh else self.chunk), False
        if any(m is not None for m in self.matchers):
            self.state = self.engine.serve_grammar(self.state, self.matchers)
            steps = min(steps, 1)
        self.state = self.engine.decode(self.state, steps)
        self.steps += steps
        fields = ["tokens", "n_gen", "done", "stopped", "logprobs"]
        if self.K and any(r.sampling.top_logprobs for r in active):   # [slots, N, K]: only
            fields += ["top_ids", "top_logprobs"]                      # when someone asked
        return jax.device_get({k: getattr(self.state, k) for k in fields})

    def _advance(self, req: Request, i: int, c: Choice, host: dict, stop_now: list) -> None:
        """Hand out the row's new text. Tokens are read one at a time, so a stop string ends
        the choice at the token that completes it: tokens past it are neither shown nor
        counted (usage, log-probs)."""
        s, r = req.sampling, c.slot
        n = int(host["n_gen"][r])
        done, stopped = bool(host["done"][r]), bool(host["stopped"][r])
        stop_ids = set(s.stop_ids)
        tops = s.top_logprobs if self.K else 0
        buf, finish, piece_lp = c.held, None, []
        for k in range(c.seen, n):
            t = int(host["tokens"][r, k])
            c.tokens.append(t)
            if t in stop_ids:
                continue
            piece_lp.append({"id": t, "logprob": float(host["logprobs"][r, k]),
                             "top": list(zip(host["top_ids"][r, k, :tops].tolist(),
                                             host["top_logprobs"][r, k, :tops].tolist()))
                             if tops else []})
            buf += c.stream.push([t])
            hit = _first_stop(buf, s.stop_strings)
            if hit is not None:
                buf, finish = buf[:hit], "stop"
                break
        c.seen = n
        if finish is None and done:
            buf += c.stream.flush()
            hit = _first_stop(buf, s.stop_strings)
            buf, finish = (buf, "stop" if stopped else "length") if hit is None else \
                (buf[:hit], "stop")
            c.held = ""
        elif finish is None:
            keep = _partial_stop(buf, s.stop_strings)
            buf, c.held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        if finish == "stop" and not done:
            stop_now.append(r)
        calls = c.stream.take_calls() if req.options.calls else []
        first = len(c.calls)
        c.calls += calls
        if finish == "stop" and any("error" not in x for x in c.calls):
            finish = "tool_calls"
        c.text += buf
        c.logprobs += piece_lp
        if buf or finish or piece_lp or calls:
            req.emit({"type": "delta", "index": i, "text": buf, "finish": finish,
                      "logprobs": piece_lp, "calls": calls, "first_call": first})
        c.finish = finish

    def usage(self, req: Request) -> dict:
        completion = sum(len(c.tokens) for c in req.rt.choices)
        return {"prompt_tokens": len(req.prompt), "completion_tokens": completion,
                "total_tokens": len(req.prompt) + completion,
                "prompt_tokens_details": {"cached_tokens": req.rt.cached}}


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if len(diff) else n


def _first_stop(text: str, stops) -> Optional[int]:
    """Where the first stop string in `text` starts, or None."""
    hits = [text.find(x) for x in stops if x in text]
    return min(hits) if hits else None


def _partial_stop(text: str, stops) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best
