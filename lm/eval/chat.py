"""Chat-model evaluation: the task library's graders through the sampling engine.

Generative tasks (GSM8K, arithmetic, spelling, identity): each held-out conversation's prompt
(`render_for_completion`) is answered greedily with tools on, the reply is parsed and graded by
the task; a reply keeps the chat format when it ends with `<|assistant_end|>` within its budget.
Categorical tasks (MMLU, ARC, HellaSwag): the argmax over the answer letters' logits at the
assistant's first position (nanochat's categorical eval).

Keys of the result: `eval/<task>` (accuracy in [0, 1]), `eval/format` (over every generative
reply), `eval/chatcore` (mean over tasks of (acc - baseline) / (1 - baseline)), and per task the
number of items (`eval/<task>_n`).

pass@k (Chen et al. 2021): n replies sampled per held-out problem (temperature 1 by default),
c of them graded correct, and every k <= n estimated from the same samples without bias as
1 - C(n-c, k) / C(n, k), averaged over problems (`pass_at_ks`, `correct_counts`).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from lm import conversation as chat
from lm import tasks as task_lib
from lm.eval import reading
from lm.eval.likelihood import last_logits
from lm.sampling import Engine
from lm.tasks import test_indices
from lm.tasks.base import shows_work

PASS_KS = (1, 2, 4, 8, 16, 32, 64)      # pass@k's default ks (powers of two, for log2 k plots)


def generate_replies(engine: Engine, tok, convs: Sequence[dict], *, max_new_tokens: int,
                     batch_size: int, temperature: float = 0.0, seed: int = 0,
                     n: int = 1, first: int = 0, strict_calls: bool = False) -> list[dict]:
    """Per conversation (× n samples): {'tokens', 'forced', 'logprobs', 'parts', 'text',
    'format_ok'}. A prompt that leaves no room in the model's context gets an empty reply
    (graded wrong, format not kept) instead of stopping the evaluation. Sample j of
    conversation i has PRNG key (seed, (first + i)·n + j), whatever `batch_size`; `first` is
    convs[0]'s index when a caller splits one evaluation into several calls. `strict_calls`:
    a conversation that offers tools is answered under their grammar (`lm.structured`: text,
    or calls of offered functions with valid arguments), as a server does for strict tools."""
    end, limit = tok.chat.assistant_end, engine.cfg.block_size
    empty = {"tokens": [], "forced": [], "logprobs": [], "parts": [], "text": "",
             "format_ok": False, "too_long": True}
    out: list[dict] = []
    for b in range(0, len(convs), batch_size):
        prompts = [chat.render_for_completion(c, tok) for c in convs[b:b + batch_size]]
        fit = [i for i, p in enumerate(prompts) if len(p) < limit]
        rows: dict[int, dict] = {}
        if fit:           # each row's own room: a long prompt does not cut the others' replies
            budget = [max(1, min(max_new_tokens, limit - len(prompts[i]))) for i in fit]
            fmt = [{"type": "tools", "tools": convs[b + i]["tools"]}
                   if strict_calls and convs[b + i].get("tools") else None for i in fit]
            kw = {"response_format": fmt} if any(fmt) else {}
            g = engine.generate([prompts[i] for i in fit], n=n, max_new_tokens=budget, **kw,
                                temperature=temperature, seed=seed,
                                sample_ids=[(first + b + i) * n + k
                                            for i in fit for k in range(n)],
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


# a generated task's held-out items when no limit is given: its test split is infinite, and
# "all of it" once meant a billion conversations in memory
GENERATED_ITEMS = 500


def held_out_indices(task, limit: int) -> list[int]:
    """The held-out items to evaluate: `limit` of them spread over a fixed split (all when
    `limit` is 0 or more than the split holds); of a generated task's infinite split the first
    `limit`, or `GENERATED_ITEMS` when `limit` is 0."""
    size = task.size("test")
    if size is None:
        return list(range(limit or GENERATED_ITEMS))
    return test_indices(size, limit or size)


def asked(conv: dict) -> str:
    """The last user turn of a held-out conversation, as text (what the reply answers)."""
    msg = conv["messages"][-2 if conv["messages"][-1]["role"] == "assistant" else -1]
    return chat.reply_text(chat.parts_of(msg["content"]))


def _graded(task, conv: dict, text: str) -> bool:
    """The task's grade of one reply; a grader that raises counts as wrong (one odd reply must
    not stop an evaluation)."""
    try:
        return bool(task.evaluate(conv, text))
    except Exception:  # noqa: BLE001 - a grader failure counts as wrong, not fatal
        return False


def item_fields(conv: dict) -> dict:
    """What identifies a held-out item beside its messages (e.g. a knowledge question's person
    and attribute): the conversation's plain-valued fields."""
    return {k: v for k, v in conv.items()
            if k != "messages" and (v is None or isinstance(v, (str, int, float, bool)))}


def evaluate_tasks(params, cfg, tok, names: Sequence[str], *, limit: int, batch_size: int = 64,
                   max_new_tokens: int = 0, samples: int = 0, progress: bool = False,
                   engine: Optional[Engine] = None, lengths: bool = False,
                   strict_calls: bool = False,
                   score: Optional[Callable] = None) -> tuple[dict, list[dict]]:
    """(metrics, sample conversations) over the held-out split of each named task (`samples` of
    them a task; all when negative, each with its item's fields and grades). `lengths`:
    also the mean reply length in tokens (`eval/<task>_tokens`) of generative tasks and the share
    of replies that show their working (`eval/<task>_worked`, lm.tasks.base.shows_work) and,
    where replies compute, the share of their operands taken from the problem, an earlier step or
    a unit rather than made up (`eval/<task>_read`, lm.eval.reading).
    `score(task, convs, replies) -> {name: [value per reply]}` (e.g. `lm.rl.rewards.
    HeldOutRewards`): its means per task (`eval/<task>_reward/<name>`) and over all generative
    replies (`eval/reward/<name>`)."""
    engine = engine or Engine(params, cfg, tokenizer=tok, tools=tok.chat)
    metrics: dict[str, float] = {}
    shown: list[dict] = []
    fmt_ok = fmt_n = 0
    centred = []
    scored: dict[str, list] = {}
    bar = tqdm(total=len(names), disable=not progress, desc="eval", leave=False)
    for name in names:
        task = task_lib.get(name)
        convs = [task.example("test", i) for i in held_out_indices(task, limit)]
        if not convs:
            continue
        if task.kind == "categorical":
            preds = categorical_predictions(params, cfg, tok, convs, batch_size=batch_size)
            correct = [p == c["gold"] for p, c in zip(preds, convs)]
            replies = [{"text": p, "format_ok": True} for p in preds]
        elif task.kind == "generative":
            budget = max_new_tokens or task.max_new_tokens()
            replies = generate_replies(engine, tok, convs, max_new_tokens=budget,
                                       batch_size=batch_size, strict_calls=strict_calls)
            correct = [_graded(task, c, r["text"]) for c, r in zip(convs, replies)]
            fmt_ok += sum(r["format_ok"] for r in replies)
            fmt_n += len(replies)
            if lengths:
                metrics[f"eval/{name}_tokens"] = float(np.mean([len(r["tokens"]) for r in replies]))
                metrics[f"eval/{name}_worked"] = float(np.mean([shows_work(r["text"])
                                                                for r in replies]))
                read = reading.summary((asked(c), r["text"], ok)
                                       for c, r, ok in zip(convs, replies, correct))["read"]
                if read is not None:
                    metrics[f"eval/{name}_read"] = read
            if score is not None:
                for k, v in score(task, convs, replies).items():
                    metrics[f"eval/{name}_reward/{k}"] = float(np.mean(v))
                    scored.setdefault(k, []).extend(v)
                    for r, x in zip(replies, v):
                        r.setdefault("rewards", {})[k] = float(x)
        else:
            raise ValueError(f"task {name!r} ({task.kind}) has no grader; evaluate it by loss")
        acc = float(np.mean(correct))
        metrics[f"eval/{name}"] = acc
        graded = [{} for _ in convs]
        if hasattr(task, "grades") and task.kind == "generative":   # the parts of a grade
            graded = [task.grades(c, r["text"]) for c, r in zip(convs, replies)]
            parts: dict[str, list] = {}
            for g in graded:
                for k, v in g.items():
                    parts.setdefault(k, []).append(v)
            for k, v in parts.items():
                metrics[f"eval/{name}_{k}"] = float(np.mean(v))
        metrics[f"eval/{name}_n"] = len(correct)
        if task.baseline < 1:
            centred.append((acc - task.baseline) / (1 - task.baseline))
        every = list(zip(convs, replies, correct, graded))
        for c, r, ok, g in every[:samples] if samples >= 0 else every:
            shown.append({"task": name, "prompt": asked(c),
                          "reply": r["text"], "correct": ok, "format_ok": r["format_ok"],
                          **({"rewards": r["rewards"]} if "rewards" in r else {}),
                          **({"item": item_fields(c), "grades": {k: bool(v) for k, v in g.items()}}
                             if samples < 0 else {})})
        bar.update(1)
    bar.close()
    if fmt_n:
        metrics["eval/format"] = fmt_ok / fmt_n
    if centred:
        metrics["eval/chatcore"] = float(np.mean(centred))
    for k, v in scored.items():
        metrics[f"eval/reward/{k}"] = float(np.mean(v))
        metrics[f"eval/reward/{k}_n"] = len(v)
        metrics[f"eval/reward/{k}_se"] = float(np.std(v, ddof=1) / np.sqrt(len(v))) \
            if len(v) > 1 else 0.0
    return metrics, shown


def pass_at_k_estimate(n: int, c: int, k: int) -> float:
    """Chen et al. (2021)'s unbiased pass@k of one problem from n samples with c correct:
    1 - C(n-c, k) / C(n, k), as the product 1 - prod_{i=n-c+1..n} (1 - k/i) (no huge binomials)."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples (n={n})")
    if not 0 <= c <= n:
        raise ValueError(f"{c} correct out of {n} samples")
    if n - c < k:                    # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_from_counts(counts: Sequence[int], n: int, ks: Sequence[int]) -> dict[int, float]:
    """{k: mean over problems of the unbiased pass@k}, from each problem's count of correct
    samples out of n (0.0 for no problems)."""
    return {k: float(np.mean([pass_at_k_estimate(n, int(c), k) for c in counts]))
            if len(counts) else 0.0 for k in ks}


def parse_ks(text: str, what: str = "--pass_at") -> list[int]:
    """The ks of a comma list ("1,2,4,8"), in order, without repeats; a ValueError naming
    `what` for anything else."""
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
        check_pass_at(ks)
    except ValueError as e:
        detail = str(e) if str(e).startswith("pass@k") else "expected whole numbers"
        raise ValueError(f"{what} {text!r}: {detail} (e.g. 1,2,4,8)") from None
    return list(dict.fromkeys(ks))


def check_pass_at(ks: Sequence[int], n: Optional[int] = None) -> int:
    """The number of samples per problem for pass@`ks` (`n`, default the largest k); a
    ValueError that says what is wrong with ks or n."""
    ks = list(ks)
    if not ks:
        raise ValueError("pass@k needs at least one k")
    if min(ks) < 1:
        raise ValueError(f"pass@k needs every k >= 1, got {min(ks)}")
    n = max(ks) if n is None else n
    if n < max(ks):
        raise ValueError(f"pass@k: {n} samples per problem cannot estimate pass@{max(ks)}; "
                         f"the samples (n) must be at least the largest k")
    return n


def correct_counts(engine: Engine, tok, task, *, limit: int, n: int, temperature: float = 1.0,
                   batch_size: int = 64, seed: int = 1, max_new_tokens: int = 0,
                   progress: bool = False) -> list[int]:
    """Per held-out problem, how many of n sampled replies (tools on) the task grades correct.
    Problem i's sample j has PRNG key (seed, i·n + j) whatever the batching; replies are graded
    and dropped batch by batch, so memory does not grow with n × problems."""
    convs = [task.example("test", i) for i in held_out_indices(task, limit)]
    per_call = max(1, batch_size // n)
    budget = max_new_tokens or task.max_new_tokens()
    counts: list[int] = []
    bar = tqdm(total=len(convs), disable=not progress, desc=f"pass@k {task.name}",
               unit="problem", leave=False)
    for b in range(0, len(convs), per_call):
        group = convs[b:b + per_call]
        replies = generate_replies(engine, tok, group, max_new_tokens=budget,
                                   batch_size=len(group), temperature=temperature, seed=seed,
                                   n=n, first=b)
        for j, c in enumerate(group):
            counts.append(sum(_graded(task, c, r["text"]) for r in replies[j * n:(j + 1) * n]))
        bar.update(len(group))
    bar.close()
    return counts


def pass_at_ks(engine: Engine, tok, task, *, limit: int, ks: Sequence[int] = PASS_KS,
               n: Optional[int] = None, temperature: float = 1.0, batch_size: int = 64,
               seed: int = 1, progress: bool = False) -> dict[int, float]:
    """{k: unbiased pass@k} over the held-out problems, every k from the same n samples per
    problem (default n: the largest k)."""
    n = check_pass_at(ks, n)
    counts = correct_counts(engine, tok, task, limit=limit, n=n, temperature=temperature,
                            batch_size=batch_size, seed=seed, progress=progress)
    return pass_at_k_from_counts(counts, n, ks)


def pass_at_k(engine: Engine, tok, task, *, limit: int, k: int, temperature: float = 1.0,
              batch_size: int = 64, seed: int = 1) -> float:
    """Fraction of held-out problems with a correct reply among k samples (n = k, where the
    unbiased estimate is exactly "any of the k correct")."""
    return pass_at_ks(engine, tok, task, limit=limit, ks=(k,), temperature=temperature,
                      batch_size=batch_size, seed=seed)[k]
