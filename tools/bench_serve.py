"""Load test of `python -m lm.serve`: N concurrent streaming clients against the same requests sent
one at a time, on 127.0.0.1.

It starts the server as a subprocess (`--run DIR`, or the latest `chat_tiny_sft` run, or else a
tiny chat run made on the spot: random weights, so every reply runs to `--max-tokens`), sends
`--clients` streaming chat requests one after another (the sequential figure), then the same
number concurrently (each client sends `--per-client` requests back to back), and prints p50/p95
time to first token, p50/p95 latency, aggregate generated tokens/s for both, and their ratio.
Bounded: each phase stops after `--timeout` seconds.

  python -m tools.bench_serve                       # table
  python -m tools.bench_serve --json                # one JSON object
  python -m tools.bench_serve --run runs/chat_tiny_sft/<ts> --clients 16 --max-tokens 64
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


def find_run(explicit: str | None, scratch: str) -> str:
    if explicit:
        return explicit
    from lm.runs import latest_run
    found = latest_run("chat_tiny_sft", ROOT)
    return found or make_tiny_run(scratch)


def one_request(base: str, question: str, max_tokens: int, seed: int, timeout: float) -> dict:
    import httpx
    body = {"model": "default", "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0.7, "seed": seed, "stream": True,
            "stream_options": {"include_usage": True}}
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
                    if ttft is None and c.get("delta", {}).get("content"):
                        ttft = time.perf_counter() - t0
    except Exception as e:  # noqa: BLE001 - counted as an error of the run
        err = f"{type(e).__name__}: {e}"
    out = {"latency_s": time.perf_counter() - t0, "ttft_s": ttft,
           "tokens": usage["completion_tokens"] if usage else 0}
    if err or usage is None:
        out["error"] = err or "no usage chunk"
    return out


def phase(base: str, clients: int, per_client: int, max_tokens: int, timeout: float,
          concurrent: bool) -> tuple[list[dict], float]:
    results: list[dict] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + timeout

    def client(c: int):
        for j in range(per_client):
            if time.perf_counter() > deadline:
                return
            q = QUESTIONS[(c + j) % len(QUESTIONS)]
            r = one_request(base, q, max_tokens, seed=1000 * c + j, timeout=timeout)
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
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    log = (lambda *x: print(*x, file=sys.stderr)) if a.json else print
    scratch = tempfile.mkdtemp(prefix="lm_bench_serve_")
    run = find_run(a.run, scratch)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "lm.serve", "--run", run, "--port",
                               str(port), "--slots", str(a.slots)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        import httpx
        t0 = time.perf_counter()
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.perf_counter() - t0 > 300:
                raise SystemExit(f"server did not start:\n{server.stderr.read()[-3000:]}")
            time.sleep(0.5)
        log(f"server up ({run}) in {time.perf_counter() - t0:.1f} s")
        one_request(base, QUESTIONS[0], a.max_tokens, 0, a.timeout)      # warm every shape
        seq, seq_wall = phase(base, a.clients, a.per_client, a.max_tokens, a.timeout, False)
        log(f"sequential: {len(seq)} requests in {seq_wall:.1f} s")
        conc, conc_wall = phase(base, a.clients, a.per_client, a.max_tokens, a.timeout, True)
        log(f"concurrent: {len(conc)} requests in {conc_wall:.1f} s")
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
           "run": run, "max_tokens": a.max_tokens, "slots": a.slots}
    if a.json:
        out["host_isa"] = bench_host.host_isa()
        print(json.dumps(out))
        return 0
    print(f"\n{a.clients} concurrent streaming clients × {a.per_client} requests, max_tokens "
          f"{a.max_tokens}, {a.slots} slots ({run})")
    for k in ("requests", "errors", "ttft_p50_s", "ttft_p95_s", "latency_p50_s", "latency_p95_s",
              "tokens_per_s", "sequential_tokens_per_s", "speedup"):
        v = out[k]
        print(f"  {k:26s} {v:.3f}" if isinstance(v, float) else f"  {k:26s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
