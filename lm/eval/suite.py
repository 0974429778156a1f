"""Evaluating a run: base models by likelihood (lm-eval's way), chat models through the engine,
and bits per byte on held-out text (the library behind `python -m lm.eval` and `run.evaluate`).

Task names: likelihood benchmarks (hellaswag, arc_easy, arc_challenge, mmlu, mmlu_5shot), chat
tasks (identity, arithmetic_easy, arithmetic, arithmetic_hard, spelling, gsm8k, and mmlu /
arc_easy / arc_challenge / hellaswag graded by letter logits), `bpb` (all held-out texts) or
`bpb:<text>`, and the base-model probes `copy_probe` and `icl` (`lm.eval.probes`). For chat
runs the shared names mean the chat version; prefix `lm:` or `chat:` to choose (e.g.
`lm:hellaswag`).

pass@k (`evaluate_pass_at`): n sampled replies per held-out problem of each generative chat task,
every k estimated from the same samples (`lm.eval.chat.pass_at_ks`).
"""
from __future__ import annotations

import time

import jax

from lm import parallel, tasks
from lm.config import MeshConfig
from lm.eval import benchmarks, bpb, probes
from lm.eval.chat import check_pass_at, correct_counts, evaluate_tasks, pass_at_k_from_counts
from lm.sampling import Engine

BASE_DEFAULT = "hellaswag,arc_easy,arc_challenge,mmlu,bpb"
CHAT_DEFAULT = "identity,arithmetic_easy,spelling,gsm8k,mmlu,arc_easy,arc_challenge,bpb"


def default_tasks(chat: bool) -> str:
    """The tasks `python -m lm.eval` runs without --tasks, for a chat run or a base run."""
    return CHAT_DEFAULT if chat else BASE_DEFAULT


def plan(names: list[str], chat: bool) -> dict[str, list[str]]:
    """Split task names into {'lm': [...], 'chat': [...], 'bpb': [...], 'probe': [...]}; a base run (not a chat
    stage) reads the shared names as likelihood benchmarks."""
    out = {"lm": [], "chat": [], "bpb": [], "probe": []}
    for n in names:
        if n in probes.PROBES:
            out["probe"].append(n)
        elif n == "bpb":
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
        elif n in benchmarks.BENCHMARKS and (not chat or n not in tasks.NAMES):
            out["lm"].append(n)
        elif n in tasks.NAMES:
            if tasks.get(n).kind == "open":
                raise ValueError(f"{n} has no grader (open conversation)")
            out["chat"].append(n)
        else:
            raise ValueError(f"unknown task {n!r}; likelihood: {list(benchmarks.BENCHMARKS)}, "
                             f"chat: {list(tasks.NAMES)}, or bpb[:text]")
    return out


def pass_at_tasks(names: list[str]) -> list[str]:
    """The tasks of `names` for pass@k (a `chat:` prefix allowed); a ValueError for any task that
    is not a generative chat task (pass@k samples and grades replies)."""
    out = []
    for n in names:
        name = n.partition(":")[2] if n.startswith("chat:") else n
        kind = tasks.get(name).kind if name in tasks.NAMES else None
        if kind != "generative":
            what = f"{kind}, not generative" if kind else "not a chat task"
            raise ValueError(f"pass@k: {n!r} is {what}; pass@k grades sampled replies of "
                             f"generative tasks: {generative_tasks()}")
        out.append(name)
    if not out:
        raise ValueError(f"pass@k: no task given; generative tasks: {generative_tasks()}")
    return out


def generative_tasks(names=tasks.NAMES) -> list[str]:
    """The generative chat tasks among `names` (the ones pass@k can sample)."""
    return [n for n in names if n in tasks.NAMES and tasks.get(n).kind == "generative"]


def evaluate_pass_at(run, names: list[str], *, ks, n=None, limit: int = 0, batch_size: int = 64,
                     temperature: float = 1.0, seed: int = 1, progress: bool = True) -> dict:
    """pass@k of each task in `names` (from `pass_at_tasks`) on `run`: a JSON-ready dict with
    `pass_at` {`eval/<task>_pass@<k>`: value} and `counts` {task: correct samples per problem}."""
    n = check_pass_at(ks, n)
    if temperature <= 0:
        raise ValueError(f"pass@k samples at temperature > 0 (got {temperature}: every greedy "
                         f"sample would be the same reply)")
    tok = run.tokenizer
    if tok.chat is None:
        raise ValueError(f"pass@k needs a chat run: {run.run_dir}'s tokenizer has no chat tokens")
    t0 = time.perf_counter()
    engine = Engine(run.params, run.config.model, tokenizer=tok, tools=tok.chat)
    result = {"run_dir": run.run_dir, "step": run.step, "stage": run.stage,
              "experiment": run.config.name, "samples": n, "ks": list(ks),
              "temperature": temperature, "seed": seed, "pass_at": {}, "counts": {}}
    for name in names:
        counts = correct_counts(engine, tok, tasks.get(name), limit=limit, n=n,
                                temperature=temperature, batch_size=batch_size, seed=seed,
                                progress=progress)
        result["counts"][name] = counts
        for k, v in pass_at_k_from_counts(counts, n, ks).items():
            result["pass_at"][f"eval/{name}_pass@{k}"] = v
    result["seconds"] = time.perf_counter() - t0
    return result


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
    for k, v in result.get("probe", {}).items():
        rows.append(f"| {k[6:]} | nats/token | {v:.4f} | |")
    for key, v in result.get("pass_at", {}).items():
        name, _, k = key[5:].rpartition("_pass@")
        problems = len(result.get("counts", {}).get(name, []))
        rows.append(f"| {name} | pass@{k} | {v:.4f} | {problems} × {result.get('samples')} "
                    f"samples |")
    return "\n".join(rows)


def evaluate(run, todo: dict, *, limit: int = 0, batch_size: int = 32,
             progress: bool = True, strict_calls: bool = False,
             max_new_tokens: int | None = None, log_samples: bool = False) -> dict:
    """`todo` (from `plan`) scored on `run` (an `lm.runs.Run`): a JSON-ready dict.
    `strict_calls`: tool-offering items decode under their functions' grammar.
    `max_new_tokens`: the chat replies' budget (None: the run's own `eval.max_new_tokens`, as its
    training evaluated it; 0: each task's own). `log_samples`: every chat item's prompt, reply,
    fields and grades in `chat_samples` (otherwise three a task)."""
    if max_new_tokens is None:
        max_new_tokens = run.config.eval.max_new_tokens
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
                                  limit=limit, batch_size=max(batch_size, 64),
                                  samples=-1 if log_samples else 3, progress=progress,
                                  strict_calls=strict_calls,
                                  max_new_tokens=max_new_tokens)
        result["chat"] = m
        result["chat_samples"] = shown
    if todo["bpb"]:
        result["bpb"] = bpb.run(run.params, run.config.model, run.tokenizer, todo["bpb"],
                                batch_size=batch_size, mesh=mesh)
    if todo.get("probe"):
        result["probe"] = probes.run(run.params, run.config.model, run.tokenizer, todo["probe"])
    result["seconds"] = time.perf_counter() - t0
    return result
