"""Distillation (issue 28 §3): rejection sampling keeps exactly the replies the task's grader
accepts, held-out prompts never enter the data, conversation files train like tasks, the
student's identity differs from the teacher's, and tools.distill writes both files."""
import json
import os

import pytest

from lm import conversation as chat
from lm import runs, tasks
from lm.config import Config, ConfigError, DataConfig, ModelConfig
from lm.data import distill
from lm.data.sft import Mixture, SFTBatches
from lm.stages import sft as sft_stage
from lm.stages.sft import parse_files
from lm.tasks.identity import STUDENT_NAME
from lm.tokenizer import train_bpe, trained_specials
from tools import distill as distill_tool

WEIGHTS = {"arithmetic_easy": 2, "identity": 1, "word_problems": 2, "dolly": 0.5}


def fake_replies(engine, tok, convs, *, n, **kw):
    """Stand-in for the engine: per conversation, n replies cycling through the reference reply
    (right), a wrong final number, and an unfinished reply; Dolly gets its reference."""
    out = []
    for k, c in enumerate(convs):
        ref = chat.parts_of(c["messages"][-1]["content"])
        for j in range(n):
            kind = (k + j) % 3
            parts = ref if kind == 0 or c["task"] == "dolly" else \
                [{"type": "text", "text": "I think it is\n#### 99999"}]
            if (k + j) % 7 == 3 and c["task"] != "dolly":     # an empty calculator call
                parts = [{"type": "python", "text": ""}, {"type": "text", "text": "#### 1"}]
            out.append({"parts": parts, "text": chat.reply_text(parts), "tokens": [1],
                        "format_ok": kind != 2 or c["task"] == "dolly"})
    return out


@pytest.fixture
def teacher(monkeypatch, data_env):
    monkeypatch.setattr(distill, "generate_replies", fake_replies)
    return distill.teacher_data(None, None, WEIGHTS, prompts=300, samples=2, seed=5)


def test_rejection_sampling_keeps_exactly_what_the_grader_accepts(teacher):
    convs, stats = teacher
    mixture = Mixture(WEIGHTS, "train", 5)
    right = distill.select(convs, "correct")
    assert 0 < len(right) < len(convs) <= 600
    for c in convs:
        src = mixture.conversation(c["source"])           # the prompt's own item, re-derived
        task = tasks.get(c["task"])
        reply = chat.reply_text(chat.parts_of(c["messages"][-1]["content"]))
        graded = task.evaluate(src, reply) if task.kind == "generative" else None
        assert c["teacher_correct"] == graded
        assert (c in right) == (graded is not False)
        assert c["messages"][:-1] == [m for m in src["messages"][:-1]]
    assert distill.select(convs, "all") == convs
    assert stats["invalid"] > 0
    assert stats["replies"] - stats["unfinished"] - stats["invalid"] == len(convs)
    for c in convs:
        chat.validate(c, require_reply=True)              # every kept one is training data
    assert sum(c["teacher_correct"] is True for c in convs) == stats["correct"]


def test_held_out_prompts_never_enter_the_data(teacher):
    convs, _ = teacher
    assert distill.check_no_held_out(convs, WEIGHTS) is None
    # the check can fail: a held-out problem slipped in is found
    leak = tasks.get("word_problems").example("test", 7)
    assert distill.check_no_held_out(convs + [leak], WEIGHTS) == distill.user_text(leak)


def test_multiple_choice_is_refused(data_env):
    with pytest.raises(ValueError, match="mmlu is multiple choice"):
        distill.teacher_data(None, None, {"mmlu": 1}, prompts=2)


def test_a_conversations_file_trains_like_a_task(tmp_path, teacher, monkeypatch):
    convs, _ = teacher
    monkeypatch.setattr(tasks, "FILES", {})            # registrations end with the test
    monkeypatch.setattr(tasks, "_CACHE", dict(tasks._CACHE))
    path = tmp_path / "teacher.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in convs))
    tasks.register_file("teacher_test", str(path))
    t = tasks.get("teacher_test")
    assert t.size("train") == len(convs) and t.size("test") == 0
    assert t.example("train", 3) == convs[3]
    tok = train_bpe(["Emily has 3 apples. 3 + 2 = 5. #### 5 My name is Lumen."] * 40,
                    256 + len(trained_specials()) + 30)
    b = next(SFTBatches(tok, {"teacher_test": 1}, split="train", seq_len=255, batch_size=2,
                        buffer=8, seed=0))
    assert 0 < b["weights"].mean() < 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(convs[0]) + "\n{not json\n")
    tasks.register_file("bad_test", str(bad))
    with pytest.raises(tasks.TaskDataError, match="bad.jsonl:2"):
        tasks.get("bad_test").size("train")
    with pytest.raises(ValueError, match="already a task"):
        tasks.register_file("identity", str(path))


def test_sft_files_errors(tmp_path):
    (tmp_path / "x.jsonl").write_text("{}\n")
    assert parse_files(f"x={tmp_path}/x.jsonl") == {"x": str(tmp_path / "x.jsonl")}
    with pytest.raises(ConfigError, match="not name=path"):
        parse_files("justaname")
    with pytest.raises(ConfigError, match="no file at"):
        parse_files(f"x={tmp_path}/missing.jsonl")


def test_the_student_has_a_name_of_its_own():
    teacher_name = tasks.get("whoami_teacher").example("test", 0)["keywords"]
    student = tasks.get("identity_student")
    assert tasks.get("whoami_student").example("test", 0)["keywords"] == [STUDENT_NAME]
    assert STUDENT_NAME not in teacher_name
    for i in range(300):
        reply = student.example("train", i)["messages"][-1]["content"]
        assert not any(n in reply for n in teacher_name)
    named = [student.example("train", i)["messages"][-1]["content"] for i in range(300)]
    assert any(STUDENT_NAME in r for r in named)
    # the who-am-I tasks ask only name questions
    assert {tasks.get("whoami_teacher").example("test", i)["topic"] for i in range(50)} == {"name"}


def test_tools_distill_writes_both_files(tmp_path, data_env):
    tok = train_bpe(["Emily has 3 apples and buys 2 more. 3 + 2 = 5 apples. #### 5 "] * 60,
                    256 + len(trained_specials()) + 28)
    cfg = Config(name="tiny_sft", stage="sft", init_from="x",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1,
                                   n_head=2, n_embd=32), data=DataConfig(tokenizer="parent"))
    cfg.sft.mixture = "arithmetic_easy:1,identity:1,mmlu:0.2"
    teacher = runs.save_run(str(tmp_path / "teacher"), cfg, tok)
    out = tmp_path / "distill"
    rc = distill_tool.main(["--teacher", teacher, "--prompts", "6", "--samples", "2",
                            "--batch_size", "8", "--out", str(out), "--no_progress"])
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    # the teacher's own SFT mixture, without its multiple-choice task
    assert stats["mixture"] == "arithmetic_easy:1,identity:1"
    lines = lambda f: [json.loads(x) for x in (out / f).read_text().splitlines()]
    assert stats["replies"] == 12 and stats["teacher"] == teacher
    assert len(lines("all.jsonl")) == 12 - stats["unfinished"] - stats.get("invalid", 0)
    assert lines("correct.jsonl") == [c for c in lines("all.jsonl") if c["teacher_correct"]]
    assert distill_tool.main(["--teacher", teacher, "--mixture", "mmlu:1", "--out",
                              str(out)]) == 2
    assert not os.path.exists(out / "all.jsonl.tmp")


def test_a_mixture_of_files_only_trains_without_a_validation_loss(tmp_path, teacher, monkeypatch,
                                                                   capsys):
    convs, _ = teacher
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs[:40]))
    monkeypatch.setattr(tasks, "FILES", {})
    monkeypatch.setattr(tasks, "_CACHE", dict(tasks._CACHE))
    tok = train_bpe(["Emily has 3 apples. 3 + 2 = 5. #### 5 My name is Lumen."] * 40,
                    256 + len(trained_specials()) + 30)
    cfg = Config(name="s", stage="sft", init_from="x",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1,
                                   n_head=2, n_embd=32),
                 data=DataConfig(tokenizer="parent", seq_len=255, batch_size=2))
    cfg.sft.mixture, cfg.sft.files = "t:1", f"t={tmp_path / 't.jsonl'}"
    stage = sft_stage.Stage(cfg, tokenizer=tok)
    assert stage.val_groups == [] and "no validation loss" in capsys.readouterr().out
    assert next(stage.batches)["inputs"].shape == (2, 255)
