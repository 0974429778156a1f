"""Load test of `python -m lm.serve`: N concurrent streaming clients against the same requests sent
one at a time, on 127.0.0.1.

It starts the server as a subprocess (`--run DIR`, or the latest `chat_tiny_sft` run, or else a
tiny chat run made on the spot: random weights, so every reply runs to `--max-tokens`), sends
`--clients` streaming chat requests one after another (the sequential figure), then the same
number concurrently (each client sends `--per-client` requests back to back), and prints p50/p95
time to first token, p50/p95 latency, aggregate generated tokens/s for both, and their ratio.
Bounded: each phase stops after `--timeout` seconds.

`--structured R`: then R rounds of two concurrent phases, alternating, each asking for a person
as JSON: one free, one with `response_format` (a JSON schema, decoded under its grammar). Prints
the median tokens/s of each, their ratio, and the share of replies that parse and validate
against the schema in each (a reply cut by `--max-tokens` counts as invalid).

  python -m tools.bench_serve                       # table
  python -m tools.bench_serve --json                # one JSON object
  python -m tools.bench_serve --run runs/chat_tiny_sft/<ts> --clients 16 --max-tokens 64
  python -m tools.bench_serve --run RUN --structured 3 --n 8 --json   # structured outputs
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, ""):  # run as `python tools/bench_serve.py`: import from the repo root
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import socket
import subprocess
import tempfile
import threading
import time

from tools import bench_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = ["What is your name?", "Emily has 3 apples and buys 4 more. How many apples does she "
             "have?", "How many r are in strawberry?", "Who made you?", "Tell me a short story.",
             "What can you do?", "What is 12 times 7?", "Spell the word kitten."]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 20}},
    "required": ["name", "age", "city"], "additionalProperties": False}
JSON_QUESTIONS = ["Describe a person as JSON with name, age and city.",
                  "Give me a JSON object for a made-up customer: name, age, city.",
                  "Who are you? Answer in JSON (name, age, city).",
                  "Invent a character and write it as JSON."]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_tiny_run(folder: str) -> str:
    """A tiny chat-stage run with random weights (what the benchmark needs is the serving path)."""
    from lm import runs
    from lm.config import Config, DataConfig, ModelConfig
    from lm.tokenizer import train_bpe, trained_specials
    tok = train_bpe([" ".join(QUESTIONS) * 50], 256 + len(trained_specials()) + 200)
    cfg = Config(name="bench_tiny_chat", stage="sft", init_from="(made by tools.bench_serve)",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=4,
                                   n_head=4, n_embd=128),
                 data=DataConfig(tokenizer=os.path.join(folder, "tokenizer.json")))
    return runs.save_run(folder, cfg, tok)


def start_server(run: str, extra: list[str]):
    """`python -m lm.serve --run RUN` on a free port: (process, base URL)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "lm.serve", "--run", run, "--port", str(port),
                             *extra], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def wait_up(proc, base: str) -> float:
    """Seconds until `/health` answers 200 (exits with the server's stderr if it never does)."""
    import httpx   # requirements-serve.txt
    t0 = time.perf_counter()
    while True:
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.perf_counter() - t0 > 300:
            raise SystemExit(f"server did not start:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.5)


def find_run(explicit: str | None, scratch: str) -> str:
    if explicit:
        return explicit
    from lm.runs import latest_run
    found = latest_run("chat_tiny_sft", ROOT)
    return found or make_tiny_run(scratch)


def valid_person(text: str) -> bool:
    import jsonschema   # requirements-serve.txt
    try:
        jsonschema.validate(json.loads(text), PERSON)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def one_request(base: str, question: str, max_tokens: int, seed: int, timeout: float,
                extra: dict | None = None) -> dict:
    import httpx
    body = {"model": "default", "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}, **(extra or {})}
    texts: dict[int, str] = {}
    t0 = time.perf_counter()
    ttft, usage, err = None, None, None
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body,
                          timeout=timeout) as r:
            if r.status_code != 200:
                return {"error": f"HTTP {r.status_code}: {r.read()[:200]!r}"}
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    break
                ev = json.loads(data)
                if "error" in ev:
                    err = ev["error"]["message"]
                    break
                if ev.get("usage"):
                    usage = ev["usage"]
                for c in ev["choices"]:
                    piece = c.get("delta", {}).get("content")
                    if piece:
                        texts[c["index"]] = texts.get(c["index"], "") + piece
                    if ttft is None and piece:
                        ttft = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - counted as an error of the run
        err = f"{type(e).__name__}: {e}"
    out = {"latency_s": time.perf_counter() - t0, "ttft_s": ttft,
           "tokens": usage["completion_tokens"] if usage else 0,
           "texts": [texts.get(i, "") for i in range(int(body.get("n", 1)))]}
    if err or usage is None:
        out["error"] = err or "no usage chunk"
    return out


def phase(base: str, clients: int, per_client: int, max_tokens: int, timeout: float,
          concurrent: bool, questions=QUESTIONS, extra: dict | None = None
          ) -> tuple[list[dict], float]:
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + timeout

    def client(c: int):
        for j in range(per_client):
            if time.perf_counter() > deadline:
                return
            q = questions[(c + j) % len(questions)]
            r = one_request(base, q, max_tokens, seed=1000 * c + j, timeout=timeout, extra=extra)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    if concurrent:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        for c in range(clients):
            client(c)
    return results, time.perf_counter() - t0


def structured_phases(base: str, a, log) -> dict:
    """Free and constrained phases, alternating; medians of tokens/s, validity of every reply."""
    fmt = {"response_format": {"type": "json_schema",
                               "json_schema": {"name": "person", "schema": PERSON}}, "n": a.n}
    tps = {"free": [], "json": []}
    replies = {"free": [], "json": []}
    errors = 0
    for r in range(a.structured):
        for kind, extra in (("free", {"n": a.n}), ("json", fmt)):
            res, wall = phase(base, a.clients, a.per_client, a.max_tokens, a.timeout, True,
                              JSON_QUESTIONS, extra)
            ok = [x for x in res if "error" not in x]
            errors += len(res) - len(ok)
            tps[kind].append(sum(x["tokens"] for x in ok) / wall)
            replies[kind] += [t for x in ok for t in x["texts"]]
            log(f"round {r} {kind}: {len(res)} requests in {wall:.1f} s, "
                f"{tps[kind][-1]:.1f} tokens/s")
    med = {k: sorted(v)[len(v) // 2] for k, v in tps.items()}
    valid = {k: sum(map(valid_person, v)) for k, v in replies.items()}
    return {"structured_tokens_per_s": med["json"], "structured_free_tokens_per_s": med["free"],
            "structured_ratio": med["json"] / med["free"] if med["free"] else float("nan"),
            "structured_replies": len(replies["json"]), "structured_valid": valid["json"],
            "free_replies": len(replies["free"]), "free_valid": valid["free"],
            "structured_errors": errors}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(q * (len(xs) - 1)))))
    return xs[k]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--slots", type=int, default=16)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per phase, at most")
    p.add_argument("--structured", type=int, default=0, metavar="ROUNDS",
                   help="also time free vs response_format (JSON schema) phases, alternating")
    p.add_argument("--n", type=int, default=1, help="choices per request in those phases")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    scratch = tempfile.mkdtemp(prefix="lm_bench_serve_")
    run = find_run(a.run, scratch)
    server, base = start_server(run, ["--slots", str(a.slots)])
    try:
        log(f"server up ({run}) in {wait_up(server, base):.1f} s")
        one_request(base, QUESTIONS[0], a.max_tokens, 0, a.timeout)      # warm every shape
        seq, seq_wall = phase(base, a.clients, a.per_client, a.max_tokens, a.timeout, False)
        log(f"sequential: {len(seq)} requests in {seq_wall:.1f} s")
        conc, conc_wall = phase(base, a.clients, a.per_client, a.max_tokens, a.timeout, True)
        log(f"concurrent: {len(conc)} requests in {conc_wall:.1f} s")
        structured = structured_phases(base, a, log) if a.structured else {}
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    ok = [r for r in conc if "error" not in r]
    seq_ok = [r for r in seq if "error" not in r]
    tps = sum(r["tokens"] for r in ok) / conc_wall
    seq_tps = sum(r["tokens"] for r in seq_ok) / seq_wall
    out = {"clients": a.clients, "requests": len(conc),
           "errors": len(conc) - len(ok) + len(seq) - len(seq_ok),
           "ttft_p50_s": pct([r["ttft_s"] for r in ok if r["ttft_s"] is not None], 0.5),
           "ttft_p95_s": pct([r["ttft_s"] for r in ok if r["ttft_s"] is not None], 0.95),
           "latency_p50_s": pct([r["latency_s"] for r in ok], 0.5),
           "latency_p95_s": pct([r["latency_s"] for r in ok], 0.95),
           "tokens_per_s": tps, "sequential_tokens_per_s": seq_tps,
           "speedup": tps / seq_tps if seq_tps else float("nan"),
           "sequential_ttft_p50_s": pct([r["ttft_s"] for r in seq_ok if r["ttft_s"] is not None],
                                        0.5),
           "run": run, "max_tokens": a.max_tokens, "slots": a.slots, **structured}
    if a.json:
        out["host_isa"] = bench_host.host_isa()
        print(json.dumps(out))
        return 0
    print(f"\n{a.clients} concurrent streaming clients × {a.per_client} requests, max_tokens "
          f"{a.max_tokens}, {a.slots} slots ({run})")
    for k in ("requests", "errors", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s",
              "tokens_per_s", "sequential_tokens_per_s", "speedup") + tuple(structured):
        v = out[k]
        print(f"  {k:26s} {v:.3f}" if isinstance(v, float) else f"  {k:26s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
