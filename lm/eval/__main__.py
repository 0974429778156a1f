"""Evaluate a run: base models by likelihood (lm-eval's way), chat models through the engine,
and bits per byte on held-out text. Writes JSON and prints a table.

  python -m lm.eval --run runs/chat_tiny_base/<ts>                   # the stage's default tasks
  python -m lm.eval --run chat_tiny_sft --tasks identity,gsm8k --limit 100
  python -m lm.eval --run DIR --tasks hellaswag,arc_easy,arc_challenge,mmlu,mmlu_5shot,bpb
  python -m lm.eval --hf path/to/gpt2 --tasks hellaswag --limit 500   # a Hugging Face model

Task names: likelihood benchmarks (hellaswag, arc_easy, arc_challenge, mmlu, mmlu_5shot), chat
tasks (identity, arithmetic_easy, arithmetic, arithmetic_hard, spelling, gsm8k, and mmlu /
arc_easy / arc_challenge / hellaswag graded by letter logits), `bpb` (all held-out texts) or
`bpb:<text>`. For runs of the sft/grpo stages the shared names mean the chat version; prefix
`lm:` or `chat:` to choose (e.g. `lm:hellaswag`). Output: `<run>/eval.json` (or `--out`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from lm import process, runs, stages
from lm.data.sources import DataUnavailableError
from lm.eval import suite
from lm.interop import hf
from lm.tasks import TaskDataError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.eval", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run dir, checkpoint dir, or experiment name")
    src.add_argument("--hf", help="a Hugging Face GPT2LMHeadModel / LlamaForCausalLM folder")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma list (default: by the run's stage)")
    p.add_argument("--limit", type=int, default=0, help="items per task (0: all)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--out", default=None, help="JSON output path (default <run>/eval.json)")
    p.add_argument("--no_progress", action="store_true")
    a = p.parse_args(argv)

    process.configure_devices(rows=a.batch_size)
    try:
        run = hf.load_as_run(a.hf) if a.hf else runs.load(a.run, step=a.step)
        chat = stages.is_chat(run.stage)
        names = [n for n in (a.tasks or suite.default_tasks(chat)).split(",") if n]
        todo = suite.plan(names, chat)
        result = suite.evaluate(run, todo, limit=a.limit, batch_size=a.batch_size,
                                progress=not a.no_progress)
    except (runs.RunError, ValueError, TaskDataError, DataUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or os.path.join(run.run_dir, "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(suite.table(result))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
