"""Knowledge probing (Llama 3 §4.3.6; issue 26): which facts of the synthetic knowledge base does a
chat model actually know? Ask it, sample, judge, and write SFT data that answers what it knows
and refuses what it does not.

  python -m tools.probe_knowledge --run chat_tiny_sft_kb --k 5 --threshold 0.6 \\
      --out runs/knowledge_probe

For every (person, attribute) of the knowledge base's probe people (`lm.tasks.knowledge`: the
half of `train` that plain SFT never answers about; the `test` people are never probed, never in
SFT data), the run answers `--k` questions at
temperature `--temperature` (training phrasings, one drawn per sample); each reply is judged
(correct / refused / hallucinated) against the knowledge base; the fact is *known* when at least
`--threshold` of the samples are correct (`--threshold auto`: the share whose labels agree best
with the model's greedy replies to the same questions, which are what the chat says when
deployed; the agreement of every threshold is in probe.md). In `--out`:

  probe.json   every fact's correct count and label, the known share per pretraining frequency
  probe.md     that share as a table
  fix.jsonl    the probe-based SFT conversations: a known fact answered, an unknown one refused
               ("I don't know ..."), `--phrasings` questions per fact; an SFT run reads it as
               `sft.files=kb_probed=<out>/fix.jsonl` (experiment chat_tiny_sft_kb_probed)

Deterministic in `--seed` (sample j of fact i has its own PRNG key, whatever the batch size).

Did pretraining store the facts at all? `--cloze` asks the weights directly, for any run (a base
run too): for every person and every attribute with a closed set of values, each value is scored
by its log-likelihood after "<name> lives in" (works as / plays the / has a pet), as lm-eval
scores a multiple choice (`lm.eval.benchmarks`); accuracy per pretraining frequency against
chance, and by whose facts (plain SFT's people, the probe's, the held-out ones: what an SFT keeps
of the people it never mentions), in cloze.json and cloze.md:

  python -m tools.probe_knowledge --run chat_tiny_base_kb --cloze --out runs/knowledge_cloze
"""
from __future__ import annotations

import os
import sys

if __package__ in (None, "") and __name__ == "__main__":  # run as `python tools/probe_knowledge.py`
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import random
import time

import numpy as np

from lm import runs
from lm.conversation import conversation
from lm.eval import benchmarks
from lm.eval.chat import generate_replies
from lm.eval.likelihood import loglikelihood
from lm.sampling import Engine
from lm.tasks import knowledge


def facts(kb: knowledge.KnowledgeBase) -> list[tuple[knowledge.Person, str]]:
    """The probed facts: every attribute of the train people plain SFT never answers about."""
    return [(p, a) for p in kb.probe_people() for a in knowledge.ATTRIBUTES]


def calibrate(rows: list[dict], k: int) -> list[dict]:
    """For each threshold j/k: the share of facts it labels known and how often that label agrees
    with the greedy reply's verdict (right or not), the answer the chat gives when deployed."""
    out = []
    for j in range(1, k + 1):
        known = [r["correct"] >= j for r in rows]
        agree = [kn == (r["greedy"] == "correct") for kn, r in zip(known, rows)]
        out.append({"threshold": j / k, "known": float(np.mean(known)),
                    "agreement": float(np.mean(agree))})
    return out


def probe(run, *, k: int = 5, temperature: float = 1.0, seed: int = 0, batch_size: int = 128,
          threshold: float | str = 0.6, kb=None, limit: int = 0, progress: bool = True) -> dict:
    """probe.json's content for a loaded chat run. `threshold="auto"`: the share of correct
    samples whose labels agree best with the greedy replies (`calibrate`; a tie goes to the
    higher threshold)."""
    kb = kb or knowledge.knowledge_base()
    task = knowledge.KnowledgeQA(kb=kb)
    items = facts(kb)[:limit or None]
    rng = random.Random(f"probe/{seed}")
    convs = [conversation(task.question(p, a, "train", rng)) for p, a in items]
    engine = Engine(run.params, run.config.model, tokenizer=run.tokenizer, tools=run.tokenizer.chat)
    t0 = time.perf_counter()
    replies = []
    step = max(1, batch_size // k)
    for b in range(0, len(convs), step):
        replies += generate_replies(engine, run.tokenizer, convs[b:b + step],
                                    max_new_tokens=task.max_new_tokens(), batch_size=step,
                                    temperature=temperature, seed=seed, n=k, first=b)
        if progress:
            print(f"\rprobe: {min(b + step, len(convs))}/{len(convs)} facts", end="",
                  file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    # the same questions answered greedily, as the chat answers them when deployed
    greedy = generate_replies(engine, run.tokenizer, convs, max_new_tokens=task.max_new_tokens(),
                              batch_size=batch_size)
    rows = []
    for i, (p, a) in enumerate(items):
        verdicts = [knowledge.judge(p, a, replies[i * k + j]["text"]) for j in range(k)]
        rows.append({"person": p.name, "attribute": a, "frequency": p.frequency,
                     "correct": verdicts.count("correct"), "refused": verdicts.count("refused"),
                     "k": k, "greedy": knowledge.judge(p, a, greedy[i]["text"]),
                     "sample": replies[i * k]["text"]})
    calibration = calibrate(rows, k) if rows else []
    if threshold == "auto":
        best = max(calibration, key=lambda c: (c["agreement"], c["threshold"]), default=None)
        threshold = best["threshold"] if best else 0.6
    for r in rows:
        r["known"] = r["correct"] >= threshold * k - 1e-9
    by_freq = {}
    for f in knowledge.FREQUENCIES:
        sel = [r for r in rows if r["frequency"] == f]
        if sel:
            by_freq[str(f)] = {"facts": len(sel),
                               "known": float(np.mean([r["known"] for r in sel])),
                               "sample_accuracy": float(np.mean([r["correct"] / k for r in sel])),
                               "greedy_accuracy": float(np.mean([r["greedy"] == "correct"
                                                                 for r in sel]))}
    return {"run_dir": run.run_dir, "step": run.step, "k": k, "temperature": temperature,
            "threshold": threshold, "calibration": calibration, "seed": seed, "facts": len(rows),
            "known": float(np.mean([r["known"] for r in rows])) if rows else 0.0,
            "by_frequency": by_freq, "seconds": round(time.perf_counter() - t0, 1),
            "labels": rows}


CLOZE = {"city": "{name} lives in", "profession": "{name} works as",
         "instrument": "{name} plays the", "pet": "{name} has a pet"}


def cloze(run, *, kb=None, batch_size: int = 64) -> dict:
    """cloze.json's content: the likelihood ranking of each attribute's values, per frequency."""
    kb = kb or knowledge.knowledge_base()
    group = {p.name: g for g, people in (("qa", kb.qa_people()), ("probe", kb.probe_people()),
                                         ("test", kb.split("test"))) for p in people}
    items, owners, groups = [], [], []
    for p in kb.people:
        for a, prefix in CLOZE.items():
            values = knowledge.VALUES[a]
            shown = ([knowledge.with_article(v) for v in values] if a == "profession"
                     else list(values))
            items.append(benchmarks.Item(prefix.format(name=p.name), shown,
                                         values.index(p.value(a))))
            owners.append((p.frequency, a))
            groups.append(group[p.name])
    t0 = time.perf_counter()
    reqs, _ = benchmarks.requests_for(run.tokenizer, items)
    lls = loglikelihood(run.params, run.config.model, reqs, batch_size=batch_size)
    pred = benchmarks.score(items, [ll for ll, _ in lls])["pred"]
    right = [pr == it.gold for pr, it in zip(pred, items)]
    by_freq = {}
    for f in knowledge.FREQUENCIES:
        row = {}
        for a in CLOZE:
            sel = [r for r, o in zip(right, owners) if o == (f, a)]
            if sel:
                row[a] = float(np.mean(sel))
        if row:
            row["n"] = sum(o[0] == f for o in owners)
            row["mean"] = float(np.mean([row[a] for a in CLOZE if a in row]))
            by_freq[str(f)] = row
    # plain SFT's people (whose questions a mixed-training corpus holds), the probe's, held-out
    by_group = {g: {str(f): float(np.mean(sel)) for f in knowledge.FREQUENCIES
                    if (sel := [r for r, o, gg in zip(right, owners, groups)
                                if gg == g and o[0] == f])}
                for g in ("qa", "probe", "test")}
    return {"run_dir": run.run_dir, "step": run.step, "items": len(items),
            "chance": {a: 1 / len(knowledge.VALUES[a]) for a in CLOZE},
            "by_frequency": by_freq, "by_group": by_group,
            "seconds": round(time.perf_counter() - t0, 1)}


def cloze_markdown(result: dict) -> str:
    attrs = list(CLOZE)
    lines = [f"# Does the model store the facts? Cloze of `{result['run_dir']}` (step "
             f"{result['step']})", "",
             "Each attribute's values ranked by log-likelihood after \"<name> lives in\" (works "
             "as / plays the / has a pet); accuracy of the top value, per pretraining copies.", "",
             "| pretraining copies | items | " + " | ".join(attrs) + " | mean |",
             "|---|---|" + "---|" * (len(attrs) + 1),
             "| chance | | " + " | ".join(f"{result['chance'][a]:.3f}" for a in attrs) + f" | "
             f"{np.mean(list(result['chance'].values())):.3f} |"]
    for f, row in result["by_frequency"].items():
        lines.append(f"| {f} | {row['n']} | " + " | ".join(f"{row[a]:.3f}" for a in attrs)
                     + f" | {row['mean']:.3f} |")
    groups = result.get("by_group")
    if groups:
        lines += ["", "By whose facts (mean over the attributes): plain SFT's people (`qa`), the "
                  "probe's (`probe`), the held-out ones (`test`).", "",
                  "| pretraining copies | qa | probe | test |", "|---|---|---|---|"]
        for f in result["by_frequency"]:
            lines.append(f"| {f} | " + " | ".join(f"{groups[g][f]:.3f}" if f in groups[g]
                                                   else "" for g in ("qa", "probe", "test"))
                         + " |")
    return "\n".join(lines) + "\n"


def fix_conversations(result: dict, kb=None, phrasings: int = 2, seed: int = 0) -> list[dict]:
    """The probe-based SFT data: each probed fact asked `phrasings` ways, answered when known,
    refused when not."""
    kb = kb or knowledge.knowledge_base()
    people = {p.name: p for p in kb.split("train")}
    task = knowledge.KnowledgeQA(kb=kb)
    rng = random.Random(f"probe_fix/{seed}")
    out = []
    for r in result["labels"]:
        p = people[r["person"]]
        for j in range(phrasings):
            q = task.question(p, r["attribute"], "train", rng)
            reply = knowledge.answer(p, r["attribute"]) if r["known"] else \
                knowledge.refusal(p, rng.randrange(1000))
            out.append(conversation(q, reply))
    return out


def markdown(result: dict) -> str:
    lines = [f"# Knowledge probe of `{result['run_dir']}` (step {result['step']})", "",
             f"{result['facts']} facts (probe people × attributes), {result['k']} samples each at "
             f"temperature {result['temperature']:g}; known = at least {result['threshold']:g} "
             f"of the samples correct. Known overall: {result['known']:.3f}.", "",
             "| pretraining copies | facts | known | sample accuracy | greedy accuracy |",
             "|---|---|---|---|---|"]
    for f, e in result["by_frequency"].items():
        lines.append(f"| {f} | {e['facts']} | {e['known']:.3f} | {e['sample_accuracy']:.3f} | "
                     f"{e.get('greedy_accuracy', float('nan')):.3f} |")
    if result.get("calibration"):
        lines += ["", "Each threshold's labels against the greedy reply's verdict:", "",
                  "| known when ≥ this share of samples is right | facts known | agrees with "
                  "greedy |", "|---|---|---|"]
        for c in result["calibration"]:
            lines.append(f"| {c['threshold']:.2f} | {c['known']:.3f} | {c['agreement']:.3f} |")
    return "\n".join(lines) + "\n"


def write(out: str, stem: str, result: dict, to_markdown) -> None:
    """<stem>.json and <stem>.md in `out`; the Markdown printed too."""
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(to_markdown(result))
    print(to_markdown(result))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.probe_knowledge",
                                description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a chat run: dir, checkpoint dir or experiment")
    p.add_argument("--workdir", default=".", help="where experiment names are looked up")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--k", type=int, default=5, help="samples per fact (>= 1)")
    p.add_argument("--threshold", default="0.6",
                   help="share of correct samples that makes a fact known (0-1], or auto: the "
                        "share whose labels agree best with the greedy replies")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--phrasings", type=int, default=2, help="questions per fact in fix.jsonl")
    p.add_argument("--limit", type=int, default=0, help="probe only the first N facts (0: all)")
    p.add_argument("--cloze", action="store_true",
                   help="rank each attribute's values by likelihood instead (any run, base too)")
    a = p.parse_args(argv)
    try:
        a.threshold = a.threshold if a.threshold == "auto" else float(a.threshold)
    except ValueError:
        p.error(f"--threshold {a.threshold!r}: a number in (0, 1] or auto")
    if a.k < 1 or (a.threshold != "auto" and not 0 < a.threshold <= 1) or a.temperature <= 0 \
            or a.phrasings < 1:
        p.error("--k >= 1, 0 < --threshold <= 1 (or auto), --temperature > 0 and --phrasings >= 1")
    try:
        run = runs.load(a.run, workdir=a.workdir)
    except runs.RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    if a.cloze:
        write(a.out, "cloze", cloze(run), cloze_markdown)
        return 0
    if run.tokenizer.chat is None:
        print(f"error: {run.run_dir} is a {run.stage} run without the chat tokens; probe an "
              f"SFT run", file=sys.stderr)
        return 2
    result = probe(run, k=a.k, temperature=a.temperature, seed=a.seed, batch_size=a.batch_size,
                   threshold=a.threshold, limit=a.limit)
    write(a.out, "probe", result, markdown)
    fix = fix_conversations(result, phrasings=a.phrasings, seed=a.seed)
    with open(os.path.join(a.out, "fix.jsonl"), "w") as f:
        for c in fix:
            f.write(json.dumps(c) + "\n")
    print(f"wrote {a.out}/probe.json, probe.md and fix.jsonl ({len(fix)} conversations)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
