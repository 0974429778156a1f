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
import time

BASE_DEFAULT = "hellaswag,arc_easy,arc_challenge,mmlu,bpb"
CHAT_DEFAULT = "identity,arithmetic_easy,spelling,gsm8k,mmlu,arc_easy,arc_challenge,bpb"


def plan(names: list[str], stage: str) -> dict[str, list[str]]:
    """Split task names into {'lm': [...], 'chat': [...], 'bpb': [...]}."""
    from lm.eval import benchmarks, bpb
    from lm import tasks
    out = {"lm": [], "chat": [], "bpb": []}
    for n in names:
        if n == "bpb":
            out["bpb"] += list(bpb.TEXTS)
        elif n.startswith("bpb:"):
            if n[4:] not in bpb.TEXTS:
                raise ValueError(f"unknown held-out text {n[4:]!r}; known: {list(bpb.TEXTS)}")
            out["bpb"].append(n[4:])
        elif n.startswith("lm:") or n.startswith("chat:"):
            kind, _, name = n.partition(":")
            if (kind == "lm" and name not in benchmarks.BENCHMARKS) or \
                    (kind == "chat" and name not in tasks.NAMES):
                raise ValueError(f"unknown {kind} task {name!r}")
            out[kind].append(name)
        elif n in benchmarks.BENCHMARKS and (stage == "pretrain" or n not in tasks.NAMES):
            out["lm"].append(n)
        elif n in tasks.NAMES:
            if tasks.get(n).kind == "open":
                raise ValueError(f"{n} has no grader (open conversation)")
            out["chat"].append(n)
        else:
            raise ValueError(f"unknown task {n!r}; likelihood: {list(benchmarks.BENCHMARKS)}, "
                             f"chat: {list(tasks.NAMES)}, or bpb[:text]")
    return out


def table(result: dict) -> str:
    rows = ["| task | metric | value | n |", "|---|---|---|---|"]
    for name, r in result.get("likelihood", {}).items():
        rows.append(f"| {name} | acc / acc_norm | {r['acc']:.4f} / {r['acc_norm']:.4f} | "
                    f"{r['items']} |")
    chat = result.get("chat", {})
    for k, v in chat.items():
        if k.endswith("_n") or not k.startswith("eval/"):
            continue
        n = chat.get(k + "_n", "")
        rows.append(f"| {k[5:]} | accuracy | {v:.4f} | {n} |")
    for name, r in result.get("bpb", {}).items():
        if "error" in r:
            rows.append(f"| {name} | bits/byte | n/a ({r['error'][:60]}) | |")
        else:
            rows.append(f"| {name} | bits/byte | {r['bpb']:.4f} | {r['tokens']} tokens |")
    return "\n".join(rows)


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

    from lm import parallel
    parallel.configure_cpu_devices(parallel.auto_cpu_devices(a.batch_size))
    from lm import runs
    from lm.tasks import TaskDataError
    from lm.data.sources import DataUnavailableError
    try:
        if a.hf:
            from lm.interop import hf
            run = hf.load_as_run(a.hf)
        else:
            run = runs.load(a.run, step=a.step)
        names = [n for n in (a.tasks or (BASE_DEFAULT if run.stage == "pretrain"
                                         else CHAT_DEFAULT)).split(",") if n]
        todo = plan(names, run.stage)
        result = evaluate(run, todo, limit=a.limit, batch_size=a.batch_size,
                          progress=not a.no_progress)
    except (runs.RunError, ValueError, TaskDataError, DataUnavailableError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or os.path.join(run.run_dir, "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=2)
    print(table(result))
    print(f"\nwrote {out}")
    return 0


def evaluate(run, todo: dict, *, limit: int = 0, batch_size: int = 32,
             progress: bool = True) -> dict:
    import jax
    from lm import parallel
    from lm.config import MeshConfig
    from lm.eval import benchmarks, bpb
    from lm.eval.chat import evaluate_tasks
    t0 = time.perf_counter()
    # likelihood scoring runs data-parallel over the devices, as training does
    mesh = parallel.make_mesh(MeshConfig()) if len(jax.devices()) > 1 else None
    result = {"run_dir": run.run_dir, "step": run.step, "stage": run.stage,
              "experiment": run.config.name}
    if todo["lm"]:
        res = benchmarks.run(run.params, run.config.model, run.tokenizer, todo["lm"],
                             limit=limit, batch_size=batch_size, progress=progress, mesh=mesh)
        result["likelihood"] = {k: {m: v for m, v in r.items()} for k, r in res.items()}
    if todo["chat"]:
        m, shown = evaluate_tasks(run.params, run.config.model, run.tokenizer, todo["chat"],
                                  limit=limit or 10 ** 9, batch_size=max(batch_size, 64),
                                  samples=3, progress=progress)
        result["chat"] = m
        result["chat_samples"] = shown
    if todo["bpb"]:
        result["bpb"] = bpb.run(run.params, run.config.model, run.tokenizer, todo["bpb"],
                                batch_size=batch_size, mesh=mesh)
    result["seconds"] = time.perf_counter() - t0
    return result


if __name__ == "__main__":
    from lm.host import use_fast_allocator
    use_fast_allocator("lm.eval")
    sys.exit(main())
