"""Serve a run over the OpenAI API and a web chat page.

  python -m lm.serve --run runs/chat_tiny_sft/<ts>              # http://127.0.0.1:8000/
  python -m lm.serve --run chat_tiny_sft --port 8080 --api-key sk-local
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "chat_tiny_sft", "messages": [{"role": "user", "content": "Who are you?"}]}'

Binds to 127.0.0.1 unless --host says otherwise. With --api-key every /v1 request needs
`Authorization: Bearer KEY`. Requests must name this host (or a loopback name, or one given
with --allow-host) and, from a browser, come from the server's own page or an --allow-origin.
A base run (pretrain stage) serves /v1/completions only.
"""
from __future__ import annotations

import argparse
import sys

import uvicorn

from lm import process, runs, search
from lm.serve.app import MAX_BODY_BYTES, create_app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.serve", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run dir, checkpoint dir, or experiment name")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None)
    p.add_argument("--slots", type=int, default=16, help="rows in the decode batch")
    p.add_argument("--chunk", type=int, default=8, help="decode steps between scheduling")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--no-prefix-cache", action="store_true",
                   help="prefill every prompt in full (default: reuse the keys/values of a "
                        "prompt's start that a free slot still holds)")
    p.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help="larger request bodies get a 413")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another host name requests may use (repeatable)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="a web origin (e.g. http://localhost:3000) whose pages may call the API "
                        "(repeatable)")
    p.add_argument("--search-corpus", default=None, metavar="PATH",
                   help="passages for the model's search(\"...\") tool: JSONL ({\"text\": ...}) "
                        "or one per line (default: the synthetic knowledge base)")
    a = p.parse_args(argv)
    if min(a.slots, a.chunk, a.max_queue, a.max_body_bytes) < 1:
        p.error("--slots, --chunk, --max-queue and --max-body-bytes must be >= 1")
    if not 0 < a.port < 65536:
        p.error(f"--port {a.port} is not a TCP port")

    process.configure_devices(rows=1)          # the engine runs on one device
    try:
        index = search.from_file(a.search_corpus) if a.search_corpus else None
        run = runs.load(a.run, step=a.step)
    except (runs.RunError, search.SearchError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(run, api_key=a.api_key, slots=a.slots, chunk=a.chunk,
                     max_queue=a.max_queue, host=a.host, allowed_hosts=a.allow_host,
                     allowed_origins=a.allow_origin, max_body_bytes=a.max_body_bytes,
                     prefix_cache=not a.no_prefix_cache, search=index)
    print(f"serving {run.config.name} ({run.stage}, step {run.step}) on http://{a.host}:{a.port}/",
          file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
