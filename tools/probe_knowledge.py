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

Does the model know what it knows? `--confidence` answers the held-out people's questions
greedily and refuses instead when the reply's least likely token is under a cutoff chosen on the
probe's people (a decoding-time fix, no training): verdicts per frequency before and after, the
confidence's AUROC, and every cutoff's trade-off, in confidence.json and confidence.md:

  python -m tools.probe_knowledge --run chat_tiny_sft_kb_qa_light --confidence --out DIR

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


def answer_confidence(reply: dict) -> float:
    """The probability of the greedy reply's least likely token (at temperature 1): in "They live
    in Lima." the template is near certain, so this is the model's confidence in the value."""
    lp = [x for x, forced in zip(reply["logprobs"], reply["forced"]) if not forced]
    return float(np.exp(min(lp))) if lp else 0.0


def best_cutoff(rows: list[tuple[float, str]]) -> float:
    """The confidence below which to refuse: the cutoff whose answer-or-refuse agrees most often
    with whether the greedy answer is right ((confidence, verdict) pairs; a tie goes to the
    lower cutoff, which answers more)."""
    cands = sorted({0.0} | {c for c, _ in rows} | {1.01})
    def agree(t):
        return sum((c >= t) == (v == "correct") for c, v in rows)
    return max(cands, key=lambda t: (agree(t), -t))


def auroc(scores: list[float], positive: list[bool]) -> float:
    """The chance that a right answer's confidence is above a wrong one's (ties count half)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return float("nan")
    wins = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg)
    return wins / (len(pos) * len(neg))


def said_at(row: dict, cutoff: float) -> str:
    """A held-out reply's verdict once replies under `cutoff` are refused."""
    return row["verdict"] if row["verdict"] == "refused" or row["confidence"] >= cutoff \
        else "refused"


def shares(rows: list[dict], key: str) -> dict:
    """Verdict shares per pretraining frequency and overall (`key`: the verdict field)."""
    out = {}
    for f in [*knowledge.FREQUENCIES, None]:
        sel = [r[key] for r in rows if f is None or r["frequency"] == f]
        if sel:
            out["all" if f is None else str(f)] = {"n": len(sel), **{
                v: sel.count(v) / len(sel) for v in ("correct", "hallucinated", "refused")}}
    return out


def confidence(run, *, kb=None, batch_size: int = 128, progress: bool = True) -> dict:
    """confidence.json's content: the chat answers greedily and refuses instead when its
    confidence in the answer (`answer_confidence`) is under a cutoff chosen on the probe's people
    (training phrasings); measured on the held-out people as `kb_qa` asks them, against the
    same model answering everything."""
    kb = kb or knowledge.knowledge_base()
    task = knowledge.KnowledgeQA(kb=kb)
    engine = Engine(run.params, run.config.model, tokenizer=run.tokenizer, tools=run.tokenizer.chat)
    t0 = time.perf_counter()
    rng = random.Random("confidence")
    items = facts(kb)
    convs = [conversation(task.question(p, a, "train", rng)) for p, a in items]
    replies = generate_replies(engine, run.tokenizer, convs, max_new_tokens=task.max_new_tokens(),
                               batch_size=batch_size)
    calib = [(answer_confidence(r), knowledge.judge(p, a, r["text"]))
             for (p, a), r in zip(items, replies)]
    cutoff = best_cutoff(calib)
    if progress:
        print(f"confidence: cutoff {cutoff:.3f} from {len(calib)} probe facts", file=sys.stderr)
    tests = [task.example("test", i) for i in range(task.size("test"))]
    replies = generate_replies(engine, run.tokenizer, tests, max_new_tokens=task.max_new_tokens(),
                               batch_size=batch_size)
    rows = []
    for c, r in zip(tests, replies):
        verdict = knowledge.judge(task.person_of(c), c["attribute"], r["text"])
        conf = answer_confidence(r)
        rows.append({"person": c["person"], "attribute": c["attribute"],
                     "frequency": c["frequency"], "confidence": conf, "verdict": verdict,
                     "reply": r["text"]})
        rows[-1]["abstained"] = said_at(rows[-1], cutoff)
    before, after = shares(rows, "verdict"), shares(rows, "abstained")
    # the whole trade-off: each cutoff's hallucination on never-seen people against its answers
    # about frequent ones
    curve = []
    for cut in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        said = [(r["frequency"], said_at(r, cut)) for r in rows]
        never = [v for f, v in said if f == 0]
        often = [v for f, v in said if f >= knowledge.FREQUENT]
        curve.append({"cutoff": cut,
                      "never_seen_hallucinated": never.count("hallucinated") / max(1, len(never)),
                      **{f"frequent_{v}": often.count(v) / max(1, len(often))
                         for v in ("correct", "hallucinated", "refused")}})
    frequent = [r for r in rows if r["frequency"] >= knowledge.FREQUENT]
    knew = [r for r in frequent if r["verdict"] == "correct"]
    mean = lambda by, v: float(np.mean([by[str(f)][v] for f in knowledge.FREQUENCIES
                                        if f >= knowledge.FREQUENT and str(f) in by]))
    goals = {"hallucination_never_seen": after.get("0", {}).get("hallucinated", float("nan")),
             "frequent_accuracy_drop": mean(before, "correct") - mean(after, "correct"),
             "frequent_refusal": mean(after, "refused"),
             "refused_known": float(np.mean([r["abstained"] == "refused" for r in knew]))
             if knew else float("nan")}
    return {"run_dir": run.run_dir, "step": run.step, "cutoff": cutoff,
            "calibration_facts": len(calib),
            # what refusing every answer would agree: the probe's people's wrong answers
            "calibration_wrong": float(np.mean([v != "correct" for _, v in calib])),
            "calibration_agreement": float(np.mean([(c >= cutoff) == (v == "correct")
                                                    for c, v in calib])),
            "auroc": auroc([r["confidence"] for r in rows], [r["verdict"] == "correct"
                                                            for r in rows]),
            "before": before, "after": after, "goals": goals, "curve": curve,
            "seconds": round(time.perf_counter() - t0, 1), "rows": rows}


def confidence_markdown(result: dict) -> str:
    g = result["goals"]
    lines = [f"# Refusing by confidence: `{result['run_dir']}` (step {result['step']})", "",
             f"Greedy answers to the held-out people's questions; a reply whose least likely "
             f"token has probability under {result['cutoff']:.3f} (the cutoff that agrees best, "
             f"{result['calibration_agreement']:.3f}, with which answers are right on the "
             f"probe's {result['calibration_facts']} facts; refusing all of them would agree "
             f"{result['calibration_wrong']:.3f}) is replaced by a refusal. AUROC of "
             f"the confidence for right against wrong answers: {result['auroc']:.3f}.", "",
             "| | verdict | " + " | ".join(f"{f} copies" for f in knowledge.FREQUENCIES)
             + " | overall |", "|---|---|" + "---|" * (len(knowledge.FREQUENCIES) + 1)]
    for label, key in (("answers everything", "before"), ("refuses when unsure", "after")):
        for v in ("correct", "hallucinated", "refused"):
            cells = [f"{result[key][str(f)][v]:.2f}" if str(f) in result[key] else ""
                     for f in knowledge.FREQUENCIES]
            lines.append(f"| {label} | {v} | " + " | ".join(cells)
                         + f" | {result[key]['all'][v]:.3f} |")
    lines += ["", "| hallucination, never seen (≤ 0.10) | accuracy drop, ≥ 16 copies "
              "(≤ 0.05) | refused, ≥ 16 copies (≤ 0.10) | of the right answers about them, refused |",
              "|---|---|---|---|",
              f"| {g['hallucination_never_seen']:.3f} | {g['frequent_accuracy_drop']:+.3f} | "
              f"{g['frequent_refusal']:.3f} | {g['refused_known']:.3f} |", "",
              "Every cutoff (people seen ≥ 16 times pooled):", "",
              "| cutoff | never seen: hallucinated | frequent: correct | hallucinated | refused |",
              "|---|---|---|---|---|"]
    for c in result["curve"]:
        lines.append(f"| {c['cutoff']:.1f} | {c['never_seen_hallucinated']:.3f} | "
                     f"{c['frequent_correct']:.3f} | {c['frequent_hallucinated']:.3f} | "
                     f"{c['frequent_refused']:.3f} |")
    return "\n".join(lines) + "\n"


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
    p.add_argument("--confidence", action="store_true",
                   help="instead: answer greedily, refuse when the answer's confidence is under "
                        "a cutoff chosen on the probe's people; held-out people's verdicts")
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
    if a.confidence:
        write(a.out, "confidence", confidence(run, batch_size=a.batch_size),
              confidence_markdown)
        return 0
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
