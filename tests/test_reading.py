"""lm.eval.reading and tools/math_reading: where a worked reply's operands come from."""
import json
import random

import pytest

from lm import conversation as chat
from lm import tasks as task_lib
from lm.eval import chat as chat_eval
from lm.eval import reading
from lm.tasks import gsm8k
from tools import math_reading


def test_an_operand_is_read_from_the_problem_an_earlier_step_or_a_unit():
    pizza = "Each pizza has 8 slices. How many slices are in 6 pizzas?"
    wrong_op = reading.read_reply(pizza, "8 slices each: <<8*8=64>>64.\n#### 64")
    assert wrong_op["operands"] == ["problem", "problem"] and wrong_op["kind"] == "reads"
    buttons = "Kai's tin is filled with 3 buttons. 16 more buttons are added. How many now?"
    made_up = reading.read_reply(buttons, "Adding the new ones: 11 + 24 = <<11+24=35>>35.\n#### 35")
    assert made_up["operands"] == ["invented", "invented"] and made_up["kind"] == "invents"
    # words, thousands, fractions and per cents are stated numbers; written equations are steps
    problem = ("A dozen boxes hold 1,200 pens; half are red and 25% of the red are old. "
               "How many old pens are packed a minute, if it takes an hour?")
    reply = ("12 boxes: 1,200/12 = 100 a box. Red: <<1200/2=600>>600. "
             "Old: <<600*0.25=150>>150, or 600*25*.01 = 150. Per hour: <<150/60=2.5>>2.5\n"
             "#### 2.5")
    r = reading.read_reply(problem, reply)
    assert r["operands"] == ["problem", "problem",        # 1,200/12 written out
                             "problem", "problem",        # 1200/2 (half)
                             "earlier", "problem",        # 600*0.25 (25%)
                             "earlier", "problem", "unit",  # 600*25*.01
                             "earlier", "unit"]           # 150/60
    assert r["kind"] == "reads" and r["steps"] == 5
    assert r["used"] == {1200.0, 12.0, 2.0, 0.25, 25.0}
    assert reading.read_reply(problem, "#### 7")["kind"] == "no_steps"
    # a conversion counts as one only where the problem speaks of what it converts
    assert reading.read_reply("150 pens in a box", "<<150/60=2.5>>")["operands"] == [
        "problem", "invented"]
    # the number written after a step counts as its result, whatever the calculator said
    assert reading.read_reply("3 and 4", "<<3*4=12>>13 then <<13+3=16>>16")["operands"] == [
        "problem", "problem", "earlier", "problem"]
    # the final answer's line is not a step
    assert reading.steps("<<2+3=5>>5\n#### 5 = 2+3") == [("2+3", 5.0, 5.0)]


def test_gsm8k_solutions_read_their_own_problem_and_not_anothers(data_env):
    """The calibration: GSM8K's human solutions to its easy problems take almost every operand
    from the problem, an earlier step or a unit, and the same solutions set against other
    problems do not: the measure tells reading from not reading."""
    rows = gsm8k.GSM8KEasy().rows("train")[:600]
    own = reading.summary((r["question"], r["answer"], True) for r in rows)
    shuffled = rows[1:] + rows[:1]
    other = reading.summary((s["question"], r["answer"], True) for r, s in zip(rows, shuffled))
    assert own["read"] > 0.9 and own["coverage"] > 0.7
    assert other["read"] < 0.6 and other["coverage"] < 0.3
    assert own["replies"]["reads/right"] > 0.75 > other["replies"].get("reads/right", 0)


def _samples(rng: random.Random, n: int = 40) -> list[dict]:
    """Word-problem items answered by their own solution, or by it with an operand made up."""
    task, out = task_lib.get("word_problems"), []
    for i in chat_eval.held_out_indices(task, n):
        conv = task.example("test", i)
        reply = chat.reply_text(chat.parts_of(conv["messages"][-1]["content"]))
        ok = rng.random() < 0.5
        if not ok:
            reply = reply.replace("<<", "<<9731+", 1)
        out.append({"task": "word_problems", "prompt": chat_eval.asked(conv), "reply": reply,
                    "correct": ok})
    return out


def test_the_tool_tabulates_each_run_beside_the_tasks_own_solutions(tmp_path, capsys):
    samples = _samples(random.Random(0))
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"chat": {}, "chat_samples": samples}))
    tab = math_reading.table([("m", str(path))], with_reference=True)
    m, ref = tab["tasks"]["word_problems"]["m"], tab["tasks"]["word_problems"]["reference"]
    wrong = sum(not s["correct"] for s in samples)
    assert m["n"] == ref["n"] == len(samples)
    assert m["replies"]["invents/wrong"] == pytest.approx(wrong / len(samples))
    assert m["replies"]["reads/right"] == pytest.approx(1 - wrong / len(samples))
    assert ref["read"] == 1.0 and ref["acc"] == 1.0 and m["read"] < 1.0
    math_reading.main([f"m={path}", "--reference"])
    out = capsys.readouterr().out
    assert "| | m (40) | reference (40) |" in out and "… invented" in out
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"chat": {}, "chat_samples": []}))
    with pytest.raises(SystemExit, match="no chat samples"):
        math_reading.main([str(empty)])


def test_the_chat_evaluation_reports_the_share_of_operands_read(monkeypatch):
    """`eval/<task>_read` beside `_worked` where replies compute; absent where none does."""
    samples = _samples(random.Random(1), n=24)
    by_prompt = {s["prompt"]: s["reply"] for s in samples}

    def replies(engine, tok, convs, **kw):
        return [{"text": by_prompt.get(chat_eval.asked(c), "Lumen."), "tokens": [1, 2],
                 "format_ok": True} for c in convs]

    monkeypatch.setattr(chat_eval, "generate_replies", replies)
    metrics, _ = chat_eval.evaluate_tasks(None, None, None, ["word_problems", "identity"],
                                          limit=24, engine=object(), lengths=True)
    want = reading.summary((s["prompt"], s["reply"], s["correct"]) for s in samples)["read"]
    assert metrics["eval/word_problems_read"] == pytest.approx(want) and want < 1.0
    assert "eval/identity_read" not in metrics and "eval/identity_worked" in metrics
