"""Chat with a trained run from the terminal, over the sampling engine (tokens stream as they come).

    python -m lm.chat --run runs/<experiment>/<timestamp>          # latest checkpoint
    python -m lm.chat --checkpoint runs/<exp>/<ts>/checkpoints --step 2000
    python -m lm.chat --run ... --prompt "Why is the sky blue?"    # one turn, then exit

Two modes (`--mode`, default `auto`):
- completion: each line you type is a prompt; the model continues it (base models);
- chat: turns are rendered with the chat special tokens, as nanochat does —
  `<|bos|><|user_start|>...<|user_end|><|assistant_start|>...<|assistant_end|>...` — and the model
  answers until `<|assistant_end|>`; calculator tool calls (`<|python_start|>...<|python_end|>`)
  are evaluated by the engine and their output forced into the answer (SFT/RL models).
`auto` picks chat when the tokenizer has the chat tokens and the run's name mentions
sft/rl/grpo/chat.

Commands: `/reset` clears the conversation, `/quit` (or Ctrl-D) exits.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Iterator, Optional

import jax
import numpy as np

from lm import sampling
from lm.config import Config, from_dict

CHAT_TOKENS = ("<|user_start|>", "<|user_end|>", "<|assistant_start|>", "<|assistant_end|>")


# ------------------------------------------------------------------------------------ loading

def resolve_dirs(run: Optional[str], checkpoint: Optional[str]) -> tuple[str, str]:
    """(run_dir holding config.json, checkpoint directory)."""
    if run:
        return run, os.path.join(run, "checkpoints")
    if checkpoint:
        ckpt = checkpoint.rstrip("/")
        if os.path.basename(ckpt).isdigit():           # a step folder was given
            ckpt = os.path.dirname(ckpt)
        return os.path.dirname(os.path.abspath(ckpt)), ckpt
    raise SystemExit("give --run RUN_DIR or --checkpoint CHECKPOINT_DIR")


def load_config(run_dir: str) -> Config:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise SystemExit(f"no config.json in {run_dir}")
    with open(path) as f:
        return from_dict(json.load(f))


def load_params(cfg: Config, ckpt_dir: str, step: Optional[int] = None):
    """(step, params) restored onto this process's first device."""
    from lm import train
    from lm.checkpoint import CheckpointManager
    from lm.optim import make_optimizer

    tx = make_optimizer(cfg.optim, cfg.train.steps)
    shapes = jax.eval_shape(lambda: train.init_state(cfg, tx, 0))
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), shapes)
    # every=0: this manager never saves; a huge keep: it never garbage-collects anything either.
    with CheckpointManager(ckpt_dir, every=0, keep=1 << 30) as mgr:
        out = mgr.restore(target, step)
    if out is None:
        raise SystemExit(f"no checkpoint in {ckpt_dir}")
    got_step, state, _ = out
    return got_step, state.params


def load_tokenizer(cfg: Config, override: Optional[str] = None):
    from lm.data import pipeline
    if override:
        from lm.tokenizer import load_tokenizer as load
        return load(override)
    return pipeline.build_tokenizer(cfg.data)


def has_chat_tokens(tok) -> bool:
    get = getattr(tok, "special_id", None)
    if get is None:
        return False
    try:
        return all(get(name) is not None for name in CHAT_TOKENS)
    except (KeyError, ValueError):
        return False


def pick_mode(mode: str, cfg: Config, tok) -> str:
    if mode != "auto":
        if mode == "chat" and not has_chat_tokens(tok):
            raise SystemExit("chat mode needs a tokenizer with the chat special tokens")
        return mode
    hint = f"{cfg.name} {cfg.description}".lower()
    tuned = any(w in hint for w in ("sft", "rl", "grpo", "chat"))
    return "chat" if has_chat_tokens(tok) and tuned else "completion"


# ------------------------------------------------------------------------------------ session

class TextStream:
    """Incremental detokenizer: whole UTF-8 characters only (BPE), special tokens by name."""

    def __init__(self, tok):
        self.tok = tok
        self.dec = tok.stream_decoder() if hasattr(tok, "stream_decoder") else None
        specials = getattr(tok, "special_tokens", {}) or {}
        self.special = {int(i): s for s, i in dict(specials).items()}

    def push(self, ids) -> str:
        out = []
        for i in ids:
            if i in self.special:
                if self.dec is not None:
                    out.append(self.dec.flush())
                out.append(self.special[i])
            elif self.dec is not None:
                out.append(self.dec.push(int(i)))
            else:
                out.append(self.tok.decode([int(i)]))
        return "".join(out)

    def flush(self) -> str:
        return self.dec.flush() if self.dec is not None else ""


class Session:
    """One conversation (chat mode) or a series of independent prompts (completion mode)."""

    def __init__(self, params, cfg: Config, tok, mode: str, *, temperature: float = 0.8,
                 top_k: int = 50, top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                 tools: bool = True, chunk: int = 8):
        self.cfg, self.tok, self.mode = cfg, tok, mode
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                             max_new_tokens=min(max_new_tokens, cfg.model.block_size - 1))
        self.seed, self.turn, self.chunk = seed, 0, chunk
        tool_ids = sampling.ToolTokens.from_tokenizer(tok) if (mode == "chat" and tools) else None
        self.engine = sampling.Engine(params, cfg.model, tokenizer=tok, tools=tool_ids)
        self.bos = getattr(tok, "bos_id", None)
        if mode == "chat":
            sid = tok.special_id
            self.user_start, self.user_end = sid("<|user_start|>"), sid("<|user_end|>")
            self.asst_start, self.asst_end = sid("<|assistant_start|>"), sid("<|assistant_end|>")
        self.reset()

    def reset(self) -> None:
        self.history: list[int] = [self.bos] if self.bos is not None else []

    def _fit(self, ids: list[int]) -> list[int]:
        """Keep the prompt short enough to leave room for the answer (drop the oldest tokens)."""
        room = self.cfg.model.block_size - min(self.sampling["max_new_tokens"],
                                               self.cfg.model.block_size // 2)
        if len(ids) <= room:
            return ids
        head = [self.bos] if self.bos is not None else []
        return head + ids[len(ids) - room + len(head):]

    def respond(self, text: str) -> Iterator[str]:
        """Stream the model's answer (chat) or continuation (completion) as text pieces."""
        if self.mode == "chat":
            prompt = self.history + [self.user_start, *self.tok.encode(text), self.user_end,
                                     self.asst_start]
            stops = [self.asst_end] + ([self.bos] if self.bos is not None else [])
        else:
            prompt = ([self.bos] if self.bos is not None else []) + list(self.tok.encode(text))
            stops = [self.bos] if self.bos is not None else []
        if not prompt:
            prompt = [0]
        prompt = self._fit(prompt)
        out = TextStream(self.tok)
        gen: list[int] = []
        it = self.engine.stream([prompt], chunk=self.chunk, seed=self.seed,
                                sample_ids=[self.turn], stop_tokens=stops, **self.sampling)
        self.turn += 1
        for ch in it:
            new = ch.tokens[0]
            gen += new
            shown = [t for t in new if t not in stops]
            piece = out.push(shown)
            if piece:
                yield piece
        tail = out.flush()
        if tail:
            yield tail
        if self.mode == "chat":
            if not gen or gen[-1] != self.asst_end:
                gen.append(self.asst_end)               # close the turn (budget ran out)
            self.history = prompt + gen


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="run directory (config.json + checkpoints/)")
    p.add_argument("--checkpoint", help="checkpoint directory (its parent holds config.json)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--tokenizer", default=None, help="tokenizer artifact (default: the run's)")
    p.add_argument("--mode", choices=("auto", "chat", "completion"), default="auto")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_tools", action="store_true", help="don't evaluate calculator tool calls")
    p.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    a = p.parse_args(argv)

    run_dir, ckpt_dir = resolve_dirs(a.run, a.checkpoint)
    cfg = load_config(run_dir)
    tok = load_tokenizer(cfg, a.tokenizer)
    step, params = load_params(cfg, ckpt_dir, a.step)
    mode = pick_mode(a.mode, cfg, tok)
    sess = Session(params, cfg, tok, mode, temperature=a.temperature, top_k=a.top_k,
                   top_p=a.top_p, max_new_tokens=a.max_new_tokens, seed=a.seed,
                   tools=not a.no_tools)

    def answer(text: str) -> None:
        for piece in sess.respond(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()

    if a.prompt is not None:
        answer(a.prompt)
        return 0
    print(f"{cfg.name} step {step} ({mode} mode; /reset, /quit)", file=sys.stderr)
    while True:
        try:
            line = input("> " if mode == "chat" else "prompt> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        cmd = line.strip()
        if cmd == "/quit":
            return 0
        if cmd == "/reset":
            sess.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not cmd:
            continue
        try:
            answer(line)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
