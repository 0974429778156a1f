"""Function calling (issue 29): the conversation format renders tool definitions, calls and
results with their specials and mask; replies parse back into calls; and the server speaks
OpenAI's tools / tool_calls / role "tool" protocol, streamed and not, with the official client,
on a tiny model that memorised one tool-using conversation through the SFT stage."""
import json
import time

import pytest

from lm import agent, api, runs, tasks, train
from lm import conversation as chat
from lm.config import (CheckpointConfig, Config, DataConfig, MeshConfig, ModelConfig,
                       OptimConfig, SFTConfig, TrainConfig)
from lm.tokenizer import train_bpe, trained_specials

fastapi = pytest.importorskip("fastapi", reason="serving deps: pip install -r requirements-serve.txt")
from fastapi.testclient import TestClient  # noqa: E402

from lm.serve import app as serve_app  # noqa: E402
from test_serve import _browser, serving  # noqa: E402  (the same server and browser)

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather now in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "get_time", "description": "The time",
                                          "parameters": {"type": "object", "properties": {}}}}
CONV = {"tools": [WEATHER, CLOCK], "messages": [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": [{"type": "tool_call", "id": "c0", "name": "get_weather",
                                       "arguments": {"city": "Oslo"}}]},
    {"role": "tool", "tool_call_id": "c0", "content": '{"temp_c": 4}'},
    {"role": "assistant", "content": "It is 4 C in Oslo."}]}
TEXT = json.dumps(CONV) + " Weather in Oslo? It is 4 C in Oslo. " * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe([TEXT], 256 + len(trained_specials()) + 60)


# ---- the conversation format ------------------------------------------------------------------

def test_render_masks_calls_and_never_definitions_or_results(tok):
    ids, mask = chat.render(CONV, tok)
    f, t = tok.functions, tok.chat
    assert ids[1] == f.tools_start and mask[1] == 0
    trained = [i for i, m in zip(ids, mask) if m]
    assert f.call_start in trained and f.call_end in trained
    for i, m in zip(ids, mask):
        if i in (f.tools_start, f.tools_end, f.result_start, f.result_end, t.assistant_start):
            assert m == 0
    # the call's JSON is trained; the definitions' and the result's text are not
    a, b = ids.index(f.call_start), ids.index(f.call_end)
    assert all(mask[a:b + 1])
    r0, r1 = ids.index(f.result_start), ids.index(f.result_end)
    assert not any(mask[r0:r1 + 1]) and not any(mask[1:ids.index(f.tools_end) + 1])
    assert json.loads(tok.decode(ids[a + 1:b])) == {"name": "get_weather",
                                                    "arguments": {"city": "Oslo"}}
    # the same call given as JSON text renders the same
    as_text = json.loads(json.dumps(CONV))
    as_text["messages"][1]["content"][0]["arguments"] = '{"city": "Oslo"}'
    assert chat.render(as_text, tok)[0] == ids


def test_replies_parse_back_into_calls(tok):
    ids, _ = chat.render(CONV, tok)
    t = tok.chat
    first = ids.index(t.assistant_start) + 1
    parts = chat.parse_reply(ids[first:], tok)
    (call,) = chat.tool_calls(parts)
    assert call["name"] == "get_weather" and call["arguments"] == {"city": "Oslo"}
    f = tok.functions
    bad = chat.parse_reply([f.call_start] + tok.encode('{"name": 3}') + [f.call_end], tok)
    assert "error" in bad[0] and "name" not in bad[0]
    unterminated = chat.parse_reply([f.call_start] + tok.encode('{"na'), tok)
    assert unterminated[0]["type"] == "tool_call" and "error" in unterminated[0]
    empty = chat.parse_reply([f.call_start, f.call_end], tok)      # a model can write nothing
    assert empty[0]["error"] and chat.reply_text(empty) == "[call ]"
    # a forced call of a named function starts as the learned calls start
    assert tok.decode(chat.call_prefix(tok, "get_weather")).startswith('{"name": "get_weather')
    assert chat.call_prefix(tok, "get_weather") == tok.encode(chat.call_json(
        {"name": "get_weather", "arguments": {"city": "Oslo"}}))[:len(chat.call_prefix(
            tok, "get_weather"))]
    # the streamed reply hides the call's text and hands the call over
    s = chat.TextStream(tok)
    shown = s.push(ids[first:ids.index(t.assistant_end)]) + s.flush()
    assert shown == "" and [c["name"] for c in s.take_calls()] == ["get_weather"]


@pytest.mark.parametrize("messages,match", [
    ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "c9", "content": "r"}],
     "without a matching call"),
    ([{"role": "user", "content": "x"},
      {"role": "assistant", "content": [{"type": "tool_call", "id": "a", "name": "f",
                                         "arguments": "{oops"}]}], "not JSON"),
    ([{"role": "user", "content": "x"},
      {"role": "assistant", "content": [{"type": "tool_call", "id": "a", "name": "f"}]},
      {"role": "user", "content": "y"}], "no tool result yet"),
    ([{"role": "user", "content": "x"},
      {"role": "assistant", "content": [{"type": "tool_call", "id": "a", "name": ""}]}],
     "needs a 'name'"),
])
def test_malformed_tool_turns_are_named(messages, match):
    with pytest.raises(chat.ConversationError, match=match):
        chat.validate({"messages": messages})


def test_tools_must_be_function_definitions():
    with pytest.raises(chat.ConversationError, match="tools\\[0\\]"):
        chat.validate({"tools": [{"type": "function"}], "messages": [{"role": "user",
                                                                      "content": "x"}]})


# ---- the server, with a model that learned one conversation -------------------------------------

@pytest.fixture(scope="module")
def memorised(tok, tmp_path_factory):
    """A 1-layer model trained by the SFT stage (sft.files) on CONV until it says it back."""
    root = tmp_path_factory.mktemp("fc")
    (root / "conv.jsonl").write_text(json.dumps(CONV) + "\n")
    model = ModelConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2,
                        n_embd=64)
    parent = runs.save_run(str(root / "base"), Config(
        name="fc_base", model=model,
        data=DataConfig(tokenizer=str(root / "tok.json"), seq_len=32, batch_size=2)), tok)
    cfg = Config(name="fc_sft", stage="sft", init_from=parent, model=model,
                 data=DataConfig(tokenizer="parent", seq_len=255, batch_size=4),
                 optim=OptimConfig(lr=1e-2, min_lr=1e-2, schedule="constant", warmup_steps=0,
                                   weight_decay=0.0),
                 sft=SFTConfig(mixture="memo:1", files=f"memo={root / 'conv.jsonl'}",
                               val_rows=0),
                 train=TrainConfig(steps=150, eval_every=1000, log_every=50, sample_tokens=0),
                 checkpoint=CheckpointConfig(every=0), mesh=MeshConfig(data=1))
    cfg.validate()
    train.run(cfg, run_dir=str(root / "sft"), progress=False)
    return runs.load(str(root / "sft"))


@pytest.fixture(scope="module")
def client(memorised):
    app = serve_app.create_app(memorised, allowed_hosts=["testserver"], slots=4, chunk=4)
    with TestClient(app) as c:
        yield c


def ask(client, messages, **kw):
    body = {"messages": messages, "temperature": 0, "max_tokens": 40, **kw}
    return client.post("/v1/chat/completions", json=body)


def test_a_tool_call_and_its_result(client):
    r = ask(client, CONV["messages"][:1], tools=[WEATHER, CLOCK])
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    assert ch["finish_reason"] == "tool_calls"
    (call,) = ch["message"]["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert ch["message"]["content"] is None
    follow = CONV["messages"][:1] + [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 4}'}]
    r2 = ask(client, follow, tools=[WEATHER, CLOCK])
    assert r2.status_code == 200, r2.text
    ch2 = r2.json()["choices"][0]
    assert ch2["finish_reason"] == "stop" and ch2["message"]["content"] == "It is 4 C in Oslo."


def test_streamed_tool_call_deltas(client):
    with client.stream("POST", "/v1/chat/completions",
                       json={"messages": CONV["messages"][:1], "tools": [WEATHER, CLOCK],
                             "temperature": 0, "max_tokens": 40, "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines()
                  if line.startswith("data: ") and line != "data: [DONE]"]
    calls = [tc for e in events for c in e["choices"] for tc in c["delta"].get("tool_calls", [])]
    assert len(calls) == 1 and calls[0]["index"] == 0
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Oslo"}
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_choice(client):
    # named: the call is to that function, whatever the model would have chosen
    r = ask(client, CONV["messages"][:1], tools=[WEATHER, CLOCK],
            tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == \
        "get_weather"
    # none: no definitions in the prompt and no calls in the answer
    r = ask(client, CONV["messages"][:1], tools=[WEATHER, CLOCK], tool_choice="none")
    ch = r.json()["choices"][0]
    assert r.status_code == 200 and "tool_calls" not in ch["message"]
    assert ch["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("extra,param", [
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "tool", "tool_call_id": "zzz", "content": "r"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       {"id": "a", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{not json"}}]},
                   {"role": "tool", "tool_call_id": "a", "content": "r"}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "tool", "content": "r"}]}, "messages"),
])
def test_bad_tool_input_is_a_400_and_the_server_keeps_serving(client, extra, param):
    body = {"messages": CONV["messages"][:1], "max_tokens": 4, **extra}
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert ask(client, CONV["messages"][:1], tools=[WEATHER]).status_code == 200


def test_a_tool_result_over_the_context_is_a_400(client):
    follow = CONV["messages"][:1] + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "a", "content": "rain " * 400}]
    r = ask(client, follow, tools=[WEATHER])
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.fixture(scope="module")
def fc_server(memorised):
    with serving(serve_app.create_app(memorised, slots=2, chunk=4)) as url:
        yield url


def test_official_openai_client(memorised, fc_server):
    openai = pytest.importorskip("openai", reason="pip install -r requirements-serve.txt")
    c = openai.OpenAI(base_url=f"{fc_server}/v1", api_key="x")
    kw = dict(model=memorised.config.name, messages=CONV["messages"][:1],
              tools=[WEATHER, CLOCK], temperature=0, max_tokens=40)
    r = c.chat.completions.create(**kw)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    # streamed: the client's own accumulation of tool-call deltas
    with c.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert final.choices[0].message.tool_calls[0].function.arguments == call.function.arguments
    r2 = c.chat.completions.create(**dict(kw, messages=CONV["messages"][:1] + [
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 4}'}]))
    assert r2.choices[0].message.content == "It is 4 C in Oslo."


def test_the_chat_page_shows_calls_and_sends_results(fc_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    d = _browser()
    try:
        d.get(fc_server + "/")
        WebDriverWait(d, 30).until(lambda d: "chat" in d.find_element(By.ID, "model").text)
        d.execute_script("document.getElementById('temperature').value = '0';"
                         "document.getElementById('max_tokens').value = '40';"
                         "document.getElementById('tools').value = arguments[0];",
                         json.dumps([WEATHER, CLOCK]))
        d.find_element(By.ID, "input").send_keys("Weather in Oslo?")
        d.find_element(By.ID, "send").click()
        WebDriverWait(d, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".results input"))
        shown = d.find_element(By.CSS_SELECTOR, ".msg.assistant .tool").text
        assert "get_weather" in shown and "Oslo" in shown
        d.find_element(By.CSS_SELECTOR, ".results input").send_keys('{"temp_c": 4}')
        d.find_element(By.CSS_SELECTOR, ".results button").click()
        WebDriverWait(d, 60).until(
            lambda d: "It is 4 C in Oslo." in d.find_elements(By.CSS_SELECTOR,
                                                              ".msg.assistant .body")[-1].text)
        assert "get_weather" in d.find_element(By.CSS_SELECTOR, ".msg.tool-result").text
        assert not d.find_elements(By.CSS_SELECTOR, ".msg.error")
    finally:
        d.quit()


# ---- the function-calling task ------------------------------------------------------------------

def _fc():
    return tasks.get("function_calling")


def test_held_out_schemas_and_phrasings_are_never_trained():
    t = _fc()
    seen_names, seen_keys, seen_asks = set(), set(), set()
    for i in range(3000):
        c = t.example("train", i)
        for tool in c["tools"]:
            fn = tool["function"]
            seen_names.add(fn["name"])
            seen_keys.add((fn["name"], tuple(fn["parameters"]["properties"])))
        seen_asks.add(c["messages"][0]["content"])
    held = [t.example("test", i) for i in range(600)]
    for c in held:
        if c["kind"] == "no_call":
            continue
        name = c["expected"]["name"]
        assert name not in seen_names, name
        assert c["messages"][0]["content"] not in seen_asks
    assert {c["family"] for c in held if c["kind"] != "no_call"} >= {"timer", "translate"}
    kinds = {c["kind"] for c in held}
    assert kinds == {"call", "answer", "no_call"}


def test_grades_separate_each_kind_of_mistake():
    t = _fc()
    c = next(x for x in (t.example("test", i) for i in range(50)) if x["kind"] == "call")
    exp = c["expected"]
    call = lambda name, args: f"[call {json.dumps({'name': name, 'arguments': args})}]"
    assert t.grades(c, call(exp["name"], exp["arguments"])) == {
        "decision": True, "valid": True, "function": True, "arguments": True}
    wrong_args = {k: "nowhere" for k in exp["arguments"]}
    assert t.grades(c, call(exp["name"], wrong_args))["arguments"] is False
    assert t.grades(c, call("other_fn", exp["arguments"]))["function"] is False
    assert t.grades(c, "[call {not json}]")["valid"] is False
    assert t.grades(c, "It is sunny.")["decision"] is False
    assert not t.evaluate(c, "It is sunny.")
    a = next(x for x in (t.example("test", i) for i in range(80)) if x["kind"] == "answer")
    assert t.evaluate(a, a["messages"][-1]["content"])
    assert not t.evaluate(a, "I do not know.")
    n = next(x for x in (t.example("test", i) for i in range(80)) if x["kind"] == "no_call")
    assert t.evaluate(n, "Sure.") and not t.evaluate(n, call("get_weather", {"city": "Oslo"}))


def test_training_conversations_render_and_train_calls_and_answers(tok):
    t = _fc()
    for i in range(50):
        c = t.example("train", i)
        ids, mask = chat.render(c, tok)
        if c["kind"] == "call":
            f = tok.functions
            a = ids.index(f.call_start)
            assert mask[a] == 1 and mask[ids.index(f.result_start)] == 0


# ---- the agent loop -----------------------------------------------------------------------------

def _agent_tools(weather=lambda city: {"temp_c": 4}):
    f = WEATHER["function"]
    return [agent.Tool(f["name"], weather, f["description"], f["parameters"]),
            agent.Tool("get_time", lambda: {"time": "12:00"}, CLOCK["function"]["description"],
                       CLOCK["function"]["parameters"])]


def test_agent_through_the_engine(memorised, tmp_path):
    model = agent.EngineModel(api.Model(memorised), max_new_tokens=40)
    trace = tmp_path / "trace.jsonl"
    res = agent.run(model, _agent_tools(), "Weather in Oslo?", trace=str(trace))
    assert res.stopped == "answer" and res.answer == "It is 4 C in Oslo." and res.steps == 2
    steps = [json.loads(x) for x in trace.read_text().splitlines()]
    assert steps[0]["calls"][0]["arguments"] == {"city": "Oslo"} and steps[0]["calls"][0]["ok"]
    assert steps[1]["text"] == res.answer
    # a tool that raises: the model sees an error result, the loop goes on
    def broken(city):
        raise RuntimeError("weather service down")
    res = agent.run(model, _agent_tools(broken), "Weather in Oslo?")
    (result,) = [m for m in res.messages if m["role"] == "tool"]
    assert "weather service down" in json.loads(result["content"])["error"]
    with pytest.raises(ValueError):
        agent.run(model, _agent_tools(), "x", max_steps=0)


class Scripted:
    """A model that always makes the same calls (the loop's limits and errors, alone)."""

    def __init__(self, calls, delay=0.0):
        self.calls, self.delay, self.seen = calls, delay, 0

    def turn(self, messages, tools, step):
        time.sleep(self.delay)
        self.seen += 1
        return agent.Turn("", [dict(c, id=f"c{step}_{k}") for k, c in enumerate(self.calls)])


def test_agent_limits_and_bad_calls():
    m = Scripted([{"name": "nope", "arguments": {}}, {"name": "get_weather", "text": "{x",
                                                      "error": "not JSON"}])
    res = agent.run(m, _agent_tools(), "Weather?", max_steps=3)
    assert res.stopped == "max_steps" and res.steps == 3 and res.answer is None
    errors = [json.loads(x["content"])["error"] for x in res.messages if x["role"] == "tool"]
    assert len(errors) == 6 and "unknown function 'nope'" in errors[0]
    assert "malformed call" in errors[1]
    slow = Scripted([{"name": "get_time", "arguments": {}}], delay=0.3)
    res = agent.run(slow, _agent_tools(), "Time?", max_steps=100, time_limit_s=0.5)
    assert res.stopped == "time_limit" and slow.seen < 5


def test_agent_through_an_openai_server(memorised, fc_server):
    pytest.importorskip("openai", reason="pip install -r requirements-serve.txt")
    model = agent.OpenAIModel(f"{fc_server}/v1", memorised.config.name, max_tokens=40)
    res = agent.run(model, _agent_tools(), "Weather in Oslo?")
    assert res.stopped == "answer" and res.answer == "It is 4 C in Oslo."
    assert [m["role"] for m in res.messages] == ["user", "assistant", "tool", "assistant"]


def test_tool_from_a_python_function():

    def convert(value: float, unit: str = "m") -> dict:
        """Convert a length.

        More text."""
        return {}
    d = agent.tool(convert).definition()["function"]
    assert d["name"] == "convert" and d["description"] == "Convert a length."
    assert d["parameters"]["properties"] == {"value": {"type": "number"},
                                             "unit": {"type": "string"}}
    assert d["parameters"]["required"] == ["value"]
    assert json.loads(agent.call_tool({"convert": agent.tool(convert)},
                                      {"name": "convert", "arguments": {"nope": 1}})[0])["error"]
