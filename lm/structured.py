"""Structured outputs: OpenAI's `response_format` (a JSON schema, or any JSON object) decoded
under a grammar, so every reply parses and validates.

llguidance compiles the schema against our tokenizer (its tiktoken ranks) into a matcher that
walks the reply token by token. A constrained row's next-token mask is computed on the host
between decode steps (`serve`) and applied inside the jitted decode (`MaskState`, `apply`), per
row, so constrained and free rows share one batch. A constrained row parks after each token
(`advance`) until the host has the next mask, as a row parks on a tool call.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lm.tokenizer import BPETokenizer

Array = jax.Array

# JSON as `json.dumps` writes it (the separators our tool calls are trained with), no free
# whitespace: a model cannot stall in an endless run of spaces
JSON_OPTIONS = {"item_separator": ", ", "key_separator": ": ", "whitespace_flexible": False}


def _llguidance():
    try:
        import llguidance.tiktoken   # optional (requirements-serve.txt): structured outputs only
    except ImportError:
        raise FormatError("response_format needs llguidance: pip install -r "
                          "requirements-serve.txt") from None
    return llguidance


class FormatError(ValueError):
    """A `response_format` that is not one of OpenAI's shapes, or a schema that does not compile.
    The message names the field (the server answers 400 with it)."""


def grammar_for(response_format: Optional[dict], call_ids: Optional[tuple] = None
                ) -> Optional[str]:
    """`response_format` -> an llguidance grammar (None: free text).

    `{"type": "text"}`, `{"type": "json_object"}` (any JSON object), or `{"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}, "strict": ...}}`; and lm's own
    `{"type": "tools", "tools": [...]}` (`tools_grammar`; needs `call_ids`)."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise FormatError("response_format must be an object with a 'type'")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "tools":
        if call_ids is None:
            raise FormatError("constrained tool calls need a tokenizer with function tokens")
        return tools_grammar(response_format.get("tools") or [], *call_ids)
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise FormatError("response_format.json_schema must be an object with a 'name' and "
                              "a 'schema'")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise FormatError("response_format.json_schema.schema must be a JSON Schema object")
    else:
        raise FormatError(f"response_format.type must be one of 'text', 'json_object', "
                          f"'json_schema', got {kind!r}")
    llguidance = _llguidance()
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), overrides=JSON_OPTIONS)
    except (ValueError, TypeError) as e:
        raise FormatError(f"response_format.json_schema.schema: {e}") from None
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise FormatError(f"response_format.json_schema.schema does not compile: {error}")
    return grammar


def call_schema(tools: list[dict]) -> dict:
    """The JSON Schema of one call of any offered function, as the model writes it:
    {"name": <an offered name>, "arguments": <that function's parameters>}."""
    options = []
    for t in tools:
        f = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str):
            raise FormatError("tools: each needs a function with a 'name'")
        params = f.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(params, dict):
            raise FormatError(f"tools: {f['name']}'s parameters must be a JSON Schema object")
        # strict functions, as OpenAI reads them: no keys beyond the declared ones
        params = {"additionalProperties": False, **params}
        options.append({"type": "object", "properties": {"name": {"const": f["name"]},
                                                         "arguments": params},
                        "required": ["name", "arguments"], "additionalProperties": False})
    if not options:
        raise FormatError("tools: constrained calls need at least one function")
    return options[0] if len(options) == 1 else {"anyOf": options}


def tools_grammar(tools: list[dict], call_start: int, call_end: int) -> str:
    """A reply that is either free text or one or more calls of the offered functions, each
    between the call tokens with its name and arguments valid (OpenAI's `strict` functions):
    the model still chooses whether to call, and which function."""
    llguidance = _llguidance()
    body = json.dumps({**call_schema(tools), "x-guidance": JSON_OPTIONS})
    lark = (f"start: TEXT | call+\n"
            f"call: <[{int(call_start)}]> body <[{int(call_end)}]>\n"
            f"body: %json {body}\n"
            f"TEXT: /(.|\\n)+/\n")
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise FormatError(f"tools: the functions' parameters do not compile: {error}")
    return grammar


class Grammars:
    """The llguidance view of one tokenizer and model vocabulary (built once, ~1 s), and the
    matchers made from it. `stop_ids`: the tokens that end a reply (allowed once the grammar is
    complete)."""

    def __init__(self, tokenizer, vocab_size: int, stop_ids: Sequence[int]):
        llguidance = _llguidance()
        if not isinstance(tokenizer, BPETokenizer):
            raise FormatError("structured outputs need a byte-level BPE tokenizer (this run's "
                              f"is {type(tokenizer).__name__})")
        self.vocab_size = int(vocab_size)
        self.lltok = llguidance.tiktoken.lltokenizer_from_encoding(
            tokenizer.enc, n_vocab=self.vocab_size, eos_token=[int(t) for t in stop_ids])
        self.stop_ids = [int(t) for t in stop_ids]
        f = tokenizer.functions
        self.call_ids = None if f is None else (f.call_start, f.call_end)
        self._llguidance = llguidance

    def compile(self, response_format: Optional[dict]) -> Optional[str]:
        """`grammar_for` with this tokenizer's call tokens."""
        return grammar_for(response_format, self.call_ids)

    def matcher(self, grammar: str) -> "RowMatcher":
        m = self._llguidance.LLMatcher(self.lltok, grammar, log_level=0)
        if m.is_error():
            raise FormatError(f"response_format: {m.get_error()}")
        return RowMatcher(m, self.stop_ids)


@dataclasses.dataclass
class RowMatcher:
    """One constrained row: its matcher and how many of the row's tokens it has consumed."""
    matcher: object
    stop_ids: list
    consumed: int = 0

    def feed(self, tokens: Sequence[int]) -> None:
        if len(tokens):
            self.matcher.consume_tokens([int(t) for t in tokens])
            self.consumed += len(tokens)

    def fill(self, out_W: np.ndarray) -> None:
        """The next token's allowed set as a bitmask (bit t % 32 of word t // 32 = token t).
        A matcher in an error state (a token it did not allow, which the mask prevents) allows
        only the stop tokens, so the row ends."""
        if not self.matcher.is_error():
            self.matcher.unsafe_compute_mask_ptr(out_W.ctypes.data, out_W.nbytes)
        if self.matcher.is_error():
            out_W[:] = 0
            for t in self.stop_ids:
                out_W[t // 32] |= np.int32(np.uint32(1 << (t % 32)).view(np.int32))

    @property
    def error(self) -> str:
        return self.matcher.get_error() if self.matcher.is_error() else ""


# ------------------------------------------------------------------------------- device side

@struct.dataclass
class MaskState:
    bits: Array       # [R, W] int32 the next token's allowed set (bit t % 32 of word t // 32)
    on: Array         # [R] bool the row is constrained
    waiting: Array    # [R] bool a constrained row took a token; its next mask is not set yet


def words(vocab_size: int) -> int:
    return (int(vocab_size) + 31) // 32


def init(rows: int, vocab_size: int, on=None) -> MaskState:
    """Every row free (or `on`: [R] bool constrained rows, each waiting for its first mask)."""
    on = jnp.zeros((rows,), bool) if on is None else jnp.asarray(on, bool)
    return MaskState(bits=jnp.full((rows, words(vocab_size)), -1, jnp.int32), on=on, waiting=on)


def apply(ms: MaskState, logits_RV: Array) -> Array:
    """Logits with every token outside a constrained row's mask at -inf."""
    V = logits_RV.shape[-1]
    t = jnp.arange(V)
    allowed_RV = (ms.bits[:, t // 32] >> (t % 32)) & 1
    keep = ~ms.on[:, None] | (allowed_RV == 1)
    return jnp.where(keep, logits_RV, -jnp.inf)


def advance(ms: MaskState, run_R: Array) -> MaskState:
    """After a step: each constrained row that took a token waits for its next mask."""
    return ms.replace(waiting=ms.waiting | (run_R & ms.on))


def serve(ms: MaskState, matchers: Sequence[Optional[RowMatcher]], tokens_RN: np.ndarray,
          n_gen_R: np.ndarray, done_R: np.ndarray) -> MaskState:
    """Host step: feed each constrained row's new tokens to its matcher and set its next mask.
    `matchers[r]` is None for a free row. Rows that are done are left as they are."""
    rows = [r for r, m in enumerate(matchers) if m is not None and not done_R[r]]
    if not rows:
        return ms
    W = ms.bits.shape[1]
    bits = np.zeros((len(rows), W), np.int32)
    for i, r in enumerate(rows):
        m = matchers[r]
        m.feed(tokens_RN[r, m.consumed:int(n_gen_R[r])])
        m.fill(bits[i])
    K = 1 << (len(rows) - 1).bit_length()           # a power of two: few compiled shapes
    idx = np.full((K,), ms.on.shape[0], np.int32)   # padding rows point past the end (dropped)
    idx[:len(rows)] = rows
    bits = np.concatenate([bits, np.zeros((K - len(rows), W), np.int32)])
    return _set_rows(ms, jnp.asarray(idx), jnp.asarray(bits))


@jax.jit
def _set_rows(ms: MaskState, rows_K: Array, bits_KW: Array) -> MaskState:
    return ms.replace(bits=ms.bits.at[rows_K].set(bits_KW, mode="drop"),
                      waiting=ms.waiting.at[rows_K].set(False, mode="drop"))
