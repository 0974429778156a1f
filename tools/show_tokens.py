"""See how a tokenizer cuts text: tokens as alternating coloured spans, their ids, and the count.

    python -m tools.show_tokens "Hello world! 😀 <|assistant_start|>"
    python -m tools.show_tokens --tokenizer T.json --conversation conv.json   # the SFT loss mask
    python -m tools.show_tokens --tokenizer T.json --task arithmetic_easy      # a task's example
    python -m tools.show_tokens --tokenizer runs/tokenizers/shakespeare_train_bpe2048.json --file x.txt
    echo "some text" | python -m tools.show_tokens --html tokens.html

--tokenizer takes "gpt2" (default), a saved artifact (path or name under runs/tokenizers), or a
folder with GPT-2's encoder.json + vocab.bpe. Text that spells a special token stays ordinary text
unless --allow-special is given, exactly as in `BPETokenizer.encode`.
A token that ends inside a UTF-8 character shows its loose bytes as \\xNN.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/show_tokens.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import html

# Background colours that keep black text readable, cycled per token (as Tiktokenizer does).
ANSI_BG = ("48;5;153", "48;5;222", "48;5;157", "48;5;217", "48;5;189", "48;5;229")
HTML_BG = ("#b3d7ff", "#ffd699", "#b3f0c2", "#ffb3b3", "#d9ccff", "#fff3a3")
SPECIAL_STYLE = "1;37;45"


def token_pieces(tok, ids: list[int]) -> list[tuple[int, str, bool]]:
    """(id, printable text, is_special) per token; loose UTF-8 bytes become \\xNN."""
    out = []
    is_special = getattr(tok, "is_special", lambda i: False)
    for i in ids:
        if hasattr(tok, "id_to_bytes"):
            text = tok.id_to_bytes(i).decode("utf-8", errors="backslashreplace")
        else:
            text = tok.decode([i])
        out.append((i, text, bool(is_special(i))))
    return out


def _visible(text: str) -> str:
    return text.replace("\t", "→\t").replace("\r", "␍").replace("\n", "↵\n")


def render_terminal(pieces, color: bool = True) -> str:
    if not color:
        return "│".join(_visible(t) for _, t, _ in pieces)
    parts = []
    for k, (_, text, special) in enumerate(pieces):
        style = SPECIAL_STYLE if special else f"30;{ANSI_BG[k % len(ANSI_BG)]}"
        # Colour each line separately so the background never bleeds across a newline.
        parts.append("\n".join(f"\x1b[{style}m{line}\x1b[0m" if line else ""
                               for line in _visible(text).split("\n")))
    return "".join(parts)


def render_html(pieces, source_text: str, tokenizer_name: str) -> str:
    spans = []
    for k, (i, text, special) in enumerate(pieces):
        cls = "s" if special else f"c{k % len(HTML_BG)}"
        spans.append(f'<span class="t {cls}" title="id {i}">{html.escape(_visible(text))}</span>')
    css = "".join(f".c{k}{{background:{c}}}" for k, c in enumerate(HTML_BG))
    nbytes = len(source_text.encode("utf-8"))
    ratio = f"{nbytes / len(pieces):.2f} bytes/token" if pieces else "no tokens"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Tokens: {html.escape(tokenizer_name)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:60em}}
.tokens{{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.8;font-size:15px}}
.t{{border-radius:3px;padding:1px 0}} .s{{background:#8e3ba8;color:#fff;font-weight:bold}} {css}
.ids{{font-family:ui-monospace,monospace;color:#444;word-break:break-all}}
</style></head><body>
<h2>{len(pieces)} tokens <small>({html.escape(tokenizer_name)}, {nbytes} bytes, {ratio})</small></h2>
<div class="tokens">{"".join(spans)}</div>
<h3>ids</h3><p class="ids">{", ".join(str(i) for i, _, _ in pieces)}</p>
</body></html>
"""


MASK_STYLE = {1: "30;48;5;120", 0: "37;48;5;240"}      # trained: green, not trained: grey


def render_masked(pieces, mask, color: bool = True) -> str:
    """Tokens coloured by the SFT loss mask: green where the model is trained, grey elsewhere
    (without colours: trained tokens in [brackets])."""
    out = []
    for (_, text, _), m in zip(pieces, mask):
        vis = _visible(text)
        if not color:
            out.append(f"[{vis}]" if m else vis)
        else:
            out.append("\n".join(f"\x1b[{MASK_STYLE[int(m)]}m{line}\x1b[0m" if line else ""
                                 for line in vis.split("\n")))
    return "".join(out)


def show_conversation(tok, conv: dict, color: bool) -> int:
    from lm import conversation as chat
    try:
        ids, mask = chat.render(conv, tok)
    except chat.ConversationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(render_masked(token_pieces(tok, ids), mask, color))
    print(f"{len(ids)} tokens, {sum(mask)} trained (mask 1"
          f"{': green' if color else ': [bracketed]'}), {len(ids) - sum(mask)} not trained")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Show how a tokenizer splits text (the Tiktokenizer view, in a terminal).")
    ap.add_argument("text", nargs="*", help="text to tokenize (default: --file, else standard input)")
    ap.add_argument("--file", help="read the text from this file")
    ap.add_argument("--tokenizer", default="gpt2",
                    help="'gpt2' (default), a saved tokenizer (path or name), or a GPT-2 folder")
    ap.add_argument("--allow-special", action="store_true",
                    help="let text like <|assistant_start|> become special tokens (default: no)")
    ap.add_argument("--html", metavar="OUT", help="also write the coloured tokens as an HTML page")
    ap.add_argument("--no-color", action="store_true",
                    help="separate tokens with │ instead of colours (default when not a terminal)")
    ap.add_argument("--no-ids", action="store_true", help="don't print the list of ids")
    ap.add_argument("--conversation", metavar="JSON",
                    help="render a conversation file (lm.conversation schema) with its loss mask")
    ap.add_argument("--task", help="render a task's training example with its loss mask")
    ap.add_argument("--index", type=int, default=0, help="which example of --task")
    args = ap.parse_args(argv)

    if args.conversation or args.task:
        from lm.tokenizer import load_tokenizer
        try:
            tok = load_tokenizer(args.tokenizer)
        except Exception as e:  # noqa: BLE001
            print(f"error: cannot load tokenizer {args.tokenizer!r}: {e}", file=sys.stderr)
            return 2
        color = not args.no_color and sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
        if args.conversation:
            import json
            try:
                with open(args.conversation, encoding="utf-8") as f:
                    conv = json.load(f)
            except (OSError, ValueError) as e:
                print(f"error: cannot read {args.conversation}: {e}", file=sys.stderr)
                return 2
        else:
            from lm import tasks
            try:
                conv = tasks.get(args.task).example("train", args.index)
            except (KeyError, tasks.TaskDataError) as e:
                print(f"error: {e}", file=sys.stderr)
                return 2
        return show_conversation(tok, conv, color)

    if args.text:
        text = " ".join(args.text)
    elif args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            print(f"error: cannot read {args.file}: {e}", file=sys.stderr)
            return 2
    elif not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        ap.error("give some text, --file PATH, or pipe text in")

    from lm.tokenizer import BPETokenizer, load_tokenizer
    if args.tokenizer == "gpt2" and not os.path.exists("gpt2"):
        from tools.train_tokenizer import default_data_dir
        folder = os.path.join(default_data_dir(), "gpt2_tokenizer")
        source = folder if os.path.isdir(folder) else "gpt2"
    else:
        source = args.tokenizer
    try:
        tok = load_tokenizer(source)
    except Exception as e:  # missing file, no network for the GPT-2 download, bad artifact
        print(f"error: cannot load tokenizer {args.tokenizer!r}: {e}", file=sys.stderr)
        return 2
    try:
        if args.allow_special and isinstance(tok, BPETokenizer):
            ids = tok.encode(text, allowed_special="all")
        else:
            ids = tok.encode(text)
    except ValueError as e:  # e.g. a character the char-level tokenizer doesn't know
        print(f"error: {e}", file=sys.stderr)
        return 2

    pieces = token_pieces(tok, ids)
    color = not args.no_color and sys.stdout.isatty() and os.environ.get("NO_COLOR") is None
    print(render_terminal(pieces, color=color))
    if not args.no_ids:
        print(f"ids: {ids}")
    nbytes = len(text.encode("utf-8"))
    name = getattr(tok, "name", type(tok).__name__)
    per = f", {nbytes / len(ids):.2f} bytes/token" if ids else ""
    print(f"{len(ids)} tokens ({name}, vocab {tok.vocab_size}), {len(text)} characters, "
          f"{nbytes} bytes{per}")
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(render_html(pieces, text, name))
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
