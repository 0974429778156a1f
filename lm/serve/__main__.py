"""Serve a run over the OpenAI API and a web chat page.

  python -m lm.serve --run runs/chat_tiny_sft/<ts>              # http://127.0.0.1:8000/
  python -m lm.serve --run chat_tiny_sft --port 8080 --api-key sk-local
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "chat_tiny_sft", "messages": [{"role": "user", "content": "Who are you?"}]}'

Binds to 127.0.0.1 unless --host says otherwise. With --api-key every /v1 request needs
`Authorization: Bearer KEY`. A base run (pretrain stage) serves /v1/completions only.
"""
from __future__ import annotations

import argparse
import sys


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
    a = p.parse_args(argv)
    if a.slots < 1 or a.chunk < 1 or a.max_queue < 1:
        p.error("--slots, --chunk and --max-queue must be >= 1")

    from lm import parallel
    parallel.configure_cpu_devices(1)          # the engine runs on one device
    from lm import runs
    try:
        run = runs.load(a.run, step=a.step)
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import uvicorn
    from lm.serve.app import create_app
    app = create_app(run, api_key=a.api_key, slots=a.slots, chunk=a.chunk, max_queue=a.max_queue)
    print(f"serving {run.config.name} ({run.stage}, step {run.step}) on http://{a.host}:{a.port}/",
          file=sys.stderr)
    uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    return 0


if __name__ == "__main__":
    from lm.host import use_fast_allocator
    use_fast_allocator("lm.serve")
    sys.exit(main())
