"""Chat with a trained run from the terminal, over the sampling engine (tokens stream as they come).

    python -m lm.chat --run runs/<experiment>/<timestamp>          # latest checkpoint
    python -m lm.chat --run chat_tiny_sft                           # an experiment's latest run
    python -m lm.chat --checkpoint runs/<exp>/<ts>/checkpoints --step 2000
    python -m lm.chat --run ... --prompt "Why is the sky blue?"    # one turn, then exit

Two modes (`--mode`, default `auto`: chat for runs of the `sft` and `grpo` stages, completion for
base models):
- completion: each line you type is a prompt; the model continues it;
- chat: the conversation is rendered in the chat format (`lm.conversation`), the model answers
  until `<|assistant_end|>`, and its calculator calls are evaluated by the engine (shown as
  `<<expr=result>>`).

Images and speech (chat mode, a tokenizer with the reserved slots: `lm.images`, `lm.audio`):
`--image PATH` (a PNG) or `--audio PATH` (a 16 kHz 16-bit WAV) goes with `--prompt` or the first
message, `/image PATH` or `/audio PATH` with the next one; an image the model draws is saved as a
PNG (`--save_images`, default the current folder) and its path shown.

Commands: `/reset` clears the conversation, `/image PATH` and `/audio PATH` attach a picture or a
recording to the next message, `/quit` (or Ctrl-D) exits.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterator, Optional

from lm import conversation as chat_format
from lm import audio, images, process, runs, sampling, search, stages


def pick_mode(mode: str, stage: str, tok) -> str:
    """chat for runs of a chat stage (by their stage, not their name), completion for base runs."""
    if mode == "chat" and tok.chat is None:
        raise SystemExit("chat mode needs a tokenizer with the chat special tokens")
    if mode != "auto":
        return mode
    return "chat" if stages.is_chat(stage) and tok.chat is not None else "completion"


def media_part(kind: str, path: str) -> dict:
    """A PNG or WAV file as an image or audio part (its codes)."""
    if kind == "image":
        return {"type": "image", "codes": images.encode(images.load_file(path))}
    return {"type": "audio", "codes": audio.encode(audio.load_file(path))}


class Session:
    """One conversation (chat mode) or a series of independent prompts (completion mode)."""

    def __init__(self, params, cfg, tok, mode: str, *, temperature: float = 0.8,
                 top_k: int = 50, top_p: float = 1.0, max_new_tokens: int = 256, seed: int = 0,
                 tools: bool = True, chunk: int = 8, system: Optional[str] = None,
                 search_index: Optional[search.SearchIndex] = None, save_images: str = "."):
        self.cfg, self.tok, self.mode = cfg, tok, mode
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p,
                             max_new_tokens=min(max_new_tokens, cfg.model.block_size - 1))
        self.seed, self.turn, self.chunk, self.system = seed, 0, chunk, system
        tool_ids = tok.chat if (mode == "chat" and tools) else None
        self.engine = sampling.Engine(params, cfg.model, tokenizer=tok, tools=tool_ids,
                                      tool_fn=search.engine_tool(tok, search_index))
        self.bos = tok.bos_id
        self.save_images, self.saved = save_images, 0
        self.reset()

    def reset(self) -> None:
        self.messages: list[dict] = ([{"role": "system", "content": self.system}]
                                     if self.system else [])

    def forget_last(self) -> None:
        """Drop a user turn that could not be answered (so the conversation stays valid)."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()

    def _fit(self, ids: list[int]) -> list[int]:
        """Keep the prompt short enough to leave room for the answer (drop the oldest tokens)."""
        room = self.cfg.model.block_size - min(self.sampling["max_new_tokens"],
                                               self.cfg.model.block_size // 2)
        if len(ids) <= room:
            return ids
        head = [self.bos] if self.bos is not None else []
        return head + ids[len(ids) - room + len(head):]

    def _save(self, codes: list[int]) -> str:
        """A drawn image written as a PNG; the text shown in its place."""
        try:
            png = images.to_png(images.decode(codes))
        except images.ImageError as e:
            return f"[unfinished image: {e}]"
        os.makedirs(self.save_images, exist_ok=True)
        self.saved += 1
        path = os.path.join(self.save_images, f"lm_image_{self.turn}_{self.saved}.png")
        with open(path, "wb") as f:
            f.write(png)
        return f"[image saved to {path}]"

    def respond(self, text: str, attach: Optional[tuple[str, str]] = None) -> Iterator[str]:
        """Stream the model's answer (chat) or continuation (completion) as text pieces;
        `attach`: ("image", PNG path) or ("audio", WAV path) sent with the text (chat mode;
        ImageError / AudioError if unusable)."""
        if attach is not None and self.mode != "chat":
            raise ValueError("images and audio go with chat mode only")
        if self.mode == "chat":
            content = text if attach is None else [media_part(*attach),
                                                   {"type": "text", "text": text}]
            self.messages.append({"role": "user", "content": content})
            prompt = chat_format.render_for_completion({"messages": self.messages}, self.tok)
            stops = list(self.tok.chat.stops)
        else:
            prompt = ([self.bos] if self.bos is not None else []) + list(self.tok.encode(text))
            stops = [self.bos] if self.bos is not None else []
        prompt = self._fit(prompt or [0])
        out = chat_format.TextStream(self.tok, chat=self.mode == "chat", image_fn=self._save)
        gen: list[int] = []
        it = self.engine.stream([prompt], chunk=self.chunk, seed=self.seed,
                                sample_ids=[self.turn], stop_tokens=stops, **self.sampling)
        self.turn += 1
        for ch in it:
            gen += ch.tokens[0]
            piece = out.push([t for t in ch.tokens[0] if t not in stops])
            if piece:
                yield piece
        tail = out.flush()
        if tail:
            yield tail
        self.last_tokens = gen
        if self.mode == "chat":
            parts = chat_format.parse_reply(gen, self.tok) or [{"type": "text", "text": " "}]
            self.messages.append({"role": "assistant", "content": parts})


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="run directory, or an experiment name (its latest run)")
    p.add_argument("--checkpoint", help="checkpoint directory (its parent holds config.json)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--mode", choices=("auto", "chat", "completion"), default="auto")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top_k", type=int, default=50)
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--system", default=None, help="a system message (chat mode)")
    p.add_argument("--no_tools", action="store_true",
                   help="don't evaluate tool calls (the calculator and search)")
    p.add_argument("--search_corpus", default=None, metavar="PATH",
                   help="passages for the search(\"...\") tool: JSONL ({\"text\": ...}) or one "
                        "per line (default: the synthetic knowledge base)")
    p.add_argument("--prompt", default=None, help="answer this one prompt and exit")
    p.add_argument("--image", default=None, metavar="PNG",
                   help="an image sent with --prompt or the first message (chat mode)")
    p.add_argument("--audio", default=None, metavar="WAV",
                   help="a recording (16 kHz, 16-bit) sent with --prompt or the first message")
    p.add_argument("--save_images", default=".", metavar="DIR",
                   help="where images the model draws are saved (default: here)")
    a = p.parse_args(argv)
    if not (a.run or a.checkpoint):
        p.error("give --run RUN_DIR (or an experiment name) or --checkpoint CHECKPOINT_DIR")

    process.configure_devices(rows=1)          # the engine runs on one device
    try:
        index = search.from_file(a.search_corpus) if a.search_corpus else None
        run = runs.load(a.run or a.checkpoint, step=a.step)
    except (runs.RunError, search.SearchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    mode = pick_mode(a.mode, run.stage, run.tokenizer)
    sess = Session(run.params, run.config, run.tokenizer, mode, temperature=a.temperature,
                   top_k=a.top_k, top_p=a.top_p, max_new_tokens=a.max_new_tokens, seed=a.seed,
                   tools=not a.no_tools, system=a.system, search_index=index,
                   save_images=a.save_images)
    if a.image and a.audio:
        p.error("give --image or --audio, not both")
    # what goes with the next message: ("image" | "audio", path) or None
    pending = [("image", a.image) if a.image else ("audio", a.audio) if a.audio else None]

    def answer(text: str) -> None:
        attach, pending[0] = pending[0], None
        for piece in sess.respond(text, attach):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()

    if a.prompt is not None:
        try:
            answer(a.prompt)
        except ValueError as e:       # text the tokenizer cannot encode, a prompt too long,
            print(f"error: {e}", file=sys.stderr)        # an unusable image
            return 2
        return 0
    print(f"{run.config.name} step {run.step} ({mode} mode; /reset, /image PATH, /audio PATH, /quit)",
          file=sys.stderr)
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
        if cmd.startswith(("/image", "/audio")):
            kind, _, path = cmd[1:].partition(" ")
            pending[0] = (kind, path.strip()) if path.strip() else None
            print(f"({kind} {path.strip()} goes with the next message)" if pending[0] else
                  f"(usage: /{kind} PATH)", file=sys.stderr)
            continue
        if not cmd:
            continue
        try:
            answer(line)
        except KeyboardInterrupt:
            print("\n(interrupted)", file=sys.stderr)
        except ValueError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            sess.forget_last()


if __name__ == "__main__":
    sys.exit(main())
