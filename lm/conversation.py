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
"""
from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

from lm.tokenizer import CHAT_SPECIAL_TOKENS, ChatTokens, Tokenizer

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "python", "output")
CHAT_TOKENS = CHAT_SPECIAL_TOKENS[1:]     # the chat set after <|bos|>


class ConversationError(ValueError):
    """A malformed conversation; the message names the turn."""


def parts_of(content: Any) -> list[dict]:
    """An assistant turn's content as a list of parts (a plain string is one text part)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return list(content)


def validate(conv: dict, *, require_reply: bool = False) -> list[dict]:
    """The conversation's messages, checked: an optional system message first, then user and
    assistant turns alternating from a user turn; no empty turn; assistant parts of known types.
    `require_reply`: the last turn must be the assistant's (training data)."""
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
        raise ConversationError("a conversation is a dict with a 'messages' list")
    msgs = conv["messages"]
    if not msgs:
        raise ConversationError("the conversation has no messages")
    expect = "user"
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
        if role != expect:
            raise ConversationError(f"turn {i}: expected a {expect} turn, got {role!r} (turns "
                                    f"alternate user/assistant, starting with user)")
        expect = "assistant" if role == "user" else "user"
        if role == "user":
            if not isinstance(content, str) or not content.strip():
                raise ConversationError(f"turn {i}: the user turn must be non-empty text")
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
            if not isinstance(p.get("text"), str):
                raise ConversationError(f"turn {i}, part {j}: a part needs a 'text' string")
            if p["type"] == "python" and not p["text"].strip():
                raise ConversationError(f"turn {i}, part {j}: empty python expression")
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


def _merged(msgs: list[dict]) -> list[dict]:
    """A system message folded into the first user turn (nanochat's choice)."""
    if msgs and msgs[0]["role"] == "system":
        first = msgs[1]
        merged = dict(first, content=msgs[0]["content"] + "\n\n" + first["content"])
        return [merged] + list(msgs[2:])
    return list(msgs)


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

    for msg in msgs:
        if msg["role"] == "user":
            add([t.user_start], 0)
            add(tok.encode(msg["content"]), 0)
            add([t.user_end], 0)
            continue
        add([t.assistant_start], 0)
        for p in parts_of(msg["content"]):
            if p["type"] == "text":
                add(tok.encode(p["text"]), 1)
            elif p["type"] == "python":
                add([t.python_start], 1)
                add(tok.encode(p["text"]), 1)
                add([t.python_end], 1)
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
    ids, _ = render({"messages": msgs}, tok)
    return ids + [chat_tokens(tok).assistant_start]


def parse_reply(ids: Sequence[int], tok) -> list[dict]:
    """Generated assistant tokens back into parts (text / python / output), up to
    `<|assistant_end|>`; an unterminated call or output keeps what was written."""
    t = chat_tokens(tok)
    parts: list[dict] = []
    kind, buf = "text", []

    def flush():
        if buf or kind != "text":
            text = tok.decode(buf)
            if kind != "text" or text:
                parts.append({"type": kind, "text": text})
        buf.clear()

    for i in ids:
        i = int(i)
        if i == t.assistant_end:
            break
        if i in (t.python_start, t.output_start):
            flush()
            kind = "python" if i == t.python_start else "output"
        elif i in (t.python_end, t.output_end):
            flush()
            kind = "text"
        elif i in (t.bos, t.user_start, t.user_end, t.assistant_start):
            continue
        else:
            buf.append(i)
    flush()
    return parts


def reply_text(parts: list[dict]) -> str:
    """A reply as readable text: tool calls shown as `<<expr=result>>` (GSM8K's notation)."""
    out = []
    for k, p in enumerate(parts):
        if p["type"] == "text":
            out.append(p["text"])
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


class TextStream:
    """Incremental detokenizer for streamed replies: whole UTF-8 characters only. With
    `chat=True`, tool calls show as `<<expr=result>>` (as `reply_text` writes them) and other
    special tokens are hidden; otherwise special tokens show by name."""

    SHOWN = {"<|python_start|>": "<<", "<|python_end|>": "=", "<|output_end|>": ">>"}

    def __init__(self, tok, chat: bool = True):
        self.tok, self.chat = tok, chat
        self.dec = tok.stream_decoder()
        self.special = {int(i): s for s, i in tok.special_tokens.items()}

    def push(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i in self.special:
                out.append(self.dec.flush())
                name = self.special[i]
                out.append(self.SHOWN.get(name, "") if self.chat else name)
            else:
                out.append(self.dec.push(i))
        return "".join(out)

    def flush(self) -> str:
        return self.dec.flush()
