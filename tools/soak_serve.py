"""Soak the server: mixed good, bad, oversized, streamed and disconnected requests for a while,
against a real `python -m lm.serve` process on loopback, then report hangs, unexpected 5xx, the
server's memory growth after warm-up, and the latency of the good requests.

  python -m tools.soak_serve --minutes 10 --json                 # a tiny random model
  python -m tools.soak_serve --run runs/chat_tiny_sft/<ts> --minutes 10 --json
  python -m tools.soak_serve --seconds 20 --json                 # the short version (a test)

Keys: requests, by_kind, hangs, server_errors, rss_start_mb (after warm-up), rss_end_mb,
rss_growth, p50_latency_s / p95_latency_s (good non-streamed requests), exit codes of the checks.
Exit status 1 when a request hung, a 5xx came back, or memory grew more than --max-growth.
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/soak_serve.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import random
import socket
import statistics
import subprocess
import tempfile
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("chat", "completion", "stream", "disconnect", "bad_json", "bad_schema", "oversized",
         "too_long", "seed", "n_over_slots", "wrong_host")
EXPECTED = {"chat": (200,), "completion": (200,), "stream": (200,), "disconnect": (200,),
            "bad_json": (400,), "bad_schema": (400,), "oversized": (413,),
            "too_long": (400,), "seed": (200,), "n_over_slots": (400,), "wrong_host": (403,)}


def tiny_run(root: str) -> str:
    """A tiny chat run with random weights (what the tests serve)."""
    from lm import runs
    from lm.config import Config, DataConfig, ModelConfig
    from lm.tokenizer import train_bpe, trained_specials
    tok = train_bpe(["Hello there! What is your name? I am a tiny model. 3 + 4 = 7. " * 40],
                    256 + len(trained_specials()) + 80)
    cfg = Config(name="soak_tiny", stage="sft", init_from="parent",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2,
                                   n_head=2, n_embd=64),
                 data=DataConfig(seq_len=64, batch_size=2))
    return runs.save_run(os.path.join(root, "soak_tiny"), cfg, tok)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def request(client: httpx.Client, url: str, kind: str, rng: random.Random) -> int:
    """One request of `kind`; its HTTP status (a streamed one read to its end or cut off)."""
    chat = {"messages": [{"role": "user", "content": rng.choice(
        ["What is your name?", "What is 3 + 4?", "Hello!", "Tell me about yourself."])}],
        "max_tokens": rng.randint(1, 24), "temperature": rng.choice([0.0, 0.7, 1.0])}
    if kind == "chat":
        return client.post(url + "/v1/chat/completions", json=chat).status_code
    if kind == "completion":
        return client.post(url + "/v1/completions", json={
            "prompt": "Hello there", "max_tokens": rng.randint(1, 24),
            "stop": rng.choice([None, ["e"], ["?", "!"]])}).status_code
    if kind in ("stream", "disconnect"):
        with client.stream("POST", url + "/v1/chat/completions",
                           json={**chat, "stream": True, "max_tokens": 32}) as r:
            for i, _ in enumerate(r.iter_lines()):
                if kind == "disconnect" and i >= 1:
                    break                        # the client goes away mid-stream
            return r.status_code
    if kind == "bad_json":
        return client.post(url + "/v1/chat/completions", content=b'{"messages": [',
                           headers={"Content-Type": "application/json"}).status_code
    if kind == "bad_schema":
        bad = rng.choice([{"messages": "hi"}, {"messages": [], "n": 2},
                          {**chat, "temperature": "hot"}, {**chat, "top_p": 0},
                          {**chat, "max_tokens": -3}, {"prompt": 7}])
        path = "/v1/completions" if "prompt" in bad else "/v1/chat/completions"
        return client.post(url + path, json=bad).status_code
    if kind == "oversized":
        return client.post(url + "/v1/completions", json={
            "prompt": "x" * (2 << 20), "max_tokens": 2}).status_code
    if kind == "too_long":
        return client.post(url + "/v1/completions", json={
            "prompt": "word " * 20_000, "max_tokens": 2}).status_code
    if kind == "seed":
        return client.post(url + "/v1/completions", json={
            "prompt": "Hello", "max_tokens": 4,
            "seed": rng.choice([-1, 2 ** 32, 2 ** 63 - 1, 0])}).status_code
    if kind == "n_over_slots":
        return client.post(url + "/v1/completions", json={
            "prompt": "Hello", "max_tokens": 2, "n": 8}).status_code
    if kind == "wrong_host":
        return client.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 2},
                           headers={"Host": "evil.example"}).status_code
    raise ValueError(kind)


def soak(url: str, pid: int, seconds: float, workers: int, timeout: float, warmup_s: float,
         seed: int = 0) -> dict:
    lock = threading.Lock()
    out = {"requests": 0, "by_kind": {k: 0 for k in KINDS}, "hangs": 0, "server_errors": 0,
           "unexpected": [], "latency_s": []}
    stop_at = time.time() + seconds
    rss = {"start": None}

    def worker(i: int):
        rng = random.Random(seed * 1000 + i)
        with httpx.Client(timeout=timeout) as client:
            while time.time() < stop_at:
                kind = rng.choice(KINDS)
                t0 = time.time()
                try:
                    status = request(client, url, kind, rng)
                except httpx.TimeoutException:
                    status = "hang"
                except httpx.HTTPError as e:
                    status = f"error: {type(e).__name__}"
                took = time.time() - t0
                with lock:
                    out["requests"] += 1
                    out["by_kind"][kind] += 1
                    if status == "hang":
                        out["hangs"] += 1
                    elif isinstance(status, int) and status >= 500:
                        out["server_errors"] += 1
                    if status not in EXPECTED[kind] and len(out["unexpected"]) < 20:
                        out["unexpected"].append({"kind": kind, "status": status})
                    if kind in ("chat", "completion", "seed") and status == 200:
                        out["latency_s"].append(took)
                    if rss["start"] is None and time.time() >= t_warm:
                        rss["start"] = rss_mb(pid)
    t_warm = time.time() + warmup_s
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(out.pop("latency_s"))
    end = rss_mb(pid)
    start = rss["start"] or end
    out.update(rss_start_mb=round(start, 1), rss_end_mb=round(end, 1),
               rss_growth=round(end / start - 1, 4) if start else None,
               p50_latency_s=round(statistics.median(lat), 4) if lat else None,
               p95_latency_s=round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 4) if lat
               else None, good_requests=len(lat))
    with httpx.Client(timeout=10) as c:
        h = c.get(url + "/health")
        out["health_after"] = h.json().get("status") if h.status_code == 200 else h.status_code
    return out


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run to serve (default: a tiny random model)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--minutes", type=float, default=None)
    g.add_argument("--seconds", type=float, default=None)
    p.add_argument("--workers", type=int, default=8, help="concurrent clients")
    p.add_argument("--slots", type=int, default=4)
    p.add_argument("--timeout", type=float, default=60.0, help="a request slower than this hung")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds before the start RSS is read (default: 10%% of the run)")
    p.add_argument("--max-growth", type=float, default=0.10)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    seconds = a.seconds if a.seconds is not None else 60 * (a.minutes or 10)
    if seconds <= 0 or a.workers < 1:
        p.error("--minutes/--seconds and --workers must be positive")
    work = tempfile.mkdtemp(prefix="lm_soak_")
    run = a.run or tiny_run(work)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    server = subprocess.Popen([sys.executable, "-m", "lm.serve", "--run", run, "--host",
                               "127.0.0.1", "--port", str(port), "--slots", str(a.slots),
                               "--max-body-bytes", str(1 << 20)], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > 300:
                raise SystemExit("the server did not start within 300 s")
            time.sleep(0.3)
        warm = a.warmup if a.warmup is not None else 0.1 * seconds
        result = soak(url, server.pid, seconds, a.workers, a.timeout, warm)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
    result.update(seconds=seconds, workers=a.workers, run=run, server_exit=server.returncode)
    ok = (result["hangs"] == 0 and result["server_errors"] == 0 and not result["unexpected"]
          and result["health_after"] == "ok"
          and (result["rss_growth"] or 0) <= a.max_growth)
    result["ok"] = ok
    if a.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:16s} {v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
