"""The OpenAI-compatible HTTP API and the chat page, over the continuous-batching scheduler.

Routes (module-level, reading `app.state.lm`, a `Served`): GET /v1/models, POST
/v1/chat/completions, POST /v1/completions, GET /health, GET / (the chat page), GET
/openapi.json (the request bodies' schema, `lm.serve.schema`). Fields honoured: messages /
prompt, model, temperature, top_p, top_k (extra), max_tokens and max_completion_tokens, stop, n,
seed, stream, stream_options.include_usage, logprobs / top_logprobs (the model's own log-probs,
temperature 1). Unknown fields are ignored. Errors have the OpenAI shape
`{"error": {"message", "type", "param", "code"}}`.

Guards, before a body is read: its size (`max_body_bytes`, 413); the `Host` header against the
bound address and `allowed_hosts` (DNS rebinding); a browser's `Origin` against the server's
own and `allowed_origins` (a web page the user visits cannot drive the local server); the API key
compared in constant time. Bodies are validated by the schema and tokenized off the event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import os
import re
import time
from typing import Any, Optional, Sequence
from urllib.parse import urlsplit

from fastapi import APIRouter, FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lm import conversation as chat
from lm import audio, images, stages, structured
from lm.sampling import Engine, EngineSettings
from lm.search import SearchIndex, engine_tool
from lm.serve.schema import MAX_STOP, MAX_TOP_LOGPROBS, ChatRequest, Common, CompletionRequest
from lm.serve.scheduler import APIOptions, QueueFull, Request, Sampling, Scheduler

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_BODY_BYTES = 1 << 20


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


@dataclasses.dataclass
class Served:
    """What the routes serve: the run, its tokenizer and the scheduler, and the guards."""
    run: Any
    scheduler: Scheduler
    chat_ok: bool
    api_key: Optional[str]
    allowed_hosts: frozenset
    allowed_origins: frozenset
    max_body_bytes: int
    warmup: bool

    @property
    def tok(self):
        return self.run.tokenizer

    @property
    def name(self) -> str:
        return self.run.config.name

    @property
    def block_size(self) -> int:
        return self.run.config.model.block_size


def served(request: HTTPRequest) -> Served:
    return request.app.state.lm


# ---- requests: the schema's body -> a scheduler Request --------------------------------------------

def _prompt_ids(s: Served, body: Common, chat_mode: bool, forced: tuple = ()
                ) -> tuple[list[int], tuple, str]:
    """(prompt ids, stop ids, the field that holds the prompt), or APIError. `forced`: the
    reply's forced start, appended to a chat prompt (tool_prefix)."""
    tok, param = s.tok, "messages" if chat_mode else "prompt"
    if chat_mode:
        texts = [_plain(m.content) for m in body.messages] + \
            [t.function.model_dump_json() for t in body.tools or []]
    else:
        p = body.prompt
        if isinstance(p, list):
            if len(p) != 1:
                raise APIError(400, "'prompt' must be one string (a list of one is accepted)",
                               param="prompt", code="invalid_value")
            p = p[0]
        if not p:
            raise APIError(400, "'prompt' must be a non-empty string", param="prompt",
                           code="invalid_value")
        texts = [p]
    # the cheapest length check first: a token covers at most `longest` bytes
    longest = max(int(tok.token_bytes().max()), 1)
    if sum(len(t.encode("utf-8")) for t in texts) > s.block_size * longest:
        raise APIError(400, f"the {param} is far longer than the model's context of "
                            f"{s.block_size} tokens", param=param, code="context_length_exceeded")
    try:
        if chat_mode:
            prompt = chat.render_for_completion(conversation_of(body), tok) + list(forced)
            return prompt, tok.chat.stops, param
        bos = [] if tok.bos_id is None else [tok.bos_id]
        return bos + tok.encode(texts[0]), tuple(bos), param
    except chat.ConversationError as e:
        raise APIError(400, f"messages: {e}", param="messages", code="invalid_value") from None
    except ValueError as e:       # text the tokenizer cannot encode (a char vocabulary)
        raise APIError(400, f"{param}: {e}", param=param, code="invalid_value") from None


def _plain(content) -> str:
    """A message's text parts (its images are at most MAX_SIDE² / 4 tokens each)."""
    if content is None:
        return ""
    return "".join(p.text for p in content if p.type == "text") \
        if isinstance(content, list) else content


def _text(content, k: int) -> str:
    if content is None:
        return ""
    if not isinstance(content, list):
        return content
    if any(p.type != "text" for p in content):
        raise APIError(400, f"messages[{k}]: images and audio go in user messages",
                       param="messages", code="invalid_value")
    return "".join(p.text for p in content)


_MD_IMAGE = re.compile(r"!\[[^\]]*\]\((data:image/[^)\s]+)\)")


def _image(url: str, k: int) -> dict:
    try:
        return {"type": "image", "codes": images.encode(images.from_data_url(url))}
    except images.ImageError as e:
        raise APIError(400, f"messages[{k}]: {e}", param="messages",
                       code="invalid_image") from None


def _sound(part, k: int) -> dict:
    try:
        return {"type": "audio", "codes": audio.encode(audio.from_base64(
            part.input_audio.data, part.input_audio.format))}
    except audio.AudioError as e:
        raise APIError(400, f"messages[{k}]: {e}", param="messages",
                       code="invalid_audio") from None


def _user_content(content, k: int):
    """A user message's content: text, or text, image and audio parts (as codes)."""
    if not isinstance(content, list) or all(p.type == "text" for p in content):
        return _text(content, k)
    return [_image(p.image_url.url, k) if p.type == "image_url" else _sound(p, k)
            if p.type == "input_audio" else {"type": "text", "text": p.text} for p in content]


def _assistant_content(text: str, k: int):
    """An earlier reply as sent back by a client: the images it drew (Markdown with a data URL,
    as this server writes them) become image parts again."""
    if not _MD_IMAGE.search(text):
        return text
    parts, last = [], 0
    for m in _MD_IMAGE.finditer(text):
        if m.start() > last:
            parts.append({"type": "text", "text": text[last:m.start()]})
        parts.append(_image(m.group(1), k))
        last = m.end()
    if last < len(text):
        parts.append({"type": "text", "text": text[last:]})
    return parts


def conversation_of(body: ChatRequest) -> dict:
    """The messages as lm's conversation (several system messages joined into the first; an
    assistant message's tool_calls as tool_call parts; tool messages as tool turns), with the
    offered functions unless tool_choice is 'none'."""
    msgs = []
    for k, m in enumerate(body.messages):
        if m.role == "user":
            msgs.append({"role": "user", "content": _user_content(m.content, k)})
            continue
        text = _text(m.content, k)
        if m.role == "assistant" and m.tool_calls:
            parts = ([{"type": "text", "text": text}] if text else []) + [
                {"type": "tool_call", "id": c.id, "name": c.function.name,
                 "arguments": c.function.arguments} for c in m.tool_calls]
            msgs.append({"role": "assistant", "content": parts})
        elif m.role == "tool":
            if m.tool_call_id is None:
                raise APIError(400, f"messages[{k}]: a tool message needs 'tool_call_id'",
                               param="messages", code="invalid_value")
            msgs.append({"role": "tool", "tool_call_id": m.tool_call_id, "content": text})
        elif m.role == "assistant":
            msgs.append({"role": "assistant", "content": _assistant_content(text, k)})
        else:
            msgs.append({"role": "system" if m.role == "developer" else m.role,
                         "content": text})
    systems = [m["content"] for m in msgs if m["role"] == "system"]
    rest = [m for m in msgs if m["role"] != "system"]
    if not rest or rest[-1]["role"] not in ("user", "tool"):
        raise APIError(400, "the last message must be the user's (or a tool result)",
                       param="messages", code="invalid_value")
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] \
        if body.tool_choice != "none" else []
    return {"messages": ([{"role": "system", "content": "\n\n".join(systems)}] if systems
                         else []) + rest, "tools": tools}


def tool_prefix(body: ChatRequest, tok) -> list[int]:
    """The reply's forced start for tool_choice: 'required' -> inside a call; a named function
    -> inside a call of it, at its arguments. 'auto' (the default) and 'none' -> nothing."""
    choice, tools = body.tool_choice, body.tools or []
    if choice is None or choice in ("auto", "none"):
        if tools and tok.functions is None:
            raise APIError(400, "this model's tokenizer has no function-call tokens: it cannot "
                                "take 'tools'", param="tools", code="invalid_value")
        return []
    if not tools:
        raise APIError(400, f"'tool_choice' {choice if isinstance(choice, str) else 'function'} "
                            f"needs 'tools'", param="tool_choice", code="invalid_value")
    f = chat.function_tokens(tok)
    if choice == "required":
        return [f.call_start]
    names = [t.function.name for t in tools]
    if choice.function.name not in names:
        raise APIError(400, f"'tool_choice' names {choice.function.name!r}, which is not among "
                            f"the tools {names}", param="tool_choice", code="invalid_value")
    return [f.call_start] + chat.call_prefix(tok, choice.function.name)


def response_grammar(s: Served, body: ChatRequest, forced: Sequence[int]) -> Optional[str]:
    """The reply's grammar for the scheduler (None: free text): `response_format`, or, when an
    offered function is `strict` and tool_choice is auto, calls of the offered functions only.
    A format that cannot be honoured is a 400 naming it."""
    rf = body.response_format
    strict = body.tool_choice != "none" and any(t.function.strict for t in body.tools or [])
    if rf is not None and rf.type != "text":
        if forced or strict:
            raise APIError(400, "'response_format' cannot be combined with a 'tool_choice' "
                                "that forces a call or with strict functions",
                           param="response_format", code="invalid_value")
        spec = None if rf.json_schema is None else {
            "name": rf.json_schema.name, "schema": rf.json_schema.schema_ or {}}
        fmt, param = {"type": rf.type, "json_schema": spec}, "response_format"
    elif strict and not forced:      # a forced call start is already inside the call
        fmt, param = {"type": "tools", "tools": [t.model_dump(exclude_none=True)
                                                 for t in body.tools]}, "tools"
    else:
        return None
    try:
        grammars = s.scheduler.engine.grammars
        grammar = grammars.compile(fmt)
        grammars.matcher(grammar)                       # compiles against this tokenizer
    except structured.FormatError as e:
        raise APIError(400, str(e), param=param, code="invalid_value") from None
    return grammar


def build_request(s: Served, body: Common, chat_mode: bool) -> Request:
    """The scheduler's request for a validated body (tokenizes: run it off the event loop)."""
    if body.model is not None and body.model not in (s.name, "default"):
        raise APIError(404, f"model {body.model!r} does not exist (this server serves "
                            f"{s.name!r})", param="model", code="model_not_found")
    forced = tuple(tool_prefix(body, s.tok)) if chat_mode else ()
    grammar = response_grammar(s, body, forced) if chat_mode else None
    prompt, stop_ids, param = _prompt_ids(s, body, chat_mode, forced)
    room = s.block_size - len(prompt)
    if room < 1:
        raise APIError(400, f"the prompt is {len(prompt)} tokens; the model's context is "
                            f"{s.block_size}", param=param, code="context_length_exceeded")
    key, max_tokens = body.budget_key(), body.budget()
    if max_tokens is not None and max_tokens > room:
        raise APIError(400, f"'{key}' is {max_tokens}, but the prompt ({len(prompt)} tokens) "
                            f"leaves room for {room} in the model's context of {s.block_size}",
                       param=key, code="context_length_exceeded")
    n = body.n or 1
    if n > s.scheduler.n_slots:
        raise APIError(400, f"'n' is {n}, more than this server's {s.scheduler.n_slots} decode "
                            f"slots (--slots)", param="n", code="invalid_value")
    stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    if len(stops) > MAX_STOP or not all(stops):
        raise APIError(400, f"'stop' must be a non-empty string or a list of up to {MAX_STOP}",
                       param="stop", code="invalid_value")
    if chat_mode:
        if body.top_logprobs and not body.logprobs:
            raise APIError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
        want_lp, top_lp = bool(body.logprobs), body.top_logprobs or 0
    else:
        want_lp, top_lp = body.logprobs is not None, body.logprobs or 0
    sampling = Sampling(n=n, max_tokens=min(256, room) if max_tokens is None else max_tokens,
                        temperature=1.0 if body.temperature is None else body.temperature,
                        top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0,
                        seed=body.seed, stop_ids=tuple(stop_ids), stop_strings=stops,
                        top_logprobs=top_lp,
                        grammar=grammar)
    so = body.stream_options
    options = APIOptions(chat=chat_mode, logprobs=want_lp, stream=bool(body.stream),
                         include_usage=bool(so is not None and so.include_usage),
                         forced=forced, calls=not chat_mode or body.tool_choice != "none")
    return Request(prompt=prompt, sampling=sampling, options=options)


# ---- responses: one builder for chat and completions --------------------------------------------

def _token_str(tok, i: int) -> str:
    try:
        return tok.decode([i])
    except Exception:  # noqa: BLE001
        return ""


def logprobs_of(tok, items: list[dict], chat_mode: bool) -> dict:
    if chat_mode:
        return {"content": [
            {"token": _token_str(tok, it["id"]), "logprob": it["logprob"],
             "bytes": list(_token_str(tok, it["id"]).encode()),
             "top_logprobs": [{"token": _token_str(tok, t), "logprob": lp,
                               "bytes": list(_token_str(tok, t).encode())} for t, lp in it["top"]]}
            for it in items]}
    return {"tokens": [_token_str(tok, it["id"]) for it in items],
            "token_logprobs": [it["logprob"] for it in items],
            "top_logprobs": [{_token_str(tok, t): lp for t, lp in it["top"]} for it in items]}


@dataclasses.dataclass
class Reply:
    """The OpenAI shapes of one request's answer (chat or text completion)."""
    s: Served
    req: Request

    @property
    def chat(self) -> bool:
        return self.req.options.chat

    def envelope(self, choices: list, stream: bool, usage: Optional[dict] = None) -> dict:
        kind = ("chat.completion" if self.chat else "text_completion") + \
            (".chunk" if stream and self.chat else "")
        d = {"id": ("chatcmpl-" if self.chat else "cmpl-") + self.req.id, "object": kind,
             "created": int(self.req.created), "model": self.s.name, "choices": choices,
             "system_fingerprint": "lm"}
        if usage is not None or not stream:
            d["usage"] = usage
        return d

    def tool_calls(self, index: int, calls: list[dict], first: int) -> tuple[list, str]:
        """(OpenAI tool_calls, text): the well-formed calls, numbered from `first`; a call whose
        text is not a call stays in the reply as text."""
        out, text = [], ""
        for k, c in enumerate(calls, first):
            if "error" in c:
                text += f"[call {c['text']}]"
                continue
            out.append({"index": k, "id": f"call_{self.req.id[:16]}_{index}_{k}",
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])}})
        return out, text

    def choice(self, index: int, text: Optional[str], finish, items, delta: bool,
               calls: Sequence[dict] = (), first: int = 0) -> dict:
        lp = logprobs_of(self.s.tok, items, self.chat) if self.req.options.logprobs and \
            (items or not delta) else None
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": lp, "finish_reason": finish}
        made, extra = self.tool_calls(index, list(calls), first)
        text = (text or "") + extra
        if delta:
            content = {"content": text} if text or not (finish or made) else {}
            if made:
                content["tool_calls"] = made
            return {"index": index, "delta": content, "logprobs": lp, "finish_reason": finish}
        message = {"role": "assistant", "content": text or (None if made else "")}
        if made:
            message["tool_calls"] = [{k: v for k, v in c.items() if k != "index"} for c in made]
        return {"index": index, "message": message, "logprobs": lp, "finish_reason": finish}

    def whole(self, usage: dict) -> dict:
        return self.envelope([self.choice(i, c.text, c.finish, c.logprobs, delta=False,
                                          calls=c.calls)
                              for i, c in enumerate(self.req.rt.choices)], False, usage)

    async def stream(self, request: HTTPRequest):
        req, sched = self.req, self.s.scheduler
        sse = lambda d: f"data: {json.dumps(d)}\n\n"
        try:
            if self.chat:
                yield sse(self.envelope([{"index": i, "delta": {"role": "assistant",
                                                                 "content": ""},
                                          "logprobs": None, "finish_reason": None}
                                         for i in range(req.sampling.n)], True))
            while True:
                if await request.is_disconnected():
                    sched.cancel(req)
                    return
                try:
                    ev = await asyncio.wait_for(req.rt.events.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    continue
                if ev["type"] == "error":
                    yield sse(APIError(500, ev["message"], type_="server_error").body())
                    break
                if ev["type"] == "done":
                    if req.options.include_usage:
                        yield sse(self.envelope([], True, ev["usage"]))
                    break
                yield sse(self.envelope([self.choice(ev["index"], ev["text"], ev["finish"],
                                                     ev["logprobs"], delta=True,
                                                     calls=ev.get("calls", ()),
                                                     first=ev.get("first_call", 0))], True))
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            sched.cancel(req)
            raise


async def answer(request: HTTPRequest, body: Common, chat_mode: bool):
    s = served(request)
    if chat_mode and not s.chat_ok:
        raise APIError(400, f"{s.name} is a base model ({s.run.stage} stage, no chat format): "
                            f"use /v1/completions", param="messages", code="chat_not_supported")
    req = await run_in_threadpool(build_request, s, body, chat_mode)
    req.rt.loop, req.rt.events = asyncio.get_running_loop(), asyncio.Queue()
    try:
        s.scheduler.submit(req)
    except QueueFull as e:
        raise APIError(429, f"server busy: {e}; retry later", type_="rate_limit_error",
                       code="queue_full") from None
    except RuntimeError as e:
        raise APIError(503, f"the engine is unavailable: {e}", type_="server_error",
                       code="engine_unavailable") from None
    reply = Reply(s, req)
    if req.options.stream:
        return StreamingResponse(reply.stream(request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    try:
        while True:
            ev = await req.rt.events.get()
            if ev["type"] == "error":
                raise APIError(500, ev["message"], type_="server_error", code="engine_error")
            if ev["type"] == "done":
                return reply.whole(ev["usage"])
    except asyncio.CancelledError:
        s.scheduler.cancel(req)
        raise


# ---- routes ------------------------------------------------------------------------------------------

router = APIRouter()


@router.get("/health")
async def health(request: HTTPRequest):
    s = served(request)
    ok = s.scheduler.alive()
    body = {"status": "ok" if ok else "error", "model": s.name, **s.scheduler.load()}
    if not ok:
        body["error"] = s.scheduler.error or "the scheduler is not running"
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/v1/models")
async def models(request: HTTPRequest):
    s = served(request)
    return {"object": "list", "data": [{
        "id": s.name, "object": "model", "created": int(time.time()), "owned_by": "lm",
        "lm_stage": s.run.stage, "lm_chat": s.chat_ok, "context_length": s.block_size}]}


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")


@router.post("/v1/chat/completions")
async def chat_completions(request: HTTPRequest, body: ChatRequest):
    return await answer(request, body, True)


@router.post("/v1/completions")
async def completions(request: HTTPRequest, body: CompletionRequest):
    return await answer(request, body, False)


# ---- guards and errors ---------------------------------------------------------------------------------

def _host_of(value: str) -> str:
    """The host name of a Host header or an origin URL, lower case, without port or brackets."""
    if "://" not in value:
        value = "//" + value
    try:
        return (urlsplit(value).hostname or "").lower()
    except ValueError:
        return ""


async def guard(request: HTTPRequest, call_next):
    """Host, Origin, body size and API key, before a route runs."""
    s = served(request)
    host = _host_of(request.headers.get("host", ""))
    if host not in s.allowed_hosts:
        return APIError(403, f"host {host!r} is not served (DNS rebinding guard; --allow-host "
                             f"adds one)", type_="permission_error", code="host_not_allowed"
                        ).response()
    origin = request.headers.get("origin")
    if origin is not None and origin not in s.allowed_origins and \
            _host_of(origin) not in s.allowed_hosts:
        return APIError(403, f"origin {origin!r} may not use this server (--allow-origin adds "
                             f"one)", type_="permission_error", code="origin_not_allowed"
                        ).response()
    if request.method == "OPTIONS" and origin is not None and origin in s.allowed_origins:
        return JSONResponse(None, status_code=204, headers={     # a CORS preflight
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Access-Control-Max-Age": "600"})
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > s.max_body_bytes):
        return APIError(413, f"the request body is larger than {s.max_body_bytes} bytes",
                        code="body_too_large").response()
    if request.url.path.startswith("/v1") and s.api_key is not None:
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {s.api_key}".encode()):
            return APIError(401, "invalid or missing API key (Authorization: Bearer ...)",
                            type_="authentication_error", code="invalid_api_key").response()
    response = await call_next(request)
    if origin is not None and origin in s.allowed_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
    return response


class BodyLimit:
    """ASGI: a body without Content-Length (chunked) is cut off at `limit` bytes with a 413."""

    def __init__(self, app, limit_of):
        self.app, self.limit_of = app, limit_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit, seen = self.limit_of(), 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
            return message
        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await APIError(413, f"the request body is larger than {limit} bytes",
                           code="body_too_large").response()(scope, receive, send)


class _TooLarge(Exception):
    pass


def http_error(request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (an unknown path, a wrong method) in the OpenAI shape too."""
    kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
    return APIError(e.status_code, str(e.detail), code=kind).response()


def validation_error(request, e: RequestValidationError) -> JSONResponse:
    """A body that breaks the schema: 400 naming the first bad field (its top-level name)."""
    err = (e.errors() or [{}])[0]
    loc = [x for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, "the request body is not valid JSON", code="invalid_json").response()
    if not loc:
        return APIError(400, "the request body must be a JSON object (Content-Type: "
                             "application/json)", code="invalid_type").response()
    param = str(loc[0]) if loc else None
    where = ".".join(str(x) for x in loc) or "the body"
    kind = "invalid_type" if err.get("type", "").endswith("_type") else "invalid_value"
    return APIError(400, f"{where}: {err.get('msg', 'invalid')}", param=param, code=kind
                    ).response()


# ---- the app -------------------------------------------------------------------------------------------

def create_app(run, *, api_key: Optional[str] = None, slots: int = 16, chunk: int = 8,
               max_queue: int = 64, warmup: bool = True, host: str = "127.0.0.1",
               allowed_hosts: Sequence[str] = (), allowed_origins: Sequence[str] = (),
               max_body_bytes: int = MAX_BODY_BYTES, prefix_cache: bool = True,
               search: Optional[SearchIndex] = None) -> FastAPI:
    """The FastAPI app serving `run` (an `lm.runs.Run`); its scheduler starts with the app.
    `host`: the bound address (requests must name it, a loopback name, or `allowed_hosts`).
    `prefix_cache`: a prompt that starts with what a free slot's cache holds (the same system
    prompt, the earlier turns) reuses those keys/values (`usage.prompt_tokens_details`).
    `search`: the corpus of the model's `search("...")` tool (default: the knowledge base)."""
    tok = run.tokenizer
    chat_ok = tok.chat is not None and stages.is_chat(run.stage)
    engine = Engine(run.params, run.config.model, tokenizer=tok,
                    tools=tok.chat if chat_ok else None,
                    tool_fn=engine_tool(tok, search) if chat_ok else None,
                    settings=EngineSettings(grow_cache=False), structured=chat_ok)
    sched = Scheduler(engine, tok, slots=slots, chunk=chunk, max_queue=max_queue,
                      prefix_cache=prefix_cache,
                      top_logprobs=MAX_TOP_LOGPROBS)
    hosts = {_host_of(h) for h in (host, *LOCAL_HOSTS, *allowed_hosts)} - {""}
    app = FastAPI(title="lm", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.lm = Served(run, sched, chat_ok, api_key, frozenset(hosts),
                          frozenset(o.rstrip("/") for o in allowed_origins), max_body_bytes,
                          warmup)
    app.include_router(router)
    app.middleware("http")(guard)
    app.add_middleware(BodyLimit, limit_of=lambda: app.state.lm.max_body_bytes)
    app.add_exception_handler(APIError, lambda request, e: e.response())
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    return app


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    s: Served = app.state.lm
    s.scheduler.start()
    if s.warmup:   # compile prefill/decode before the first request
        await asyncio.get_running_loop().run_in_executor(None, _warmup, s)
    yield
    s.scheduler.stop()


def _warmup(s: Served) -> None:
    """Compile prefill and decode for greedy and for the chat page's default sampling."""
    loop = asyncio.new_event_loop()
    bos = s.tok.bos_id or 0
    for settings in (dict(temperature=0.0), dict(temperature=0.7, top_k=50)):
        req = Request(prompt=[bos], sampling=Sampling(max_tokens=2, **settings),
                      options=APIOptions(chat=s.chat_ok))
        req.rt.loop, req.rt.events = loop, asyncio.Queue()
        s.scheduler.submit(req)
        loop.run_until_complete(_drain(req))
    loop.close()


async def _drain(req: Request) -> None:
    while (await req.rt.events.get())["type"] not in ("done", "error"):
        pass
