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
`lm:` or `chat:` to choose (e.g. `lm:hellaswag`). Output: `<run>/eval.json` (or `--out`); with
`--log_samples` its `chat_samples` hold every chat item (prompt, reply, the item's fields such as
a knowledge question's person, and its grades), for paired comparisons of two runs.

  python -m lm.eval --run grpo_arith_tiny --tasks arithmetic_easy --pass_at 1,2,4,8,16,32,64

`--pass_at K,K,...` samples `--samples` replies per held-out problem (default the largest k, at
`--temperature`, default 1.0) of each generative task in `--tasks` (default: the generative ones
among the stage's defaults) and reports the unbiased pass@k (Chen et al. 2021) for every k from
the same samples, as `eval/<task>_pass@<k>`, instead of the suite. Output: `<run>/pass_at_k.json`
(or `--out`), with each problem's number of correct samples.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from lm import process, runs, stages
from lm.data.sources import DataUnavailableError
from lm.eval import suite
from lm.eval.chat import check_pass_at, parse_ks
from lm.interop import hf
from lm.tasks import TaskDataError


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m lm.eval", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="run dir, checkpoint dir, or experiment name")
    src.add_argument("--hf", help="a Hugging Face GPT2LMHeadModel / LlamaForCausalLM folder")
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--tasks", default=None, help="comma list (default: by the run's stage)")
    p.add_argument("--limit", type=int, default=0, help="items per task (0: all of a fixed split, "
                   "500 of a generated one)")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_new_tokens", type=int, default=None,
                   help="chat reply budget in tokens (default: the run's eval.max_new_tokens; "
                        "0: each task's own, which is sized for the chain's BPE)")
    p.add_argument("--out", default=None, help="JSON output path (default <run>/eval.json; with --pass_at, "
                   "<run>/pass_at_k.json)")
    p.add_argument("--no_progress", action="store_true")
    p.add_argument("--log_samples", action="store_true",
                   help="every chat item's prompt, reply, fields and grades in the output's "
                        "chat_samples (default: three a task)")
    p.add_argument("--strict_calls", action="store_true",
                   help="items that offer tools are answered under the functions' grammar "
                        "(valid calls of offered functions only; needs llguidance)")
    p.add_argument("--pass_at", default=None, metavar="K,K,...",
                   help="pass@k of the generative tasks for these k (e.g. 1,2,4,8,16,32,64)")
    p.add_argument("--samples", type=int, default=None,
                   help="with --pass_at: replies sampled per problem (default: the largest k)")
    p.add_argument("--temperature", type=float, default=None,
                   help="with --pass_at: sampling temperature (default 1.0)")
    p.add_argument("--seed", type=int, default=1, help="with --pass_at: sampling seed")
    a = p.parse_args(argv)

    try:
        check_pass_at_args(a)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    process.configure_devices(rows=a.batch_size)
    try:
        run = hf.load_as_run(a.hf) if a.hf else runs.load(a.run, step=a.step)
        if a.pass_at is not None:
            result = suite.evaluate_pass_at(run, a.pass_at_tasks, ks=a.ks, n=a.samples,
                                            limit=a.limit, batch_size=max(a.batch_size, 64),
                                            temperature=a.temperature, seed=a.seed,
                                            progress=not a.no_progress)
        else:
            chat = stages.is_chat(run.stage)
            names = [n for n in (a.tasks or suite.default_tasks(chat)).split(",") if n]
            todo = suite.plan(names, chat)
            result = suite.evaluate(run, todo, limit=a.limit, batch_size=a.batch_size,
                                    progress=not a.no_progress, strict_calls=a.strict_calls,
                                    max_new_tokens=a.max_new_tokens,
                                    log_samples=a.log_samples)
    except (runs.RunError, ValueError, TaskDataError, DataUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    default = "eval.json" if a.pass_at is None else "pass_at_k.json"
    out = a.out or os.path.join(run.run_dir, default)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(suite.table(result))
    print(f"\nwrote {out}")
    return 0


def check_pass_at_args(a: argparse.Namespace) -> None:
    """--pass_at and its options checked before a run is loaded (a ValueError saying what is
    wrong): ks >= 1, samples >= the largest k, temperature > 0, generative tasks only."""
    if a.pass_at is not None and a.log_samples:
        raise ValueError("--log_samples goes with the suite; --pass_at writes each problem's "
                         "number of correct samples already")
    if a.pass_at is None:
        if a.samples is not None or a.temperature is not None:
            raise ValueError("--samples and --temperature go with --pass_at (the suite's replies "
                             "are greedy)")
        return
    a.ks = parse_ks(a.pass_at)
    try:
        a.samples = check_pass_at(a.ks, a.samples)
    except ValueError as e:
        raise ValueError(f"--samples {a.samples}: {e}") from None
    a.temperature = 1.0 if a.temperature is None else a.temperature
    if a.temperature <= 0:
        raise ValueError(f"--temperature {a.temperature:g}: pass@k samples at a temperature "
                         f"> 0 (at 0 every sample is the same greedy reply)")
    names = [n for n in a.tasks.split(",") if n] if a.tasks is not None else \
        suite.generative_tasks(suite.default_tasks(chat=True).split(","))
    a.pass_at_tasks = suite.pass_at_tasks(names)


if __name__ == "__main__":
    sys.exit(main())
