"""Continuous batching for the server: one background thread drives the engine's slot state.

Requests wait in a bounded queue. Between decode chunks the scheduler admits waiting requests into
free slots (each choice of a request is one row, prefilled on its own and written into the
running batch), runs one chunk of decode steps for every active row, answers tool calls, and
hands each request the text its rows produced (through the request's own asyncio queue). A row
leaves when it hits a stop token, a stop string, its budget or the context; a cancelled request
(the client disconnected) leaves at the next chunk boundary and frees its rows. So a short request
never waits for a long one, and new requests join a batch already running.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
import uuid
from typing import Optional

import jax
import numpy as np

from lm import conversation as chat


class QueueFull(RuntimeError):
    pass


@dataclasses.dataclass
class Choice:
    slot: int = -1
    stream: Optional[chat.TextStream] = None
    seen: int = 0                    # tokens of the row already handed out
    text: str = ""                   # text handed out
    held: str = ""                   # text held back (could be the start of a stop string)
    tokens: list = dataclasses.field(default_factory=list)
    logprobs: list = dataclasses.field(default_factory=list)
    finish: Optional[str] = None     # 'stop' | 'length'


@dataclasses.dataclass
class Request:
    prompt: list[int]
    n: int = 1
    max_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: Optional[int] = None
    stop_ids: tuple = ()
    stop_strings: tuple = ()
    top_logprobs: int = 0
    chat: bool = True
    logprobs: bool = False           # return log-probs (API option, read by the app)
    stream: bool = False
    include_usage: bool = False
    id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: float = dataclasses.field(default_factory=time.time)
    # runtime
    choices: list = dataclasses.field(default_factory=list)
    loop: Optional[asyncio.AbstractEventLoop] = None
    events: Optional[asyncio.Queue] = None
    cancelled: bool = False
    admitted_at: Optional[float] = None

    def emit(self, event: dict) -> None:
        if self.loop is not None and self.events is not None:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Scheduler:
    def __init__(self, engine, tokenizer, *, slots: int = 16, chunk: int = 8,
                 max_queue: int = 64, top_logprobs: int = 0):
        self.engine, self.tok = engine, tokenizer
        self.n_slots, self.chunk, self.max_queue = slots, chunk, max_queue
        self.out_len = engine.cfg.block_size
        self.K = top_logprobs
        self.state = engine.open_slots(slots, out_len=self.out_len, top_logprobs=top_logprobs)
        self.free = list(range(slots))
        self.waiting: collections.deque[Request] = collections.deque()
        self.active: list[Request] = []
        self.lock = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="lm-scheduler", daemon=True)
        self.error: Optional[BaseException] = None
        self.steps = 0

    # -- API (any thread) -----------------------------------------------------------------------
    def start(self) -> "Scheduler":
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.thread.join(timeout=30)

    def submit(self, req: Request) -> None:
        if req.n > self.n_slots:
            raise ValueError(f"n={req.n} is more than the server's {self.n_slots} slots")
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self.waiting.append(req)
            self.lock.notify_all()

    def cancel(self, req: Request) -> None:
        with self.lock:
            req.cancelled = True
            self.lock.notify_all()

    def load(self) -> dict:
        with self.lock:
            return {"slots": self.n_slots, "free_slots": len(self.free),
                    "waiting": len(self.waiting), "active": len(self.active)}

    # -- the loop (scheduler thread) ------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                with self.lock:
                    while not self.stopping and not self.waiting and not self.active:
                        self.lock.wait(timeout=1.0)
                    if self.stopping:
                        return
                    self._drop_cancelled_waiting()
                    admit = []
                    while self.waiting and len(self.free) >= self.waiting[0].n:
                        req = self.waiting.popleft()
                        req.choices = [Choice(slot=self.free.pop(0)) for _ in range(req.n)]
                        admit.append(req)
                for req in admit:
                    self._admit(req)
                self._step()
        except BaseException as e:  # noqa: BLE001 - fail every request loudly, not silently
            self.error = e
            with self.lock:
                reqs = list(self.active) + list(self.waiting)
            for r in reqs:
                r.emit({"type": "error", "message": f"engine failure: {type(e).__name__}: {e}"})
            raise

    def _drop_cancelled_waiting(self) -> None:
        keep = collections.deque(r for r in self.waiting if not r.cancelled)
        self.waiting = keep

    def _admit(self, req: Request) -> None:
        seed = req.seed if req.seed is not None else int.from_bytes(uuid.uuid4().bytes[:4], "big")
        slots = [c.slot for c in req.choices]
        stops = list(req.stop_ids)
        self.state = self.engine.admit(
            self.state, slots, [req.prompt] * req.n, max_new_tokens=req.max_tokens,
            temperature=req.temperature, top_k=req.top_k, top_p=req.top_p, seed=seed,
            sample_ids=list(range(req.n)), stop_tokens=stops)
        for c in req.choices:
            c.stream = chat.TextStream(self.tok, chat=req.chat)
        req.admitted_at = time.time()
        with self.lock:
            self.active.append(req)

    def _step(self) -> None:
        with self.lock:
            active = list(self.active)
        if not active:
            return
        cancel_slots = [c.slot for r in active if r.cancelled for c in r.choices
                        if c.finish is None]
        if cancel_slots:
            self.state = self.engine.cancel(self.state, cancel_slots)
        self.state = self.engine.decode(self.state, self.chunk)
        self.steps += self.chunk
        fields = ["tokens", "n_gen", "done", "stopped", "logprobs"]
        if self.K:
            fields += ["top_ids", "top_logprobs"]
        host = jax.device_get({k: getattr(self.state, k) for k in fields})
        stop_now = []
        for req in active:
            if req.cancelled:
                for c in req.choices:
                    c.finish = c.finish or "cancelled"
                continue
            for i, c in enumerate(req.choices):
                if c.finish is not None:
                    continue
                self._advance(req, i, c, host, stop_now)
        if stop_now:
            self.state = self.engine.cancel(self.state, stop_now)
        self.state = self.engine.serve_tools(self.state, host)
        finished = [r for r in active if all(c.finish is not None for c in r.choices)]
        with self.lock:
            for req in finished:
                self.active.remove(req)
                self.free.extend(c.slot for c in req.choices)
        for req in finished:
            if not req.cancelled:
                req.emit({"type": "done", "usage": self.usage(req)})

    def _advance(self, req: Request, i: int, c: Choice, host: dict, stop_now: list) -> None:
        r = c.slot
        n = int(host["n_gen"][r])
        new = host["tokens"][r, c.seen:n].tolist()
        lps = host["logprobs"][r, c.seen:n].tolist()
        tops = None
        if self.K and req.top_logprobs:
            tops = (host["top_ids"][r, c.seen:n, :req.top_logprobs].tolist(),
                    host["top_logprobs"][r, c.seen:n, :req.top_logprobs].tolist())
        c.seen = n
        done, stopped = bool(host["done"][r]), bool(host["stopped"][r])
        stop_ids = set(req.stop_ids)
        shown = [t for t in new if t not in stop_ids]
        piece_ids, piece_lp = [], []
        for k, t in enumerate(new):
            if t in stop_ids:
                continue
            piece_ids.append(t)
            piece_lp.append({"id": t, "logprob": lps[k],
                             "top": list(zip(*[x[k] for x in tops])) if tops else []})
        c.tokens += new
        text = c.stream.push(shown)
        if done:
            text += c.stream.flush()
        finish = None
        buf = c.held + text
        if req.stop_strings:
            hit = min((buf.find(s), s) for s in req.stop_strings if s in buf) \
                if any(s in buf for s in req.stop_strings) else None
            if hit is not None:
                buf, finish = buf[:hit[0]], "stop"
                if not done:
                    stop_now.append(r)
            elif not done:
                keep = _partial_stop(buf, req.stop_strings)
                buf, c.held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        if finish is None and done:
            finish = "stop" if stopped else "length"
            c.held = ""
        c.text += buf
        c.logprobs += piece_lp
        if buf or finish or piece_lp:
            req.emit({"type": "delta", "index": i, "text": buf, "finish": finish,
                      "logprobs": piece_lp})
        c.finish = finish

    def usage(self, req: Request) -> dict:
        completion = sum(len(c.tokens) for c in req.choices)
        return {"prompt_tokens": len(req.prompt), "completion_tokens": completion,
                "total_tokens": len(req.prompt) + completion}


def _partial_stop(text: str, stops) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string."""
    best = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                best = max(best, k)
                break
    return best
