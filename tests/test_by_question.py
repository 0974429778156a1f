"""tools/by_question: held-out accuracy grouped by the question each item was asked in."""
import collections
import json
import random

import pytest

from lm.tasks import recall, spelling
from lm.tasks.recall import Recall
from tools import by_question


def _write(path, samples, n=None):
    chat = {f"eval/{t}_n": (n or c) for t, c in collections.Counter(
        s["task"] for s in samples).items()}
    path.write_text(json.dumps({"chat": chat, "chat_samples": samples}))
    return str(path)


def _recall_samples(seed: int, n: int = 90) -> list[dict]:
    rng, out = random.Random(seed), []
    for i in range(n):
        ex = Recall().example("test", i)
        out.append({"task": "recall", "prompt": ex["messages"][-2]["content"],
                    "reply": f"You said {'x' if i % 2 else ex['answer']}.",
                    "correct": rng.random() < 0.5, "item": {"answer": ex["answer"]}})
    return out


def test_recall_items_are_grouped_by_the_held_out_question_they_asked(tmp_path):
    runs = [("a", _write(tmp_path / "a.json", _recall_samples(1))),
            ("b", _write(tmp_path / "b.json", _recall_samples(2)))]
    tab = by_question.table(runs, wrong=2)
    held_out = {q for _, (_, _, asks) in recall.FACTS.items() for q in asks["test"]}
    rows = tab["tasks"]["recall"]["questions"]
    assert {r["question"] for r in rows} <= held_out and len(rows) > 5
    for label, path in runs:           # the same split as grouping on the exact question
        by_prompt = collections.defaultdict(list)
        for s in json.load(open(path))["chat_samples"]:
            by_prompt[s["prompt"]].append(s["correct"])
        for r in rows:
            got = by_prompt[r["question"]]
            assert r["n"][label] == len(got)
            assert r["acc"][label] == pytest.approx(sum(got) / len(got))
    counts = [r["n"]["a"] for r in rows]
    assert counts == sorted(counts, reverse=True)
    assert all(sum(k for _, k in r["wrong"]) <= r["n"]["b"] for r in rows)
    md = by_question.markdown(tab)
    assert "| **all** | 90/90 |" in md and "Commonest wrong replies (b)" in md


def test_spelling_items_are_named_by_their_template_whatever_the_letter():
    rows = collections.Counter()
    for k, (word, letter) in enumerate([("glass", "s"), ("banana", "a"), ("plum", "z"),
                                        ("essay", "e"), ("kiwi", "i"), ("moss", "s")]):
        for t in spelling.OOD_QUESTIONS:
            prompt = t.format(l=letter, w=word, u=letter.upper(), c=word.capitalize())
            s = {"task": "spelling_ood", "prompt": prompt,
                 "item": {"word": word, "letter": letter, "answer": str(word.count(letter))}}
            assert by_question.question_of(s) == t
            rows[t] += 1
    assert len(rows) == len(spelling.OOD_QUESTIONS)


def test_files_without_every_item_are_refused_with_what_to_run(tmp_path, capsys):
    few = _write(tmp_path / "few.json", _recall_samples(1, 3), n=600)  # lm.eval's default: 3
    with pytest.raises(by_question.InputError, match="--log_samples"):
        by_question.table([("few", few)])
    with pytest.raises(SystemExit, match="no eval.json here"):
        by_question.main([str(tmp_path / "missing_run")])
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"chat": {}, "chat_samples": []}))
    with pytest.raises(SystemExit, match="holds no chat samples"):
        by_question.main([str(empty)])
    ok = _write(tmp_path / "ok.json", _recall_samples(1, 30))
    with pytest.raises(SystemExit, match="none of spelling_ood"):
        by_question.main([ok, "--tasks", "spelling_ood"])
    by_question.main([f"run={ok}", "--json", str(tmp_path / "t.json")])
    assert "| run |" in capsys.readouterr().out.splitlines()[2]
    assert json.load(open(tmp_path / "t.json"))["runs"] == ["run"]
