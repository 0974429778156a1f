"""Issue 28's task and measurements: arithmetic_think's training replies are mostly the answer
alone (both behaviours in the data, answers right either way), its held-out and rl references
are worked; `shows_work` tells the two apart; the experiments load and their prompts fit."""
import math
import re

import pytest

import experiments
from lm import conversation as chat
from lm import tasks
from lm.tasks.base import final_number, shows_work


def reply(conv: dict) -> str:
    return chat.reply_text(chat.parts_of(conv["messages"][-1]["content"]))


def test_training_replies_are_mostly_direct_and_always_right():
    t = tasks.get("arithmetic_think")
    n = 2000
    convs = [t.example("train", i) for i in range(n)]
    worked = [shows_work(reply(c)) for c in convs]
    direct = 1 - sum(worked) / n
    # 80% direct by construction; 4 binomial standard errors either side
    assert abs(direct - t.direct) < 4 * math.sqrt(t.direct * (1 - t.direct) / n)
    for c in convs:
        assert final_number(reply(c)) == c["answer"] and t.evaluate(c, reply(c))
    # the problems have 2 to 4 steps; a worked reply has one calculator call per step
    calls = [reply(c).count("<<") for c, w in zip(convs, worked) if w]
    assert set(calls) == {2, 3, 4}


@pytest.mark.parametrize("split", ["test", "rl"])
def test_held_out_and_rl_references_are_worked(split):
    t = tasks.get("arithmetic_think")
    for i in range(200):
        c = t.example(split, i)
        assert shows_work(reply(c)) and t.evaluate(c, reply(c))


def test_splits_do_not_share_problems():
    t = tasks.get("arithmetic_think")
    q = lambda split: {t.example(split, i)["messages"][0]["content"] for i in range(500)}
    assert not q("train") & q("test") and not q("rl") & q("test")


@pytest.mark.parametrize("text,worked", [
    ("#### 12", False), ("It is 12.\n#### 12", False), ("12 apples.\n#### 12", False),
    ("Adding: 5 + 7 = <<5+7=12>>12 apples.\n#### 12", True), ("5 + 7 = 12\n#### 12", True),
    ("5 x 3 = 15, minus 3 is 12.\n#### 12", True), ("#### 5 + 7 = 12", False),
])
def test_shows_work(text, worked):
    assert shows_work(text) is worked


def test_the_experiments_load():
    sft, rl = experiments.get("sft_think_tiny"), experiments.get("grpo_think_tiny")
    sft.validate()
    rl.validate()
    assert "arithmetic_think" in sft.sft.mixture and not re.search(r"arithmetic_easy|word_", sft.sft.mixture)
    assert rl.rl.rewards == "correct:1" and rl.rl.split == "rl"
