"""Chat-model evaluation: the task library's graders through the sampling engine.

Generative tasks (GSM8K, arithmetic, spelling, identity): each held-out conversation's prompt
(`render_for_completion`) is answered greedily with tools on, the reply is parsed and graded by
the task; a reply keeps the chat format when it ends with `<|assistant_end|>` within its budget.
Categorical tasks (MMLU, ARC, HellaSwag): the argmax over the answer letters' logits at the
assistant's first position (nanochat's categorical eval).

Keys of the result: `eval/<task>` (accuracy in [0, 1]), `eval/format` (over every generative
reply), `eval/chatcore` (mean over tasks of (acc - baseline) / (1 - baseline)), and per task the
number of items (`eval/<task>_n`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from lm import conversation as chat
from lm import tasks as task_lib
from lm.eval.likelihood import last_logits
from lm.sampling import Engine
from lm.tasks import test_indices


def generate_replies(engine: Engine, tok, convs: Sequence[dict], *, max_new_tokens: int,
                     batch_size: int, temperature: float = 0.0, seed: int = 0,
                     n: int = 1) -> list[dict]:
    """Per conversation (× n samples): {'tokens', 'forced', 'logprobs', 'parts', 'text',
    'format_ok'}. A prompt that leaves no room in the model's context gets an empty reply
    (graded wrong, format not kept) instead of stopping the evaluation."""
    end, limit = tok.chat.assistant_end, engine.cfg.block_size
    empty = {"tokens": [], "forced": [], "logprobs": [], "parts": [], "text": "",
             "format_ok": False, "too_long": True}
    out: list[dict] = []
    for b in range(0, len(convs), batch_size):
        prompts = [chat.render_for_completion(c, tok) for c in convs[b:b + batch_size]]
        fit = [i for i, p in enumerate(prompts) if len(p) < limit]
        rows: dict[int, dict] = {}
        if fit:
            budget = max(1, min(max_new_tokens, limit - max(len(prompts[i]) for i in fit)))
            g = engine.generate([prompts[i] for i in fit], n=n, max_new_tokens=budget,
                                temperature=temperature, seed=seed,
                                sample_ids=[(b + i) * n + k for i in fit for k in range(n)],
                                stop_tokens=list(tok.chat.stops))
            for j, i in enumerate(fit):
                for k in range(n):
                    r = j * n + k
                    ids = g.row(r)
                    parts = chat.parse_reply(ids, tok)
                    rows[i * n + k] = {
                        "tokens": ids, "forced": g.forced[r, :len(ids)].tolist(),
                        "logprobs": g.logprobs[r, :len(ids)].tolist(), "parts": parts,
                        "text": chat.reply_text(parts),
                        "format_ok": bool(g.stopped[r] and ids and ids[-1] == end)}
        out += [rows.get(r, dict(empty)) for r in range(len(prompts) * n)]
    return out


def categorical_predictions(params, cfg, tok, convs: Sequence[dict], *, batch_size: int
                            ) -> list[str]:
    """The letter with the highest logit at the assistant's first position, per conversation."""
    letters = convs[0]["letters"] if convs else []
    ids = [tok.encode(l) for l in letters]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"answer letters {letters} are not single tokens for this tokenizer")
    prompts = [chat.render_for_completion(c, tok) for c in convs]
    cols = [i[0] for i in ids]
    logits = last_logits(params, cfg, prompts, batch_size=batch_size, columns=cols)
    out = []
    for c, row in zip(convs, logits):
        k = len(c["letters"])
        out.append(c["letters"][int(np.argmax(row[:k]))])
    return out


def evaluate_tasks(params, cfg, tok, names: Sequence[str], *, limit: int, batch_size: int = 64,
                   max_new_tokens: int = 0, samples: int = 0, progress: bool = False,
                   engine: Optional[Engine] = None, lengths: bool = False
                   ) -> tuple[dict, list[dict]]:
    """(metrics, sample conversations) over the held-out split of each named task. `lengths`:
    also the mean reply length in tokens (`eval/<task>_tokens`) of generative tasks."""
    engine = engine or Engine(params, cfg, tokenizer=tok, tools=tok.chat)
    metrics: dict[str, float] = {}
    shown: list[dict] = []
    fmt_ok = fmt_n = 0
    centred = []
    bar = tqdm(total=len(names), disable=not progress, desc="eval", leave=False)
    for name in names:
        task = task_lib.get(name)
        size = task.size("test")
        idx = test_indices(limit if size is None else size, limit)
        convs = [task.example("test", i) for i in idx]
        if not convs:
            continue
        if task.kind == "categorical":
            preds = categorical_predictions(params, cfg, tok, convs, batch_size=batch_size)
            correct = [p == c["gold"] for p, c in zip(preds, convs)]
            replies = [{"text": p, "format_ok": True} for p in preds]
        elif task.kind == "generative":
            budget = max_new_tokens or task.max_new_tokens()
            replies = generate_replies(engine, tok, convs, max_new_tokens=budget,
                                       batch_size=batch_size)
            correct = []
            for c, r in zip(convs, replies):
                try:
                    correct.append(bool(task.evaluate(c, r["text"])))
                except Exception:  # noqa: BLE001 - a grader failure counts as wrong, not fatal
                    correct.append(False)
            fmt_ok += sum(r["format_ok"] for r in replies)
            fmt_n += len(replies)
            if lengths:
                metrics[f"eval/{name}_tokens"] = float(np.mean([len(r["tokens"]) for r in replies]))
        else:
            raise ValueError(f"task {name!r} ({task.kind}) has no grader; evaluate it by loss")
        acc = float(np.mean(correct))
        metrics[f"eval/{name}"] = acc
        metrics[f"eval/{name}_n"] = len(correct)
        if task.baseline < 1:
            centred.append((acc - task.baseline) / (1 - task.baseline))
        for c, r, ok in list(zip(convs, replies, correct))[:samples]:
            shown.append({"task": name, "prompt": c["messages"][-2]["content"]
                          if c["messages"][-1]["role"] == "assistant" else c["messages"][-1]["content"],
                          "reply": r["text"], "correct": ok, "format_ok": r["format_ok"]})
        bar.update(1)
    bar.close()
    if fmt_n:
        metrics["eval/format"] = fmt_ok / fmt_n
    if centred:
        metrics["eval/chatcore"] = float(np.mean(centred))
    return metrics, shown


def pass_at_k(engine: Engine, tok, task, *, limit: int, k: int, temperature: float = 1.0,
              batch_size: int = 64, seed: int = 1) -> float:
    """Fraction of held-out problems with at least one correct reply among k samples."""
    size = task.size("test")
    convs = [task.example("test", i) for i in test_indices(limit if size is None else size, limit)]
    per_call = max(1, batch_size // k)
    solved = []
    for b in range(0, len(convs), per_call):
        group = convs[b:b + per_call]
        replies = generate_replies(engine, tok, group, max_new_tokens=task.max_new_tokens(),
                                   batch_size=len(group), temperature=temperature,
                                   seed=seed + b, n=k)
        for j, c in enumerate(group):
            ok = False
            for r in replies[j * k:(j + 1) * k]:
                try:
                    ok = ok or bool(task.evaluate(c, r["text"]))
                except Exception:  # noqa: BLE001 - a grader failure counts as wrong
                    pass
            solved.append(ok)
    return float(np.mean(solved)) if solved else 0.0
