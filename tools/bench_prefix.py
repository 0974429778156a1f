"""Prefix caching: time to first token of a conversation's second turn, with the server reusing
the keys/values of the earlier turns against a server that prefills every prompt in full.

Starts two servers on the same run (`python -m lm.serve` and `... --no-prefix-cache`). Each
round, on each server in turn (the order alternates): turn 1 (a long system prompt and a
question, greedy), then turn 2 (the whole conversation so far and a new question, streamed),
timing turn 2's first token. Every round uses a different system prompt, so nothing but the
conversation's own earlier turn can be reused. Prints the median TTFT of each, their ratio, the
prompt and cached token counts, and whether both servers gave the same greedy replies.

  python -m tools.bench_prefix --run runs/chat_tiny_sft/<ts> --rounds 5 --json
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_prefix.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import subprocess
import tempfile
import time

import httpx   # requirements-serve.txt

from tools import bench_host
from tools.bench_serve import find_run, start_server, wait_up

TOPICS = ["gardening", "trains", "cooking", "music", "rivers", "chess", "birds", "clocks",
          "bridges", "maps", "tea", "stars"]


def system_prompt(round_: int, words: int) -> str:
    """A long, round-specific system prompt (about `words` words)."""
    rules, i = [], 0
    while sum(len(r.split()) for r in rules) < words:
        topic = TOPICS[(round_ + i) % len(TOPICS)]
        rules.append(f"Rule {i + 1} of round {round_}: when the user asks about {topic}, answer "
                     f"briefly, politely and with one example.")
        i += 1
    return " ".join(rules)


def conversation_round(client, base: str, system: str, max_tokens: int) -> dict:
    """Turn 1, then turn 2 streamed and timed, over `client` (one kept-alive connection per
    server, as API clients keep them: a new connection costs ~20 ms of client set-up here)."""
    msgs = [{"role": "system", "content": system},
            {"role": "user", "content": "What is your name?"}]
    r = client.post(base + "/v1/chat/completions", timeout=120, json={
        "model": "default", "messages": msgs, "max_tokens": max_tokens, "temperature": 0.0})
    if r.status_code != 200:
        raise SystemExit(f"turn 1: HTTP {r.status_code}: {r.text[:300]}")
    first = r.json()["choices"][0]["message"]["content"] or "Hello."
    msgs += [{"role": "assistant", "content": first},
             {"role": "user", "content": "How many r are in strawberry?"}]
    body = {"model": "default", "messages": msgs, "max_tokens": max_tokens, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    ttft, text, usage = None, "", None
    with client.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as s:
        if s.status_code != 200:
            raise SystemExit(f"turn 2: HTTP {s.status_code}: {s.read()[:300]!r}")
        for line in s.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                usage = ev["usage"]
            for c in ev["choices"]:
                piece = c.get("delta", {}).get("content")
                if piece and ttft is None:
                    ttft = time.perf_counter() - t0
                text += piece or ""
    return {"ttft_s": ttft if ttft is not None else time.perf_counter() - t0,
            "replies": [first, text], "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="default: the latest chat_tiny_sft run")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--words", type=int, default=200, help="system prompt length in words")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    run = find_run(a.run, tempfile.mkdtemp(prefix="lm_bench_prefix_"))
    servers = {"cached": start_server(run, ["--slots", "4"]),
               "full": start_server(run, ["--slots", "4", "--no-prefix-cache"])}
    res: dict[str, list[dict]] = {"cached": [], "full": []}
    clients = {name: httpx.Client() for name in servers}
    try:
        for proc, base in servers.values():
            wait_up(proc, base)
        for name, (_, base) in servers.items():          # warm-up: compile every shape once
            conversation_round(clients[name], base, system_prompt(99, a.words), a.max_tokens)
        for r in range(a.rounds):
            order = ["cached", "full"] if r % 2 == 0 else ["full", "cached"]
            for name in order:
                out = conversation_round(clients[name], servers[name][1],
                                         system_prompt(r, a.words), a.max_tokens)
                res[name].append(out)
                log(f"round {r} {name}: ttft {out['ttft_s'] * 1e3:.1f} ms, prompt "
                    f"{out['prompt_tokens']} tokens, cached {out['cached_tokens']}")
    finally:
        for c in clients.values():
            c.close()
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    med = {k: statistics.median(x["ttft_s"] for x in v) for k, v in res.items()}
    out = {"rounds": a.rounds, "run": run,
           "prompt_tokens": statistics.median(x["prompt_tokens"] for x in res["cached"]),
           "cached_tokens": statistics.median(x["cached_tokens"] for x in res["cached"]),
           "ttft_cached_s": med["cached"], "ttft_full_s": med["full"],
           "ttft_ratio": med["full"] / med["cached"],
           "same_replies": all(c["replies"] == f["replies"]
                               for c, f in zip(res["cached"], res["full"])),
           "host_isa": bench_host.host_isa()}
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"  {k:16s} {v:.4f}" if isinstance(v, float) else f"  {k:16s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
