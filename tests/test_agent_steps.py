"""The multi-step tool-use task: dependent calls whose second argument comes from the first
result, held-out names and phrasings, per-step grades, and the end-to-end agent evaluation."""
import json

from lm import agent, tasks
from lm import conversation as C

T = tasks.get("agent_steps")


def test_training_conversations_render_and_chain_their_results():
    for i in range(40):
        c = T.example("train", i)
        C.validate(c)
        first, second = c["steps"]
        # the second call uses a number from the first result: reading the context is needed
        nums = {str(v) for v in first["result"].values() if isinstance(v, (int, float))}
        shown = json.dumps(second["arguments"])
        assert any(n.rstrip("0").rstrip(".") in shown for n in nums), c


def test_held_out_names_phrasings_and_one_chain_never_train():
    train = [T.example("train", i) for i in range(400)]
    test = [T.example("test", i) for i in range(300)]
    names = lambda cs: {s["name"] for c in cs for s in c["steps"]}
    asks = lambda cs: {c["messages"][0]["content"] for c in cs}
    assert not names(test) & names(train) and not asks(test) & asks(train)
    assert "stock_in_currency" in {c["chain"] for c in test} - {c["chain"] for c in train}
    assert {c["kind"] for c in test} == {"step1", "step2", "final"}


def test_step_grades_read_the_reference_and_refuse_near_misses():
    for i in range(30):
        c = T.example("test", i)
        content = c["messages"][-1]["content"]
        ref = content if isinstance(content, str) else C.reply_text(content)
        assert T.evaluate(c, ref), (i, ref)
        if c["kind"] != "final":
            assert not T.evaluate(c, ref.replace(c["steps"][0]["name"], "nope")
                                  .replace(c["steps"][1]["name"], "nope"))
        else:
            assert not T.evaluate(c, "I am not sure.")


class Scripted:
    """A model that plays an item's reference exchange (or, `lazy`, answers at once)."""

    def __init__(self, lazy=False):
        self.lazy, self.item = lazy, None

    def turn(self, messages, tools, step):
        if self.lazy:
            return agent.Turn("I don't know.", [])
        item = next(T.example("test", i) for i in range(200)
                    if T.example("test", i)["messages"][0]["content"] == messages[0]["content"]
                    and T.example("test", i)["tools"] == tools)
        if step < len(item["steps"]):
            s = item["steps"][step]
            return agent.Turn("", [{"id": f"c{step}", "name": s["name"],
                                    "arguments": s["arguments"]}])
        return agent.Turn(f"It is {item['answer']}.", [])


def test_end_to_end_evaluation_rewards_the_whole_chain_only():
    good = agent.evaluate(Scripted(), limit=12)
    assert good["accuracy"] == 1.0 and good["first_call"] == good["second_call"] == 1.0
    lazy = agent.evaluate(Scripted(lazy=True), limit=12)
    assert lazy["accuracy"] == 0.0 and lazy["first_call"] == 0.0
