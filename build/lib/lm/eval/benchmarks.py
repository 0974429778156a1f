"""Base-model benchmarks by likelihood, as EleutherAI's lm-evaluation-harness scores them.

Each item is (context, [continuations], gold). A continuation is `" " + choice` (lm-eval's target
delimiter); `acc` is the argmax of the summed log-likelihood, `acc_norm` the argmax of the
log-likelihood divided by the choice's length in characters (lm-eval's `acc_norm`). Requests are
tokenized as lm-eval's HF model does (`_encode_pair`): trailing spaces of the context move to the
continuation, the whole string is encoded, and the continuation is what follows the context's
tokens. The context starts with the tokenizer's BOS (lm-eval's `add_bos_token=True`).

Formats (lm-eval's task configs):
- hellaswag (val): `preprocess(activity_label + ": " + ctx)`, choices `preprocess(ending)`; our
  file is klosax's text dump, so ctx_b is not re-capitalized (see ../shared/data/README.md).
- arc_easy / arc_challenge (test): `"Question: {q}\\nAnswer:"`, choices the answer texts.
- mmlu (val; `mmlu` 0-shot, `mmlu_5shot` from dev): the header "The following are multiple choice
  questions (with answers) about {subject}.\\n\\n", `"{q}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:"`,
  choices the letters; shots are "{prompt} {letter}" joined by blank lines.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from lm.eval.likelihood import loglikelihood
from lm.tasks import test_indices
from lm.tasks.multiple_choice import read_arc, read_hellaswag, read_mmlu

BENCHMARKS = ("hellaswag", "arc_easy", "arc_challenge", "mmlu", "mmlu_5shot")


@dataclass
class Item:
    context: str
    choices: list[str]          # without the leading delimiter
    gold: int
    meta: Optional[dict] = None


def preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_items() -> list[Item]:
    return [Item(preprocess(r["activity_label"] + ": " + r["ctx"]),
                 [preprocess(e) for e in r["endings"]], r["gold"]) for r in read_hellaswag()]


def arc_items(name: str) -> list[Item]:
    return [Item(f"Question: {r['question']}\nAnswer:", list(r["choices"]), r["gold"])
            for r in read_arc(f"{name}_test")]


def _mmlu_prompt(r: dict) -> str:
    lines = [r["question"].strip()] + [f"{'ABCD'[i]}. {c}" for i, c in enumerate(r["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def mmlu_items(shots: int = 0) -> list[Item]:
    dev = {}
    for r in read_mmlu("dev"):
        dev.setdefault(r["subject"], []).append(r)
    items = []
    for r in read_mmlu("val"):
        head = (f"The following are multiple choice questions (with answers) about "
                f"{r['subject'].replace('_', ' ')}.\n\n")
        fewshot = "".join(f"{_mmlu_prompt(d)} {'ABCD'[d['gold']]}\n\n"
                          for d in dev.get(r["subject"], [])[:shots])
        items.append(Item(head + fewshot + _mmlu_prompt(r), ["A", "B", "C", "D"], r["gold"],
                          {"subject": r["subject"]}))
    return items


def items(name: str) -> list[Item]:
    if name == "hellaswag":
        return hellaswag_items()
    if name in ("arc_easy", "arc_challenge"):
        return arc_items(name)
    if name == "mmlu":
        return mmlu_items(0)
    if name == "mmlu_5shot":
        return mmlu_items(5)
    raise KeyError(f"unknown benchmark {name!r}; known: {list(BENCHMARKS)}")


def check_names(names: Sequence[str]) -> None:
    bad = [n for n in names if n not in BENCHMARKS]
    if bad:
        raise ValueError(f"eval.tasks for a base model: {bad} are not likelihood benchmarks "
                         f"(known: {list(BENCHMARKS)})")


def encode_pair(tok, context: str, continuation: str, bos: bool = True):
    """lm-eval's `_encode_pair`: (context ids, continuation ids)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tok.encode(context + continuation))
    ctx = list(tok.encode(context))
    prefix = [tok.bos_id] if bos and tok.bos_id is not None else []
    return prefix + ctx, whole[len(ctx):]


def requests_for(tok, its: Sequence[Item], bos: bool = True):
    reqs, owner = [], []
    for k, it in enumerate(its):
        for c in it.choices:
            reqs.append(encode_pair(tok, it.context, " " + c, bos))
            owner.append(k)
    return reqs, owner


def score(its: Sequence[Item], lls: Sequence[float]) -> dict:
    """Per-item predictions (acc, acc_norm) from the log-likelihood of every choice, in order."""
    pred, pred_norm, k = [], [], 0
    for it in its:
        ll = np.asarray(lls[k:k + len(it.choices)], np.float64)
        k += len(it.choices)
        lens = np.array([float(len(c)) for c in it.choices])
        pred.append(int(np.argmax(ll)))
        pred_norm.append(int(np.argmax(ll / lens)))
    gold = np.array([it.gold for it in its])
    return {"items": len(its), "acc": float(np.mean(np.array(pred) == gold)),
            "acc_norm": float(np.mean(np.array(pred_norm) == gold)),
            "pred": pred, "pred_norm": pred_norm}


def run(params, cfg, tok, names: Sequence[str], *, limit: int = 0, batch_size: int = 32,
        progress: bool = False, bos: bool = True, mesh=None) -> dict:
    """{benchmark: {'items', 'acc', 'acc_norm', 'pred', 'pred_norm'}}; `limit` > 0 takes a fixed
    spread of that many items (the same ones every time)."""
    check_names(names)
    out = {}
    for name in names:
        its = items(name)
        if limit:
            its = [its[i] for i in test_indices(len(its), limit)]
        reqs, _ = requests_for(tok, its, bos)
        bar = tqdm(total=len(reqs), disable=not progress, desc=name, leave=False)
        lls = loglikelihood(params, cfg, reqs, batch_size=batch_size, progress=bar.update,
                            mesh=mesh)
        bar.close()
        out[name] = score(its, [ll for ll, _ in lls])
    return out


def metrics(results: dict) -> dict:
    """Flat `bench/<name>/acc`, `bench/<name>/acc_norm` keys for metrics.jsonl."""
    out = {}
    for name, r in results.items():
        out[f"bench/{name}/acc"] = r["acc"]
        out[f"bench/{name}/acc_norm"] = r["acc_norm"]
        out[f"bench/{name}/items"] = r["items"]
    return out
