"""Tokenizers behind one interface (`Tokenizer`): character-level (nanoGPT's shakespeare_char)
and byte-level BPE.

Every stage (data shards, training, evaluation, sampling, chat) talks to a `Tokenizer`:
`encode(text) -> list[int]`, `decode(ids) -> str`, `vocab_size`, `token_bytes()` (UTF-8 byte
length of each id, for bits per byte: `lm.losses.bpb_sums`), and the special tokens: `bos_id`
(None for the char tokenizer), `special_id(name)` and `chat` (a `ChatTokens` of the chat format's
ids, or None).

Byte-level BPE (`BPETokenizer`):
- trained with `rustbpe` (`train_bpe`), encoded and decoded with `tiktoken` built from our ranks;
  `lm/bpe_reference.py` is the readable pure-Python specification both must agree with;
- special tokens (`<|bos|>`, the chat set, and `RESERVED_SPECIALS` placeholders that later
  features name in `NAMED_SPECIALS`) get ids right after the merge ranks. `encode` never produces
  them from text unless the caller passes `allowed_special`: user text that spells
  "<|assistant_start|>" is ordinary text (the chat format's prompt-injection boundary);
- one self-describing JSON artifact (`save` / `load_tokenizer`), and OpenAI's GPT-2 files
  (`BPETokenizer.from_gpt2_files`, or `load_tokenizer("gpt2")`).
"""
from __future__ import annotations

import abc
import base64
import codecs
import hashlib
import json
import os
import warnings
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import numpy as np
import rustbpe
import tiktoken

from lm import paths
from lm.data import sources


# --------------------------------------------------------------------------- byte-level BPE

# GPT-4's split pattern (tiktoken's cl100k_base): letters with one optional leading non-letter, digit
# runs of at most 3, punctuation runs, newlines, and whitespace that leaves the last space to the
# next word.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
# GPT-2's split pattern, in tiktoken's equivalent form of the original
# 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s""")
SPLIT_PATTERNS = {"gpt4": GPT4_SPLIT_PATTERN, "gpt2": GPT2_SPLIT_PATTERN}

BOS = "<|bos|>"
# The chat set, in id order right after the merge ranks. <|bos|> starts every document (and so also
# separates documents / ends the previous text).
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (
    BOS,
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",      # a tool call written by the assistant
    "<|output_start|>", "<|output_end|>",      # the tool's output, written back into the context
)
# Special tokens reserved for what comes next (search, function calls, images, audio, ...): a
# tokenizer trained here carries `RESERVED_SPECIALS` unused ids after the chat set, named
# "<|reserved_K|>" by their special index K, so one base run serves the later chapters. A feature
# names its slot in NAMED_SPECIALS (name -> K); `special_id(name)` then finds it in every tokenizer
# trained since, with no retraining.
RESERVED_SPECIALS = 64
# function calling (lm.conversation): the tool definitions a conversation offers, a call the
# assistant writes, and a result the client sends back
FUNCTION_SPECIALS = ("<|tools_start|>", "<|tools_end|>", "<|tool_call_start|>",
                     "<|tool_call_end|>", "<|tool_result_start|>", "<|tool_result_end|>")
# images as tokens (lm.images): start/end markers and a 32-vector codebook's codes
IMAGE_SPECIALS = ("<|image_start|>", "<|image_end|>") + tuple(f"<|image_{k}|>" for k in range(32))
# speech as tokens (lm.audio): markers and a 22-vector codebook of log-mel frames (the reserve's
# last slots: the 64 are all named now)
AUDIO_SPECIALS = ("<|audio_start|>", "<|audio_end|>") + tuple(f"<|audio_{k}|>" for k in range(22))
NAMED_SPECIALS: dict[str, int] = {name: 9 + k for k, name in
                                  enumerate(FUNCTION_SPECIALS + IMAGE_SPECIALS + AUDIO_SPECIALS)}
assert len(NAMED_SPECIALS) <= RESERVED_SPECIALS, "named specials live in the reserve"
GPT2_ENDOFTEXT = "<|endoftext|>"
ARTIFACT_VERSION = 1
DEFAULT_MAX_DOC_CHARS = 10_000


def reserved_name(index: int) -> str:
    """The placeholder name of special slot `index` (counting BOS as 0)."""
    return f"<|reserved_{index}|>"


def trained_specials(reserved: int = RESERVED_SPECIALS) -> tuple[str, ...]:
    """The special tokens of a tokenizer trained here: BOS, the chat set, `reserved` slots (those
    a feature names in NAMED_SPECIALS under that name, the others as placeholders). Tokenizers
    trained before a slot was named keep its placeholder; `special_id` finds it either way."""
    n = len(CHAT_SPECIAL_TOKENS)
    named = {k: name for name, k in NAMED_SPECIALS.items()}
    return CHAT_SPECIAL_TOKENS + tuple(named.get(n + k, reserved_name(n + k))
                                       for k in range(reserved))


class ChatTokens(NamedTuple):
    """The chat format's special-token ids (`lm.conversation`, the tool protocol, the engine's
    stops). A tokenizer without them (the character-level one) has `chat = None`."""
    bos: int
    user_start: int
    user_end: int
    assistant_start: int
    assistant_end: int
    python_start: int
    python_end: int
    output_start: int
    output_end: int

    @classmethod
    def of(cls, tok: "Tokenizer") -> Optional["ChatTokens"]:
        if tok.bos_id is None:
            return None
        try:
            return cls(int(tok.bos_id), *(tok.special_id(n) for n in CHAT_SPECIAL_TOKENS[1:]))
        except KeyError:
            return None

    @property
    def stops(self) -> tuple[int, int]:
        """The tokens that end an assistant reply: `<|assistant_end|>`, and BOS (a new document)."""
        return (self.assistant_end, self.bos)


class FunctionTokens(NamedTuple):
    """The function-calling special-token ids (FUNCTION_SPECIALS, in reserved slots): present in
    every tokenizer trained here with the reserved block; absent (None) in others."""
    tools_start: int
    tools_end: int
    call_start: int
    call_end: int
    result_start: int
    result_end: int

    @classmethod
    def of(cls, tok: "Tokenizer") -> Optional["FunctionTokens"]:
        try:
            return cls(*(tok.special_id(n) for n in FUNCTION_SPECIALS))
        except KeyError:
            return None


class Tokenizer(abc.ABC):
    """What the rest of `lm` needs from a tokenizer; `CharTokenizer` and `BPETokenizer` are the two.

    Special tokens: `special_tokens` (name -> id; empty for the char tokenizer), `bos_id` (None
    when there is none), `special_id(name)` (KeyError when absent) and `chat` (the chat format's
    ids, or None). `encode` never produces a special token from text.
    """

    kind: str = "tokenizer"
    name: str = "tokenizer"
    special_tokens: dict[str, int]

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> Optional[int]:
        return None

    @property
    def chat(self) -> Optional[ChatTokens]:
        """The chat special tokens, or None (then the chat format and tool calls are unavailable)."""
        if "_chat" not in self.__dict__:
            self._chat = ChatTokens.of(self)
        return self._chat

    @property
    def functions(self) -> Optional[FunctionTokens]:
        """The function-calling special tokens, or None (a tokenizer without the reserved block)."""
        if "_functions" not in self.__dict__:
            self._functions = FunctionTokens.of(self) if self.chat is not None else None
        return self._functions

    def special_id(self, name: str) -> int:
        """Id of a special token. "<|bos|>" always names the BOS token; a feature's name in
        `NAMED_SPECIALS` names its reserved slot."""
        if name in self.special_tokens:
            return self.special_tokens[name]
        if name == BOS and self.bos_id is not None:
            return self.bos_id
        slot = reserved_name(NAMED_SPECIALS[name]) if name in NAMED_SPECIALS else None
        if slot in self.special_tokens:
            return self.special_tokens[slot]
        raise KeyError(f"{name!r} is not a special token of {self.name!r} "
                       f"(known: {sorted(self.special_tokens, key=self.special_tokens.get)})")

    def is_special(self, token_id: int) -> bool:
        return int(token_id) in self.special_tokens.values()

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Ids for `text` (never a special token)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a compact numpy array (uint16 when the vocabulary fits, else int32)."""
        return np.asarray(self.encode(text), np.uint16 if self.vocab_size <= 2**16 else np.int32)

    @abc.abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes (special tokens as their names): may end inside a UTF-8 character."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`; bytes that are not valid UTF-8 become U+FFFD (never raises on them)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> "StreamDecoder":
        """An incremental decoder that holds back partial UTF-8 characters (see `StreamDecoder`)."""
        return StreamDecoder(self)

    def id_to_bytes(self, token_id: int) -> bytes:
        """Bytes of one id (a special token gives its name)."""
        return self.decode_bytes([token_id])

    @abc.abstractmethod
    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: UTF-8 bytes each id stands for; 0 for special tokens."""

    @abc.abstractmethod
    def to_dict(self) -> dict:
        """The self-describing artifact (`save`, `load_tokenizer`)."""

    def same_as(self, other: "Tokenizer") -> bool:
        """Whether both map text to the same ids (same kind, vocabulary, pattern, specials)."""
        if type(self) is not type(other) or self.vocab_size != other.vocab_size:
            return False
        a, b = self.to_dict(), other.to_dict()
        a.pop("name", None), b.pop("name", None)
        return a == b

    def save(self, path: str) -> None:
        """Write the artifact atomically (a killed save leaves the old file, or none)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, ensure_ascii=False, indent=1)
        os.replace(tmp, path)


class CharTokenizer(Tokenizer):
    """One id per distinct character of the training text, sorted (nanoGPT's shakespeare_char).
    No special tokens: no BOS and no chat format."""

    kind = "char"
    name = "char"

    def __init__(self, chars: Sequence[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: characters must be distinct")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise ValueError(f"CharTokenizer: character {e.args[0]!r} is not in the vocabulary "
                             f"({self.vocab_size} characters)") from None

    def encode_array(self, text: str) -> np.ndarray:
        """Fast path for whole corpora: a lookup table over code points."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = np.full(max(max(map(ord, self.chars)), int(codes.max(initial=0))) + 1, -1, np.int32)
        for i, c in enumerate(self.chars):
            table[ord(c)] = i
        ids = table[codes]
        if (ids < 0).any():
            bad = chr(int(codes[np.argmax(ids < 0)]))
            raise ValueError(f"CharTokenizer: character {bad!r} is not in the vocabulary")
        return ids.astype(np.uint16 if self.vocab_size < 2**16 else np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars], np.int32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "version": 1, "chars": self.chars}


def default_num_threads() -> int:
    """Threads for batch encoding: the CPUs this process may use (tiktoken's default of 8 is slower
    than 2 on a 2-core machine)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class StreamDecoder:
    """Decodes ids one at a time (sampling, chat) without breaking multi-byte UTF-8 characters.

    A token may end in the middle of a character (e.g. an emoji split over two tokens); `push` holds
    such partial bytes back until the character completes. Bytes that can never form a character
    become U+FFFD. Call `flush()` at the end to emit whatever is still held.
    """

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, ids: int | Iterable[int]) -> str:
        if isinstance(ids, (int, np.integer)):
            ids = [int(ids)]
        return self._utf8.decode(self._tok.decode_bytes(ids))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class BPETokenizer(Tokenizer):
    """Byte-level BPE: merge ranks (token bytes -> id) + a split pattern + special tokens.

    Ids 0..n_ranks-1 are the merge ranks (the first 256 are single bytes for tokenizers we train;
    GPT-2 orders its byte tokens differently), then the special tokens. Encoding and decoding run in
    `tiktoken`. Build one with `train_bpe`, `BPETokenizer.from_gpt2_files`, or `load_tokenizer`.
    """

    kind = "bpe"

    def __init__(self, mergeable_ranks: dict[bytes, int], pattern: str,
                 special_tokens: dict[str, int] | Sequence[str] = CHAT_SPECIAL_TOKENS, *,
                 name: str = "bpe", bos_token: str = BOS):
        if not pattern:
            raise ValueError("BPETokenizer: the split pattern must not be empty")
        ranks = {bytes(k): int(v) for k, v in mergeable_ranks.items()}
        n = len(ranks)
        if sorted(ranks.values()) != list(range(n)):
            raise ValueError("BPETokenizer: merge ranks must be the ids 0..n-1, each used once")
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"BPETokenizer: {len(missing)} of the 256 single bytes have no rank "
                             f"(e.g. {bytes(missing[:1])!r}), so some text could not be encoded")
        if not isinstance(special_tokens, dict):
            special_tokens = {s: n + i for i, s in enumerate(special_tokens)}
        special_tokens = {str(k): int(v) for k, v in special_tokens.items()}
        ids = sorted(special_tokens.values())
        if ids != list(range(n, n + len(ids))):
            raise ValueError(f"BPETokenizer: special token ids must follow the {n} merge ranks "
                             f"contiguously, got {ids[:3]}...")
        if bos_token not in special_tokens:
            raise ValueError(f"BPETokenizer: the BOS token {bos_token!r} is not a special token "
                             f"({sorted(special_tokens)})")
        self.name = name
        self.pattern = pattern
        self.mergeable_ranks = ranks
        self.special_tokens = special_tokens
        self.bos_token = bos_token
        self._enc = None
        self._token_bytes = None

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, **kwargs) -> "BPETokenizer":
        """Same as `train_bpe`."""
        return train_bpe(texts, vocab_size, **kwargs)

    @classmethod
    def from_gpt2_files(cls, encoder_json: str, vocab_bpe: str,
                        extra_special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS[1:]
                        ) -> "BPETokenizer":
        """OpenAI's GPT-2 tokenizer from its `encoder.json` + `vocab.bpe` (local paths).

        `<|endoftext|>` (50256) is the BOS/document separator; the chat set (without <|bos|>)
        follows it at 50257.., so `vocab_size` is 50265 by default.
        """
        ranks = _gpt2_ranks(encoder_json, vocab_bpe)
        specials = {GPT2_ENDOFTEXT: len(ranks)}
        for s in extra_special_tokens:
            if s not in specials:
                specials[s] = len(ranks) + len(specials)
        return cls(ranks, GPT2_SPLIT_PATTERN, specials, name="gpt2", bos_token=GPT2_ENDOFTEXT)

    @classmethod
    def gpt2(cls) -> "BPETokenizer":
        """GPT-2 from the data cache (`lm.data.sources.fetch`; LM_DATA_DIR=../shared/data works)."""
        return cls.from_gpt2_files(sources.fetch("gpt2_encoder"), sources.fetch("gpt2_vocab"))

    def __reduce__(self):  # pickles (e.g. to data-loader workers) without the tiktoken object
        return (_rebuild_bpe, (self.mergeable_ranks, self.pattern, self.special_tokens, self.name,
                               self.bos_token))

    # -- properties ------------------------------------------------------------------------------
    @property
    def enc(self):
        """The underlying `tiktoken.Encoding` (built on first use)."""
        if self._enc is None:
            self._enc = tiktoken.Encoding(
                name=self.name, pat_str=self.pattern, mergeable_ranks=self.mergeable_ranks,
                special_tokens=self.special_tokens)
        return self._enc

    @property
    def n_ranks(self) -> int:
        return len(self.mergeable_ranks)

    @property
    def vocab_size(self) -> int:
        return len(self.mergeable_ranks) + len(self.special_tokens)

    @property
    def bos_id(self) -> int:
        return self.special_tokens[self.bos_token]

    def is_special(self, token_id: int) -> bool:
        return int(token_id) >= self.n_ranks

    # -- encoding --------------------------------------------------------------------------------
    def _allowed(self, allowed_special) -> set[str] | None:
        if not allowed_special:
            return None
        if allowed_special == "all":
            return set(self.special_tokens)
        if isinstance(allowed_special, str):
            allowed_special = {allowed_special}
        allowed = set()
        for s in allowed_special:
            if s == BOS and s not in self.special_tokens:
                s = self.bos_token
            if s not in self.special_tokens:
                raise ValueError(f"allowed_special: {s!r} is not a special token of {self.name!r}")
            allowed.add(s)
        return allowed

    def encode(self, text: str, *, allowed_special: Iterable[str] | str = (),
               prepend_bos: bool = False) -> list[int]:
        """Ids for `text`. Special-token spellings in `text` are ordinary text unless named in
        `allowed_special` (a set of names, or "all"). Only pass `allowed_special` for text you
        wrote yourself (templates), never for user or web text."""
        if not allowed_special and not prepend_bos:  # the common case, kept lean
            return (self._enc or self.enc).encode_ordinary(text)
        allowed = self._allowed(allowed_special)
        if allowed is None:
            ids = self.enc.encode_ordinary(text)
        else:
            ids = self.enc.encode(text, allowed_special=allowed, disallowed_special=())
        return [self.bos_id] + ids if prepend_bos else ids

    def encode_batch(self, texts: Sequence[str], *, allowed_special: Iterable[str] | str = (),
                     prepend_bos: bool = False, num_threads: int | None = None) -> list[list[int]]:
        """`encode` over many texts in a thread pool (default: one thread per usable CPU)."""
        num_threads = num_threads or default_num_threads()
        texts = list(texts)
        allowed = self._allowed(allowed_special)
        if allowed is None:
            out = self.enc.encode_ordinary_batch(texts, num_threads=num_threads)
        else:
            out = self.enc.encode_batch(texts, num_threads=num_threads, allowed_special=allowed,
                                        disallowed_special=())
        if prepend_bos:
            out = [[self.bos_id] + ids for ids in out]
        return out

    def encode_array(self, text: str, **kwargs) -> np.ndarray:
        """`encode` as a compact numpy array (uint16 when the vocabulary fits, else int32)."""
        return np.asarray(self.encode(text, **kwargs),
                          np.uint16 if self.vocab_size <= 2**16 else np.int32)

    # -- decoding --------------------------------------------------------------------------------
    def _ids(self, ids) -> list[int]:
        ids = ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"decode: id {i} is outside the vocabulary "
                                 f"(0..{self.vocab_size - 1})")
        return ids

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes (special tokens as their text): may end inside a UTF-8 character."""
        return self.enc.decode_bytes(self._ids(ids))

    def id_to_bytes(self, token_id: int) -> bytes:
        """Bytes of one id (a special token gives its text, e.g. b"<|bos|>")."""
        return self.enc.decode_single_token_bytes(self._ids([token_id])[0])

    def token_bytes(self) -> np.ndarray:
        """int32 [vocab_size]: UTF-8 bytes each id stands for; 0 for special tokens."""
        if self._token_bytes is None:
            tb = np.zeros(self.vocab_size, np.int32)
            for b, i in self.mergeable_ranks.items():
                tb[i] = len(b)
            self._token_bytes = tb
        return self._token_bytes.copy()

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        ranks = sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1])
        lines = [f"{base64.b64encode(b).decode('ascii')} {i}" for b, i in ranks]
        return {
            "kind": self.kind,
            "version": ARTIFACT_VERSION,
            "name": self.name,
            "format": ("byte-level BPE: 'mergeable_ranks' holds tiktoken .tiktoken lines "
                       "'<base64 token bytes> <id>'; 'pattern' is the split regex; special "
                       "tokens follow the ranks"),
            "vocab_size": self.vocab_size,
            "n_ranks": len(ranks),
            "pattern": self.pattern,
            "bos_token": self.bos_token,
            "special_tokens": dict(sorted(self.special_tokens.items(), key=lambda kv: kv[1])),
            "ranks_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
            "mergeable_ranks": lines,
        }

    @classmethod
    def from_dict(cls, meta: dict, source: str = "<dict>") -> "BPETokenizer":
        if meta.get("kind") != cls.kind:
            raise ValueError(f"{source}: not a BPE tokenizer artifact (kind={meta.get('kind')!r})")
        if meta.get("version") != ARTIFACT_VERSION:
            raise ValueError(f"{source}: BPE artifact version {meta.get('version')!r} is not "
                             f"supported (this code reads version {ARTIFACT_VERSION})")
        lines = meta["mergeable_ranks"]
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        if meta.get("ranks_sha256") not in (None, digest):
            raise ValueError(f"{source}: mergeable_ranks do not match their sha256 (file damaged?)")
        ranks = {}
        for line in lines:
            tok, rank = line.split(" ")
            ranks[base64.b64decode(tok)] = int(rank)
        if len(ranks) != len(lines):
            raise ValueError(f"{source}: duplicate token bytes in mergeable_ranks")
        tok = cls(ranks, meta["pattern"], meta["special_tokens"], name=meta.get("name", "bpe"),
                  bos_token=meta["bos_token"])
        if "vocab_size" in meta and meta["vocab_size"] != tok.vocab_size:
            raise ValueError(f"{source}: vocab_size {meta['vocab_size']} does not match the ranks "
                             f"and special tokens ({tok.vocab_size})")
        return tok

    def __repr__(self) -> str:
        return (f"BPETokenizer(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"n_ranks={self.n_ranks}, specials={len(self.special_tokens)})")


def _rebuild_bpe(ranks, pattern, specials, name, bos_token):
    return BPETokenizer(ranks, pattern, specials, name=name, bos_token=bos_token)


def _capped(texts: Iterable[str], max_doc_chars: int | None, seen: list[int]) -> Iterator[str]:
    """Cut each text to `max_doc_chars`; `seen` accumulates [characters in, characters kept]."""
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"train_bpe: texts must be str, got {type(t).__name__}")
        kept = t if max_doc_chars is None else t[:max_doc_chars]
        seen[0] += len(t)
        seen[1] += len(kept)
        yield kept


def train_bpe(texts: Iterable[str], vocab_size: int, *, pattern: str = GPT4_SPLIT_PATTERN,
              special_tokens: Optional[Sequence[str]] = None,
              max_doc_chars: int | None = DEFAULT_MAX_DOC_CHARS, name: str = "bpe",
              buffer_size: int = 8192) -> BPETokenizer:
    """Train a byte-level BPE tokenizer with `rustbpe`.

    `vocab_size` is the final size *including* the 256 byte tokens and the special tokens, so it is
    the model's embedding size: `vocab_size - len(special_tokens) - 256` merges are learned.
    Each text is cut to `max_doc_chars` characters (None: no cap) so a few huge documents cannot
    dominate the counts; it warns when that drops over 10% of the text (e.g. a whole book passed as
    one string: split it into documents or pass max_doc_chars=None). Ties between equally frequent pairs go to the smallest pair, exactly as in
    `lm.bpe_reference.train`. If the corpus runs out of pairs first, the vocabulary is smaller.
    """
    if not pattern:
        raise ValueError("train_bpe: the split pattern must not be empty (rustbpe's empty default "
                         "would learn no merges); use GPT4_SPLIT_PATTERN or GPT2_SPLIT_PATTERN")
    special_tokens = list(trained_specials() if special_tokens is None else special_tokens)
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError("train_bpe: special tokens must be distinct")
    if BOS not in special_tokens:
        raise ValueError(f"train_bpe: special tokens must include {BOS!r}")
    n_ranks = vocab_size - len(special_tokens)
    if n_ranks < 256:
        raise ValueError(f"train_bpe: vocab_size={vocab_size} leaves {n_ranks} ids for merge ranks "
                         f"after {len(special_tokens)} special tokens; need at least 256 (the bytes)")
    trainer = rustbpe.Tokenizer()
    seen = [0, 0]
    trainer.train_from_iterator(_capped(texts, max_doc_chars, seen), n_ranks,
                                buffer_size=buffer_size, pattern=pattern)
    if seen[1] < 0.9 * seen[0]:
        warnings.warn(f"train_bpe: max_doc_chars={max_doc_chars} kept only {seen[1]:,} of "
                      f"{seen[0]:,} characters; pass documents, not one long string, or "
                      f"max_doc_chars=None")
    pairs = sorted(((bytes(b), int(i)) for b, i in trainer.get_mergeable_ranks()),
                   key=lambda kv: kv[1])
    ranks: dict[bytes, int] = {}
    for b, _ in pairs:  # a byte string learned twice keeps its first (lowest) id; ids stay dense
        if b not in ranks:
            ranks[b] = len(ranks)
    if len(ranks) != len(pairs):
        warnings.warn(f"train_bpe: {len(pairs) - len(ranks)} merges repeated an existing token's "
                      f"bytes and were dropped")
    if len(ranks) < n_ranks:
        warnings.warn(f"train_bpe: the corpus ran out of pairs after {len(ranks) - 256} merges; "
                      f"vocab_size is {len(ranks) + len(special_tokens)}, not {vocab_size}")
    return BPETokenizer(ranks, pattern, special_tokens, name=name)


# --------------------------------------------------------------------------- GPT-2 files

def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as used in encoder.json and vocab.bpe.

    Printable Latin-1 bytes stand for themselves; the other 68 bytes (controls, space, ...) map in
    order to U+0100, U+0101, ... so that every token is a printable string.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _gpt2_ranks(encoder_json: str, vocab_bpe: str,
                specials: Sequence[str] = (GPT2_ENDOFTEXT,)) -> dict[bytes, int]:
    """Ranks from encoder.json (token -> id, `specials` left out), checked against vocab.bpe
    (the merge order)."""
    for p in (encoder_json, vocab_bpe):
        if not os.path.exists(p):
            raise FileNotFoundError(f"GPT-2 tokenizer file not found: {p}")
    decode_char = {c: b for b, c in gpt2_bytes_to_unicode().items()}

    def to_bytes(s: str) -> bytes:
        try:
            return bytes(decode_char[c] for c in s)
        except KeyError as e:
            raise ValueError(f"{encoder_json}: token {s!r} has a character {e.args[0]!r} outside "
                             f"GPT-2's byte alphabet") from None

    with open(encoder_json, encoding="utf-8") as f:
        encoder = json.load(f)
    ranks = {to_bytes(s): i for s, i in encoder.items() if s not in specials}
    if GPT2_ENDOFTEXT in encoder and encoder[GPT2_ENDOFTEXT] != len(ranks):
        raise ValueError(f"{encoder_json}: expected {GPT2_ENDOFTEXT} right after the "
                         f"{len(ranks)} merge ranks, got {encoder.get(GPT2_ENDOFTEXT)}")
    with open(vocab_bpe, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if not lines[0].startswith("#version"):
        raise ValueError(f"{vocab_bpe}: expected a '#version' first line, got {lines[0][:40]!r}")
    merges = [ln.split(" ") for ln in lines[1:] if ln]
    if len(merges) + 256 != len(ranks):
        raise ValueError(f"{vocab_bpe}: {len(merges)} merges + 256 bytes != {len(ranks)} tokens "
                         f"in {encoder_json}")
    for k, (a, b) in enumerate(merges):
        if ranks.get(to_bytes(a) + to_bytes(b)) != 256 + k:
            raise ValueError(f"{vocab_bpe}: merge {k} ({a!r} {b!r}) is not token {256 + k} of "
                             f"{encoder_json}: the two files do not belong together")
    return ranks


# --------------------------------------------------------------------------- loading

def tokenizer_path(name: str) -> str:
    """Path of the artifact for a trained tokenizer called `name` (e.g. "shakespeare_bpe2048")."""
    return os.path.join(paths.tokenizer_dir(), f"{name}.json")


def named_tokenizer(name: str) -> Tokenizer:
    """A tokenizer by name: "gpt2" (OpenAI's files via `lm.data.sources.fetch`, so LM_DATA_DIR
    applies) or one saved by `tools.train_tokenizer` under `lm.paths.tokenizer_dir()`. KeyError if unknown."""
    if name == "gpt2":
        return BPETokenizer.gpt2()
    path = tokenizer_path(name)
    if os.path.exists(path):
        return load_tokenizer(path)
    raise KeyError(f"unknown tokenizer name {name!r}: not 'gpt2' and no {path} (train one with "
                   f"`python -m tools.train_tokenizer --name {name}`)")


def load_tokenizer(path: str) -> Tokenizer:
    """Load any tokenizer artifact written by `save` (dispatches on its `kind`).

    Also: a folder holding GPT-2's encoder.json + vocab.bpe, or "gpt2" (from the data cache), or a
    bare name saved under `lm.paths.tokenizer_dir()`.
    """
    if os.path.isdir(path):
        enc, voc = os.path.join(path, "encoder.json"), os.path.join(path, "vocab.bpe")
        if os.path.exists(enc) and os.path.exists(voc):
            return BPETokenizer.from_gpt2_files(enc, voc)
        raise ValueError(f"load_tokenizer: folder {path} has no encoder.json + vocab.bpe")
    if not os.path.exists(path):
        if path == "gpt2" or os.path.exists(tokenizer_path(path)):
            return named_tokenizer(path)
        raise FileNotFoundError(f"load_tokenizer: no file {path!r} (nor {tokenizer_path(path)}); "
                                f"train one with `python -m tools.train_tokenizer`")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    kind = meta.get("kind")
    if kind == "char":
        return CharTokenizer(meta["chars"])
    if kind == "bpe":
        return BPETokenizer.from_dict(meta, source=path)
    raise ValueError(f"load_tokenizer: {path}: unknown tokenizer kind {kind!r} "
                     f"(known: 'char', 'bpe')")
