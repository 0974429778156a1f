"""The chat format: conversation schema, `render` with the loss mask, `render_for_completion`, and
`parse_reply` back from tokens. The one place that knows the chat template.

A conversation is a JSON-friendly dict (extra top-level keys, such as a task's reference answer,
ride along untouched):

    {"messages": [
        {"role": "system", "content": "You are terse."},                    # optional, first only
        {"role": "user", "content": "What is 12 * 7?"},
        {"role": "assistant", "content": [                                  # text, or parts
            {"type": "text", "text": "12 * 7 = "},
            {"type": "python", "text": "12*7"},                             # a calculator call
            {"type": "output", "text": "84"},                               # its output
            {"type": "text", "text": "84.\\n#### 84"}]}]}

Rendered (nanochat's format; the system message is merged into the first user turn):

    <|bos|> <|user_start|> text <|user_end|> <|assistant_start|> text <|python_start|> expr
    <|python_end|> <|output_start|> result <|output_end|> text <|assistant_end|> <|user_start|> ...

Mask 1 (trained): assistant text, `<|python_start|>`, the expression, `<|python_end|>`,
`<|assistant_end|>`. Mask 0: BOS, system and user content and their markers,
`<|assistant_start|>`, and `<|output_start|> … <|output_end|>` (the tool wrote it, not the model).
Text is encoded with `tokenizer.encode`, which never produces special tokens: user or tool text
that spells `<|assistant_end|>` stays ordinary text (the injection boundary).

Function calling (OpenAI's shape; the tokens are the tokenizer's FUNCTION_SPECIALS). A
conversation may offer `tools` (a top-level list of `{"type": "function", "function": {name,
description, parameters}}`); an assistant turn may call them with `tool_call` parts, and `tool`
turns bring the results back, one per call, before the assistant's next turn:

    {"tools": [{"type": "function", "function": {"name": "get_weather", ...}}],
     "messages": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [
            {"type": "tool_call", "id": "call_0", "name": "get_weather",
             "arguments": {"city": "Oslo"}}]},                      # a dict, or its JSON text
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp_c\": 4}"},
        {"role": "assistant", "content": "It is 4 °C in Oslo."}]}

Rendered: `<|tools_start|> [definitions as JSON] <|tools_end|>` right after BOS; a call as
`<|tool_call_start|> {"name": ..., "arguments": {...}} <|tool_call_end|>` inside the assistant
turn; a result as `<|tool_result_start|> content <|tool_result_end|>` after that turn. Mask: the
calls are trained (markers and JSON); definitions and results never are.

Images and speech (`lm.images`, `lm.audio`): a user turn may be a list of `text`, `image` and
`audio` parts, and an assistant turn may hold `image` parts (the model draws); such a part is
`{"type": "image" | "audio", "codes": [...]}`, its codebook codes, rendered `<|image_start|>
<|image_k|> ... <|image_end|>` (`<|audio_...|>` likewise; mask 0 in a user turn, 1 in the
assistant's). `reply_text` shows one as `[image c0 c1 ...]`. Pixels, sound and data URLs become
codes at the edges (the server, the chat CLI, the tasks).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Sequence

from lm import images
from lm.tokenizer import (AUDIO_SPECIALS, CHAT_SPECIAL_TOKENS, IMAGE_SPECIALS, ChatTokens,
                          FunctionTokens, Tokenizer)

ROLES = ("system", "user", "assistant", "tool")
PART_TYPES = ("text", "python", "output", "tool_call", "image", "audio")
USER_PART_TYPES = ("text", "image", "audio")
MEDIA = {"image": IMAGE_SPECIALS, "audio": AUDIO_SPECIALS}    # start, end, then one per code
CHAT_TOKENS = CHAT_SPECIAL_TOKENS[1:]     # the chat set after <|bos|>


class ConversationError(ValueError):
    """A malformed conversation; the message names the turn."""


def parts_of(content: Any) -> list[dict]:
    """An assistant turn's content as a list of parts (a plain string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def _check_codes(part: dict, where: str) -> None:
    kind, codes = part["type"], part.get("codes")
    top = len(MEDIA[kind]) - 2
    n = len(codes) if isinstance(codes, list) else 0
    square = kind != "image" or int(round(n ** 0.5)) ** 2 == n
    if not n or not square or not all(isinstance(c, int) and 0 <= c < top for c in codes):
        shape = "a square number of" if kind == "image" else "a list of"
        raise ConversationError(f"{where}: an {kind} part needs 'codes', {shape} integers in "
                                f"0-{top - 1}")


def validate(conv: dict, *, require_reply: bool = False) -> list[dict]:
    """The conversation's messages, checked: an optional system message first, then user and
    assistant turns alternating from a user turn; no empty turn; assistant parts of known types.
    `require_reply`: the last turn must be the assistant's (training data)."""
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
        raise ConversationError("a conversation is a dict with a 'messages' list")
    msgs = conv["messages"]
    if not msgs:
        raise ConversationError("the conversation has no messages")
    tool_definitions(conv)                 # checks `tools`
    expect = "user"
    pending: list[str] = []                # ids of calls the tool turns have yet to answer
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError(f"turn {i}: a message needs 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ConversationError(f"turn {i}: unknown role {role!r} (allowed: {list(ROLES)})")
        if role == "system":
            if i != 0:
                raise ConversationError(f"turn {i}: a system message may only come first")
            if not isinstance(content, str) or not content.strip():
                raise ConversationError(f"turn {i}: the system message must be non-empty text")
            continue
        if role == "tool":
            call = m.get("tool_call_id")
            if call not in pending:
                raise ConversationError(f"turn {i}: a tool message without a matching call "
                                        f"(tool_call_id {call!r}; open calls: {pending})")
            if not isinstance(content, str):
                raise ConversationError(f"turn {i}: a tool result must be text")
            pending.remove(call)
            if not pending:
                expect = "assistant"
            continue
        if pending:
            raise ConversationError(f"turn {i}: the calls {pending} have no tool result yet")
        if role != expect:
            raise ConversationError(f"turn {i}: expected a {expect} turn, got {role!r} (turns "
                                    f"alternate user/assistant, starting with user)")
        expect = "assistant" if role == "user" else "user"
        if role == "user":
            if isinstance(content, list) and content:
                for j, p in enumerate(content):
                    if not isinstance(p, dict) or p.get("type") not in USER_PART_TYPES:
                        raise ConversationError(f"turn {i}, part {j}: a user part is text, an "
                                                f"image or audio, got {p!r}")
                    if p["type"] in MEDIA:
                        _check_codes(p, f"turn {i}, part {j}")
                    elif not isinstance(p.get("text"), str):
                        raise ConversationError(f"turn {i}, part {j}: a part needs a 'text' "
                                                f"string")
                continue
            if not isinstance(content, str) or not content.strip():
                raise ConversationError(f"turn {i}: the user turn must be non-empty text (or a "
                                        f"list of text, image and audio parts)")
            continue
        if isinstance(content, str):
            if not content.strip():
                raise ConversationError(f"turn {i}: the assistant turn is empty")
            continue
        if not isinstance(content, list) or not content:
            raise ConversationError(f"turn {i}: assistant content must be text or a non-empty "
                                    f"list of parts")
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") not in PART_TYPES:
                raise ConversationError(f"turn {i}, part {j}: unknown part {p!r} (types: "
                                        f"{list(PART_TYPES)})")
            if p["type"] in MEDIA:
                _check_codes(p, f"turn {i}, part {j}")
                continue
            if p["type"] == "tool_call":
                call_arguments(p, where=f"turn {i}, part {j}")
                if not isinstance(p.get("name"), str) or not p["name"]:
                    raise ConversationError(f"turn {i}, part {j}: a tool call needs a 'name'")
                pending.append(p.get("id") or f"call_{i}_{j}")
                continue
            if not isinstance(p.get("text"), str):
                raise ConversationError(f"turn {i}, part {j}: a part needs a 'text' string")
            if p["type"] == "python" and not p["text"].strip():
                raise ConversationError(f"turn {i}, part {j}: empty python expression")
    if pending and msgs[-1]["role"] == "tool":
        raise ConversationError(f"the calls {pending} have no tool result")
    if not any(m["role"] == "user" for m in msgs):
        raise ConversationError("the conversation has no user turn")
    if require_reply and msgs[-1]["role"] != "assistant":
        raise ConversationError(f"turn {len(msgs) - 1}: training conversations end with an "
                                f"assistant turn")
    return msgs


def chat_tokens(tok: Tokenizer) -> ChatTokens:
    """The tokenizer's chat special tokens, or ConversationError (the char tokenizer has none)."""
    if tok.chat is None:
        raise ConversationError("the chat format needs a tokenizer with the chat special tokens "
                                "(a BPE tokenizer; not 'char')")
    return tok.chat


def function_tokens(tok: Tokenizer) -> FunctionTokens:
    """The tokenizer's function-calling tokens, or ConversationError."""
    if tok.functions is None:
        raise ConversationError("function calling needs a tokenizer with the function-call "
                                "tokens (one trained here with the reserved special block)")
    return tok.functions


def tool_definitions(conv: dict) -> list[dict]:
    """The conversation's offered functions ({name, description, parameters}), checked."""
    tools = conv.get("tools") or []
    if not isinstance(tools, list):
        raise ConversationError("'tools' must be a list of function definitions")
    out = []
    for k, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ConversationError(f"tools[{k}]: expected {{'type': 'function', 'function': "
                                    f"{{'name': ..., 'parameters': ...}}}}")
        if not isinstance(fn.get("parameters", {}), dict):
            raise ConversationError(f"tools[{k}]: 'parameters' must be a JSON Schema object")
        out.append({k2: fn[k2] for k2 in ("name", "description", "parameters") if k2 in fn})
    return out


def call_arguments(part: dict, where: str = "tool call") -> dict:
    """A tool_call part's arguments as a dict (given as a dict, or as its JSON text)."""
    args = part.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise ConversationError(f"{where}: arguments are not JSON ({e})") from None
    if not isinstance(args, dict):
        raise ConversationError(f"{where}: arguments must be a JSON object")
    return args


def call_json(part: dict) -> str:
    """The text a call renders to (and the model writes): {"name": ..., "arguments": {...}}."""
    return json.dumps({"name": part["name"], "arguments": call_arguments(part)},
                      ensure_ascii=False)


def call_prefix(tok: Tokenizer, name: str) -> list[int]:
    """The tokens every call of `name` starts with, as the model writes them: the common prefix
    of the encodings of that call with several arguments (a BPE merges across the boundary
    between the name's part and the arguments, so the text '{"name": "f", "arguments": ' alone
    would encode differently from the calls the model learned)."""
    head = json.dumps({"name": name})[:-1] + ', "arguments": '
    encodings = [tok.encode(head + tail) for tail in
                 ('{}}', '{"a": 1}}', '{"x_y": "z"}}', '{"q": [1]}}', '{"Z": true}}')]
    common = encodings[0]
    for e in encodings[1:]:
        k = 0
        while k < min(len(common), len(e)) and common[k] == e[k]:
            k += 1
        common = common[:k]
    return common


def _merged(msgs: list[dict]) -> list[dict]:
    """A system message folded into the first user turn (nanochat's choice)."""
    if msgs and msgs[0]["role"] == "system":
        first, system = msgs[1], msgs[0]["content"] + "\n\n"
        merged = dict(first, content=system + first["content"] if isinstance(
            first["content"], str) else [{"type": "text", "text": system}] + first["content"])
        return [merged] + list(msgs[2:])
    return list(msgs)


def media_ids(kind: str, codes: Sequence[int], tok) -> list[int]:
    """An image or audio part's tokens: its start marker, one reserved special per code, its end
    marker."""
    start, end, ids = media_tokens(tok, kind)
    return [start] + [ids[c] for c in codes] + [end]


def media_tokens(tok, kind: str = "image") -> tuple[int, int, list[int]]:
    """(start, end, the code tokens' ids) of `kind` ("image", "audio") in a chat tokenizer."""
    try:
        return tuple([tok.special_id(n) for n in MEDIA[kind][:2]]) + (
            [tok.special_id(n) for n in MEDIA[kind][2:]],)
    except KeyError:
        raise ConversationError(f"the tokenizer {tok.name!r} has no {kind} tokens (reserved "
                                f"special slots); {kind} parts need one trained here") from None


def render(conv: dict, tok, *, max_tokens: Optional[int] = None) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation; mask 1 where the model is trained (see the module doc).
    With `max_tokens`, a longer rendering raises ConversationError (callers drop and count it:
    a conversation is never cut)."""
    msgs = _merged(validate(conv))
    t = chat_tokens(tok)
    ids, mask = [t.bos], [0]

    def add(new: Iterable[int], m: int):
        new = list(new)
        ids.extend(new)
        mask.extend([m] * len(new))

    tools = tool_definitions(conv)
    uses_functions = tools or any(m["role"] == "tool" for m in msgs)
    f = function_tokens(tok) if uses_functions else tok.functions
    if tools:
        add([f.tools_start], 0)
        add(tok.encode(json.dumps(tools, ensure_ascii=False)), 0)
        add([f.tools_end], 0)
    for msg in msgs:
        if msg["role"] == "user":
            add([t.user_start], 0)
            for p in parts_of(msg["content"]):
                add(media_ids(p["type"], p["codes"], tok) if p["type"] in MEDIA
                    else tok.encode(p["text"]), 0)
            add([t.user_end], 0)
            continue
        if msg["role"] == "tool":
            add([f.result_start], 0)
            add(tok.encode(msg["content"]), 0)
            add([f.result_end], 0)
            continue
        add([t.assistant_start], 0)
        for p in parts_of(msg["content"]):
            if p["type"] == "text":
                add(tok.encode(p["text"]), 1)
            elif p["type"] == "tool_call":
                f = function_tokens(tok)
                add([f.call_start], 1)
                add(tok.encode(call_json(p)), 1)
                add([f.call_end], 1)
            elif p["type"] == "python":
                add([t.python_start], 1)
                add(tok.encode(p["text"]), 1)
                add([t.python_end], 1)
            elif p["type"] in MEDIA:
                add(media_ids(p["type"], p["codes"], tok), 1)
            else:
                add([t.output_start], 0)
                add(tok.encode(p["text"]), 0)
                add([t.output_end], 0)
        add([t.assistant_end], 1)
    if max_tokens is not None and len(ids) > max_tokens:
        raise ConversationError(f"the conversation renders to {len(ids)} tokens, more than "
                                f"{max_tokens}")
    return ids, mask


# The same format as a Jinja chat template (Hugging Face's convention: `messages`, `bos_token`,
# `add_generation_prompt`), for runtimes that render prompts themselves (llama.cpp, LM Studio,
# transformers). It must give `render`'s ids once the runtime tokenizes it with special tokens
# parsed; tests/test_gguf.py checks that through llama.cpp. Assistant content is text or lm's parts.
JINJA_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- set ns = namespace(system='') -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'system' -%}"
    "{%- set ns.system = message.content + '\n\n' -%}"
    "{%- elif message.role == 'user' -%}"
    "{{- '<|user_start|>' + ns.system + message.content + '<|user_end|>' -}}"
    "{%- set ns.system = '' -%}"
    "{%- elif message.role == 'assistant' -%}"
    "{{- '<|assistant_start|>' -}}"
    "{%- if message.content is string -%}{{- message.content -}}"
    "{%- else -%}{%- for part in message.content -%}"
    "{%- if part.type == 'python' -%}{{- '<|python_start|>' + part.text + '<|python_end|>' -}}"
    "{%- elif part.type == 'output' -%}{{- '<|output_start|>' + part.text + '<|output_end|>' -}}"
    "{%- else -%}{{- part.text -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|assistant_end|>' -}}"
    "{%- else -%}{{- raise_exception('unknown role ' + message.role + ' (system, user, "
    "assistant)') -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant_start|>' -}}{%- endif -%}")


def render_for_completion(conv: dict, tok) -> list[int]:
    """The prompt for the engine: the conversation up to and including `<|assistant_start|>` of
    the reply to write. A final assistant turn (a reference answer) is left out."""
    msgs = validate(conv)
    if msgs[-1]["role"] == "assistant":
        msgs = msgs[:-1]
    ids, _ = render({"messages": msgs, "tools": conv.get("tools") or []}, tok)
    return ids + [chat_tokens(tok).assistant_start]


def parse_reply(ids: Sequence[int], tok) -> list[dict]:
    """Generated assistant tokens back into parts (text / python / output / tool_call), up to
    `<|assistant_end|>`; an unterminated call or output keeps what was written. A tool_call part
    has its raw `text`, and `name` and `arguments` when that text is a well-formed call
    ({"name": str, "arguments": object}), else an `error`."""
    t = chat_tokens(tok)
    f = tok.functions
    call_start = f.call_start if f else None
    call_end = f.call_end if f else None
    parts: list[dict] = []
    kind, buf = "text", []

    def flush():
        if buf or kind != "text":
            text = tok.decode(buf)
            if kind == "tool_call":
                parts.append(parse_call(text))
            elif kind != "text" or text:
                parts.append({"type": kind, "text": text})
        buf.clear()

    starts, ends, code_of = {}, {}, {}
    for media in MEDIA:
        try:
            start, end, codes = media_tokens(tok, media)
        except ConversationError:
            continue
        starts[start], ends[end] = media, media
        code_of.update({c: (media, k) for k, c in enumerate(codes)})
    for i in ids:
        i = int(i)
        if i == t.assistant_end:
            break
        if kind in MEDIA:                      # only its code tokens until its end marker
            if ends.get(i) == kind:
                parts.append({"type": kind, "codes": list(buf)})
                buf.clear()
                kind = "text"
            elif code_of.get(i, ("",))[0] == kind:
                buf.append(code_of[i][1])
            continue
        if i in starts:
            flush()
            kind = starts[i]
        elif i in code_of or i in ends:        # stray codes or markers outside their part
            continue
        elif i in (t.python_start, t.output_start, call_start):
            flush()
            kind = {t.python_start: "python", t.output_start: "output"}.get(i, "tool_call")
        elif i in (t.python_end, t.output_end, call_end):
            flush()
            kind = "text"
        elif i in (t.bos, t.user_start, t.user_end, t.assistant_start) or \
                (f is not None and i in f):
            continue
        else:
            buf.append(i)
    if kind in MEDIA:                          # unterminated: the codes written so far
        parts.append({"type": kind, "codes": list(buf)})
    else:
        flush()
    return parts


def parse_call(text: str) -> dict:
    """A written call's text -> a tool_call part (with `error` when it is not a valid call)."""
    part = {"type": "tool_call", "text": text}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return dict(part, error=f"not JSON ({e.msg})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return dict(part, error="not a call: expected {\"name\": ..., \"arguments\": {...}}")
    args = obj.get("arguments", {})
    if not isinstance(args, dict):
        return dict(part, error="arguments are not a JSON object")
    return dict(part, name=obj["name"], arguments=args)


def tool_calls(parts: list[dict]) -> list[dict]:
    """The tool_call parts of a reply."""
    return [p for p in parts if p["type"] == "tool_call"]


def reply_text(parts: list[dict]) -> str:
    """A reply as readable text: calculator calls shown as `<<expr=result>>` (GSM8K's notation),
    function calls as `[call {"name": ..., "arguments": ...}]`, images as `[image c0 c1 ...]`."""
    out = []
    for k, p in enumerate(parts):
        if p["type"] == "text":
            out.append(p["text"])
        elif p["type"] == "tool_call":
            out.append(f"[call {p['text'] if 'text' in p else call_json(p)}]")
        elif p["type"] in MEDIA:
            out.append(f"[{p['type']} {' '.join(map(str, p['codes']))}]")
        elif p["type"] == "python":
            nxt = parts[k + 1] if k + 1 < len(parts) else None
            result = nxt["text"] if nxt is not None and nxt["type"] == "output" else "?"
            out.append(f"<<{p['text']}={result}>>")
    return "".join(out)


def answer_text(parts: list[dict]) -> str:
    """The reply's own text (tool calls and outputs left out): what graders read."""
    return "".join(p["text"] for p in parts if p["type"] == "text")


def conversation(user: str, assistant: Any = None, system: Optional[str] = None, **extra) -> dict:
    """A one-turn conversation (with a reference reply if given), plus metadata keys."""
    msgs = ([{"role": "system", "content": system}] if system else [])
    msgs.append({"role": "user", "content": user})
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return {"messages": msgs, **extra}


def image_markdown(codes: Sequence[int]) -> str:
    """A drawn image as Markdown with a PNG data URL (what the server and the chat page show)."""
    try:
        return f"![image]({images.data_url(images.decode(codes))})"
    except images.ImageError as e:
        return f"[unfinished image: {e}]"


class TextStream:
    """Incremental detokenizer for streamed replies: whole UTF-8 characters only. With
    `chat=True`, calculator calls show as `<<expr=result>>` (as `reply_text` writes them), other
    special tokens are hidden, and a function call's text is not shown: each finished call is
    queued as a tool_call part (`take_calls`); a drawn image shows, once finished, as
    `image_fn(codes)` (default: Markdown with a PNG data URL); otherwise special tokens show by
    name."""

    SHOWN = {"<|python_start|>": "<<", "<|python_end|>": "=", "<|output_end|>": ">>"}

    def __init__(self, tok, chat: bool = True, image_fn=image_markdown):
        self.tok, self.chat, self.image_fn = tok, chat, image_fn
        self.dec = tok.stream_decoder()
        self.special = {int(i): s for s, i in tok.special_tokens.items()}
        f = tok.functions if chat else None
        self.call_start, self.call_end = (f.call_start, f.call_end) if f else (None, None)
        self.call: Optional[list[int]] = None      # ids of the call being written
        self.calls: list[dict] = []                # finished calls not yet taken
        try:
            start, end, codes = media_tokens(tok, "image") if chat else (None, None, [])
        except ConversationError:
            start, end, codes = None, None, []
        self.img_start, self.img_end = start, end
        self.code_of = {c: k for k, c in enumerate(codes)}
        self.image: Optional[list[int]] = None     # codes of the image being drawn

    def push(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if self.image is not None:
                if i == self.img_end:
                    out.append(self.image_fn(self.image))
                    self.image = None
                elif i in self.code_of:
                    self.image.append(self.code_of[i])
            elif i == self.img_start and self.img_start is not None:
                out.append(self.dec.flush())
                self.image = []
            elif i in self.code_of:             # a stray code outside an image: hidden
                continue
            elif self.call is not None and i != self.call_end and i not in self.special:
                self.call.append(i)
            elif i == self.call_start and self.call_start is not None:
                out.append(self.dec.flush())
                self.call = []
            elif i == self.call_end and self.call is not None:
                self.calls.append(parse_call(self.tok.decode(self.call)))
                self.call = None
            elif i in self.special:
                out.append(self.dec.flush())
                name = self.special[i]
                out.append(self.SHOWN.get(name, "") if self.chat else name)
            else:
                out.append(self.dec.push(i))
        return "".join(out)

    def take_calls(self) -> list[dict]:
        """The tool_call parts finished since the last call (an unterminated one is finished by
        `flush`)."""
        out, self.calls = self.calls, []
        return out

    def flush(self) -> str:
        if self.call is not None:              # the reply ended inside a call
            self.calls.append(parse_call(self.tok.decode(self.call)))
            self.call = None
        if self.image is not None:             # the reply ended inside an image
            codes, self.image = self.image, None
            return self.dec.flush() + (self.image_fn(codes) if codes else "")
        return self.dec.flush()
