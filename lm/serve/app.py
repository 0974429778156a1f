"""The OpenAI-compatible HTTP API and the chat page, over the continuous-batching scheduler.

Routes: GET /v1/models, POST /v1/chat/completions, POST /v1/completions, GET /health, GET / (the
chat page). Fields honoured: messages / prompt, model, temperature, top_p, top_k (extra),
max_tokens and max_completion_tokens, stop, n, seed, stream, stream_options.include_usage,
logprobs / top_logprobs (the model's own log-probs, temperature 1). Unknown fields are ignored.
Errors have the OpenAI shape `{"error": {"message", "type", "param", "code"}}`.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any, Optional

from fastapi import FastAPI, Request as HTTPRequest
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from lm import conversation as chat
from lm.serve.scheduler import QueueFull, Request, Scheduler

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_N = 8
MAX_TOP_LOGPROBS = 20


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# ---- request parsing ------------------------------------------------------------------------------

def _num(body: dict, key: str, kind, default, lo=None, hi=None, lo_open=False):
    v = body.get(key, default)
    if v is None:
        return default
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise APIError(400, f"'{key}' must be an integer, got {v!r}", param=key,
                       code="invalid_type")
    if kind is float and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise APIError(400, f"'{key}' must be a number, got {v!r}", param=key,
                       code="invalid_type")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise APIError(400, f"'{key}' must be {'>' if lo_open else '>='} {lo}, got {v}",
                       param=key, code="invalid_value")
    if hi is not None and v > hi:
        raise APIError(400, f"'{key}' must be <= {hi}, got {v}", param=key, code="invalid_value")
    return kind(v)


def _stop(body: dict) -> tuple:
    s = body.get("stop")
    if s is None:
        return ()
    if isinstance(s, str):
        s = [s]
    if not isinstance(s, list) or not all(isinstance(x, str) and x for x in s) or len(s) > 4:
        raise APIError(400, "'stop' must be a non-empty string or a list of up to 4 of them",
                       param="stop", code="invalid_type")
    return tuple(s)


def _messages(body: dict) -> dict:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", param="messages",
                       code="invalid_type" if not isinstance(msgs, list) else "invalid_value")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise APIError(400, f"messages[{i}] must be an object", param="messages")
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(400, f"messages[{i}].role: unknown role {role!r} (system, user, "
                                f"assistant)", param="messages", code="invalid_value")
        if isinstance(content, list):   # [{"type": "text", "text": ...}]
            if not all(isinstance(p, dict) and p.get("type") == "text" and
                       isinstance(p.get("text"), str) for p in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported",
                               param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content must be a string", param="messages",
                           code="invalid_type")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    # several system messages: joined into one (lm's format has one, first)
    systems = [m["content"] for m in out if m["role"] == "system"]
    rest = [m for m in out if m["role"] != "system"]
    conv = {"messages": ([{"role": "system", "content": "\n\n".join(systems)}] if systems else [])
            + rest}
    try:
        chat.validate(conv)
    except chat.ConversationError as e:
        raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None
    if rest[-1]["role"] != "user":
        raise APIError(400, "the last message must be the user's", param="messages",
                       code="invalid_value")
    return conv


def parse(body: Any, *, chat_mode: bool, tok, block_size: int, served: str) -> Request:
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model not in (served, "default"):
        raise APIError(404, f"model {model!r} does not exist (this server serves {served!r})",
                       type_="invalid_request_error", param="model", code="model_not_found")
    if chat_mode:
        conv = _messages(body)
        prompt = chat.render_for_completion(conv, tok)
        stop_ids = (tok.special_id("<|assistant_end|>"), int(tok.bos_id))
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str) or not p:
            raise APIError(400, "'prompt' must be a non-empty string", param="prompt",
                           code="invalid_type")
        bos = getattr(tok, "bos_id", None)
        prompt = ([int(bos)] if bos is not None else []) + list(tok.encode(p))
        stop_ids = (int(bos),) if bos is not None else ()
    room = block_size - len(prompt)
    if room < 1:
        raise APIError(400, f"the prompt is {len(prompt)} tokens; the model's context is "
                            f"{block_size}", param="messages" if chat_mode else "prompt",
                       code="context_length_exceeded")
    mt_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    max_tokens = _num(body, mt_key, int, min(256, room), lo=0, lo_open=True)
    if max_tokens > room:
        raise APIError(400, f"'{mt_key}' is {max_tokens}, but the prompt ({len(prompt)} tokens) "
                            f"leaves room for {room} in the model's context of {block_size}",
                       param=mt_key, code="context_length_exceeded")
    want_lp = body.get("logprobs")
    if want_lp is not None and not isinstance(want_lp, (bool, int)):
        raise APIError(400, "'logprobs' must be a boolean (chat) or an integer (completions)",
                       param="logprobs", code="invalid_type")
    if chat_mode:
        top_lp = _num(body, "top_logprobs", int, 0, lo=0, hi=MAX_TOP_LOGPROBS)
        if top_lp and not want_lp:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    else:
        top_lp = _num(body, "logprobs", int, 0, lo=0, hi=5) if not isinstance(want_lp, bool) \
            else 0
    req = Request(prompt=prompt, n=_num(body, "n", int, 1, lo=1, hi=MAX_N),
                  max_tokens=max_tokens,
                  temperature=_num(body, "temperature", float, 1.0, lo=0, hi=2),
                  top_p=_num(body, "top_p", float, 1.0, lo=0, hi=1, lo_open=True),
                  top_k=_num(body, "top_k", int, 0, lo=0),
                  seed=_num(body, "seed", int, None) if body.get("seed") is not None else None,
                  stop_ids=stop_ids, stop_strings=_stop(body), top_logprobs=top_lp,
                  chat=chat_mode)
    req.logprobs = bool(want_lp) if chat_mode else want_lp is not None and not isinstance(
        want_lp, bool)
    req.stream = body.get("stream") is True
    so = body.get("stream_options") or {}
    req.include_usage = isinstance(so, dict) and so.get("include_usage") is True
    return req


# ---- responses -------------------------------------------------------------------------------------

def _token_str(tok, i: int) -> str:
    try:
        return tok.decode([i])
    except Exception:  # noqa: BLE001
        return ""


def chat_logprobs(tok, items: list[dict]) -> dict:
    content = []
    for it in items:
        s = _token_str(tok, it["id"])
        content.append({"token": s, "logprob": it["logprob"], "bytes": list(s.encode()),
                        "top_logprobs": [{"token": _token_str(tok, t), "logprob": lp,
                                          "bytes": list(_token_str(tok, t).encode())}
                                         for t, lp in it["top"]]})
    return {"content": content}


def completion_logprobs(tok, items: list[dict]) -> dict:
    return {"tokens": [_token_str(tok, it["id"]) for it in items],
            "token_logprobs": [it["logprob"] for it in items],
            "top_logprobs": [{_token_str(tok, t): lp for t, lp in it["top"]} for it in items]}


def create_app(run, *, api_key: Optional[str] = None, slots: int = 16, chunk: int = 8,
               max_queue: int = 64, warmup: bool = True):
    """The FastAPI app serving `run` (an `lm.runs.Run`); its scheduler starts with the app."""
    from lm.chat import CHAT_STAGES, has_chat_tokens
    from lm.sampling import Engine, ToolTokens

    tok, cfg = run.tokenizer, run.config
    chat_ok = has_chat_tokens(tok) and run.stage in CHAT_STAGES
    served = cfg.name
    engine = Engine(run.params, cfg.model, tokenizer=tok,
                    tools=ToolTokens.from_tokenizer(tok) if chat_ok else None, grow_cache=False)
    sched = Scheduler(engine, tok, slots=slots, chunk=chunk, max_queue=max_queue,
                      top_logprobs=MAX_TOP_LOGPROBS)
    app = FastAPI(title="lm", docs_url=None, redoc_url=None)
    app.state.scheduler = sched

    @app.on_event("startup")
    async def _start():
        sched.start()
        if warmup:   # compile prefill/decode before the first request
            await asyncio.get_running_loop().run_in_executor(None, _warmup)

    @app.on_event("shutdown")
    async def _stop():
        sched.stop()

    def _warmup():
        """Compile prefill and decode for greedy and for the chat page's default sampling."""
        loop = asyncio.new_event_loop()
        bos = getattr(tok, "bos_id", 0) or 0
        for settings in (dict(temperature=0.0), dict(temperature=0.7, top_k=50)):
            req = Request(prompt=[int(bos)], max_tokens=2, chat=chat_ok, stop_ids=(),
                          **settings)
            req.loop, req.events = loop, asyncio.Queue()
            sched.submit(req)
            loop.run_until_complete(_drain(req))
        loop.close()

    async def _drain(req):
        while (await req.events.get())["type"] not in ("done", "error"):
            pass

    def error(e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    def check_auth(request: HTTPRequest):
        if api_key is None:
            return
        h = request.headers.get("authorization", "")
        if h != f"Bearer {api_key}":
            raise APIError(401, "invalid or missing API key (Authorization: Bearer ...)",
                           type_="authentication_error", code="invalid_api_key")

    @app.middleware("http")
    async def _auth(request: HTTPRequest, call_next):
        if request.url.path.startswith("/v1"):
            try:
                check_auth(request)
            except APIError as e:
                return error(e)
        return await call_next(request)

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        return error(e)

    @app.get("/health")
    async def health():
        status = "error" if sched.error is not None else "ok"
        return {"status": status, "model": served, **sched.load()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": served, "object": "model", "created": int(time.time()), "owned_by": "lm",
            "lm_stage": run.stage, "lm_chat": chat_ok, "context_length": cfg.model.block_size}]}

    @app.get("/")
    async def page():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    async def body_of(request: HTTPRequest):
        raw = await request.body()
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise APIError(400, "the request body is not valid JSON", code="invalid_json") \
                from None

    async def serve(request: HTTPRequest, chat_mode: bool):
        if chat_mode and not chat_ok:
            raise APIError(400, f"{served} is a base model ({run.stage} stage, no chat format): "
                                f"use /v1/completions", param="messages",
                           code="chat_not_supported")
        body = await body_of(request)
        req = parse(body, chat_mode=chat_mode, tok=tok, block_size=cfg.model.block_size,
                    served=served)
        req.loop, req.events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            sched.submit(req)
        except QueueFull as e:
            raise APIError(429, f"server busy: {e}; retry later", type_="rate_limit_error",
                           code="queue_full") from None
        kind = "chat.completion" if chat_mode else "text_completion"
        rid = ("chatcmpl-" if chat_mode else "cmpl-") + req.id
        created = int(req.created)
        if req.stream:
            return StreamingResponse(stream(request, req, rid, created, chat_mode),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            while True:
                ev = await req.events.get()
                if ev["type"] == "error":
                    raise APIError(500, ev["message"], type_="server_error")
                if ev["type"] == "done":
                    break
        except asyncio.CancelledError:
            sched.cancel(req)
            raise
        choices = []
        for i, c in enumerate(req.choices):
            lp = None
            if req.logprobs:
                lp = chat_logprobs(tok, c.logprobs) if chat_mode else \
                    completion_logprobs(tok, c.logprobs)
            if chat_mode:
                choices.append({"index": i, "message": {"role": "assistant", "content": c.text},
                                "logprobs": lp, "finish_reason": c.finish})
            else:
                choices.append({"index": i, "text": c.text, "logprobs": lp,
                                "finish_reason": c.finish})
        return {"id": rid, "object": kind, "created": created, "model": served,
                "choices": choices, "usage": ev["usage"], "system_fingerprint": "lm"}

    async def stream(request: HTTPRequest, req: Request, rid: str, created: int,
                     chat_mode: bool):
        kind = "chat.completion.chunk" if chat_mode else "text_completion"

        def chunk(choices, usage=None):
            d = {"id": rid, "object": kind, "created": created, "model": served,
                 "choices": choices, "system_fingerprint": "lm"}
            if req.include_usage:
                d["usage"] = usage
            return f"data: {json.dumps(d)}\n\n"

        try:
            if chat_mode:
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                              "logprobs": None, "finish_reason": None} for i in range(req.n)])
            while True:
                if await request.is_disconnected():
                    sched.cancel(req)
                    return
                try:
                    ev = await asyncio.wait_for(req.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if ev["type"] == "error":
                    err = APIError(500, ev["message"], type_="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                if ev["type"] == "done":
                    if req.include_usage:
                        yield chunk([], ev["usage"])
                    break
                lp = None
                if req.logprobs and ev["logprobs"]:
                    lp = chat_logprobs(tok, ev["logprobs"]) if chat_mode else \
                        completion_logprobs(tok, ev["logprobs"])
                if chat_mode:
                    delta = {"content": ev["text"]} if ev["text"] or not ev["finish"] else {}
                    yield chunk([{"index": ev["index"], "delta": delta, "logprobs": lp,
                                  "finish_reason": ev["finish"]}])
                else:
                    yield chunk([{"index": ev["index"], "text": ev["text"], "logprobs": lp,
                                  "finish_reason": ev["finish"]}])
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            sched.cancel(req)
            raise

    @app.post("/v1/chat/completions")
    async def chat_completions(request: HTTPRequest):
        return await serve(request, True)

    @app.post("/v1/completions")
    async def completions(request: HTTPRequest):
        return await serve(request, False)

    return app
