"""lm's likelihood benchmarks checked against EleutherAI's lm-evaluation-harness, item by item.

The run is exported to a transformers folder (`lm.interop.hf`); the same items (our local data, in
our prompt formats: `lm.eval.benchmarks`) are written as JSONL with a custom lm-eval task config
(`output_type: multiple_choice`, target delimiter " ", `acc` and `acc_norm`), and lm-eval's HF
model scores them. Both sides' per-choice log-likelihoods give per-item predictions; agreement is
the fraction of items where the predictions (acc and acc_norm) are the same.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

import numpy as np

from lm.eval import benchmarks
from lm.eval.likelihood import loglikelihood
from lm.interop import hf
from lm.tasks import test_indices

TASKS = ("hellaswag", "arc_easy", "arc_challenge", "mmlu")

YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def reference_scores(hf_dir: str, items_by_task: dict, *, batch_size: int = 16) -> dict:
    """{task: [[ll per choice] per item]} from lm-eval's HF model on our items."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import lm_eval          # optional: the reference harness (requirements-eval.txt)
    from lm_eval.tasks import TaskManager
    work = tempfile.mkdtemp(prefix="lm_parity_")
    names = []
    for task, its in items_by_task.items():
        path = os.path.join(work, f"{task}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for it in its:
                f.write(json.dumps({"context": it.context, "choices": it.choices,
                                    "gold": it.gold}) + "\n")
        name = f"lm_parity_{task}"
        with open(os.path.join(work, f"{name}.yaml"), "w") as f:
            f.write(YAML.format(task=name, path=path))
        names.append((task, name))
    res = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},dtype=float32,device=cpu",
        tasks=[n for _, n in names], task_manager=TaskManager(include_path=work),
        log_samples=True, batch_size=batch_size, num_fewshot=0)
    out = {}
    for task, name in names:
        samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
        out[task] = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
    return out


def compare(ours: Sequence[Sequence[float]], ref: Sequence[Sequence[float]], its) -> dict:
    a = benchmarks.score(its, [x for row in ours for x in row])
    b = benchmarks.score(its, [x for row in ref for x in row])
    same = [p == q and pn == qn for p, q, pn, qn in
            zip(a["pred"], b["pred"], a["pred_norm"], b["pred_norm"])]
    diffs = [abs(x - y) for r1, r2 in zip(ours, ref) for x, y in zip(r1, r2)]
    return {"items": len(its), "agreement": float(np.mean(same)) if same else 0.0,
            "acc_ours": a["acc"], "acc_ref": b["acc"], "acc_norm_ours": a["acc_norm"],
            "acc_norm_ref": b["acc_norm"], "max_abs_ll_diff": float(max(diffs, default=0.0)),
            "disagreements": [i for i, s in enumerate(same) if not s]}


def run(params, cfg, tok, *, tasks: Sequence[str] = TASKS, limit: int = 500,
        batch_size: int = 16, hf_dir: str | None = None) -> dict:
    """{task: comparison} for a run's parameters (exported to `hf_dir`, a temp folder by
    default)."""
    hf_dir = hf_dir or tempfile.mkdtemp(prefix="lm_parity_hf_")
    hf.export(params, cfg, tok, hf_dir)
    items = {}
    for t in tasks:
        its = benchmarks.items(t)
        if limit:
            its = [its[i] for i in test_indices(len(its), limit)]
        items[t] = its
    ref = reference_scores(hf_dir, items, batch_size=batch_size)
    out = {}
    for t, its in items.items():
        reqs, owner = benchmarks.requests_for(tok, its)
        lls = [ll for ll, _ in loglikelihood(params, cfg.model, reqs, batch_size=batch_size)]
        ours, k = [], 0
        for it in its:
            ours.append(lls[k:k + len(it.choices)])
            k += len(it.choices)
        out[t] = compare(ours, ref[t], its)
    return out
