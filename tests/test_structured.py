"""Structured outputs: response_format compiles to a grammar, constrained rows always produce
JSON that validates, free rows in the same batch are untouched, and the server answers with it
(and 400s for what it cannot honour)."""
import json
import os
import sys

import jsonschema
import openai
import pytest

from lm import conversation as C
from lm import agent, api, runs, structured
from lm.config import Config, DataConfig, ModelConfig, TrainConfig
from lm.sampling import Engine
from lm.tokenizer import train_bpe, trained_specials
from lm.serve.app import create_app

sys.path.insert(0, os.path.dirname(__file__))
from test_sampling_chat import TEXT, _run  # noqa: E402  (a tiny saved chat run)
from test_serve import serving  # noqa: E402

SCHEMA = {"type": "object",
          "properties": {"city": {"type": "string", "pattern": "^[a-z ]{1,8}$"},
                         "n": {"type": "integer", "minimum": 0, "maximum": 99},
                         "kind": {"enum": ["a", "b", "c"]},
                         "ok": {"type": "boolean"}},
          "required": ["city", "n", "kind", "ok"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "thing", "schema": SCHEMA}}
SMALL = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 99},
                                          "ok": {"type": "boolean"}},
         "required": ["n", "ok"], "additionalProperties": False}   # fits the tiny run's context


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runs.load(_run(tmp_path_factory.mktemp("structured"), "tiny", "sft"))


def _prompt(tok, text="hi"):
    return C.render_for_completion({"messages": [{"role": "user", "content": text}]}, tok)


@pytest.mark.parametrize("bad, says", [
    ({"type": "xml"}, "response_format.type"),
    ({"type": "json_schema"}, "'name'"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
     "does not compile"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "JSON Schema object"),
])
def test_bad_formats_name_the_field(bad, says):
    with pytest.raises(structured.FormatError, match=says):
        structured.grammar_for(bad)


def test_text_is_free_and_json_object_compiles():
    assert structured.grammar_for(None) is None and structured.grammar_for({"type": "text"}) is None
    assert structured.grammar_for({"type": "json_object"})


def test_constrained_rows_validate_and_free_rows_in_the_batch_are_untouched(run):
    tok, cfg = run.tokenizer, run.config.model
    eng = Engine(run.params, cfg, tokenizer=tok, tools=tok.chat)
    stop = [tok.chat.assistant_end, tok.bos_id]
    kw = dict(max_new_tokens=80, seed=3, stop_tokens=stop, n=8, temperature=1.0)
    prompts = [_prompt(tok), _prompt(tok, "the quick brown fox")]
    mixed = eng.generate(prompts, response_format=[FORMAT, None], **kw)
    free = eng.generate(prompts, **kw)
    for r in range(8):                      # the random model's replies, forced into the schema
        assert mixed.stopped[r]
        jsonschema.validate(json.loads(tok.decode(mixed.row(r, strip_stop=True))), SCHEMA)
    assert len({tok.decode(mixed.row(r)) for r in range(8)}) > 1       # still sampled
    for r in range(8, 16):                  # the free prompt's rows: as without constraints
        assert mixed.row(r) == free.row(r)
    # unconstrained, the same random model writes nothing that validates
    assert not any(_valid(tok.decode(free.row(r, strip_stop=True))) for r in range(8))


def _valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), SCHEMA)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


def test_the_server_answers_in_the_schema_and_refuses_what_it_cannot_honour(run):
    app = create_app(run, slots=6, warmup=False)
    with serving(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        msgs = [{"role": "user", "content": "hi"}]
        small = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL}}
        r = client.chat.completions.create(model="default", messages=msgs, n=4, seed=1,
                                           max_tokens=50, response_format=small)
        for ch in r.choices:
            assert ch.finish_reason == "stop"
            jsonschema.validate(json.loads(ch.message.content), SMALL)
        chunks = client.chat.completions.create(
            model="default", messages=msgs, max_tokens=50, stream=True, seed=2,
            response_format={"type": "json_object"})
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert isinstance(json.loads(text), dict)
        for bad, param in (
                ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no"}}},
                 "response_format"),
                ({"type": "yaml"}, None)):
            with pytest.raises(openai.BadRequestError) as e:
                client.chat.completions.create(model="default", messages=msgs,
                                               response_format=bad)
            assert e.value.status_code == 400
        tools = [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {}}}}]
        with pytest.raises(openai.BadRequestError, match="tool_choice"):
            client.chat.completions.create(model="default", messages=msgs, tools=tools,
                                           tool_choice="required", response_format=small)
        # and it serves on, free text beside a constrained request
        r = client.chat.completions.create(model="default", messages=msgs, max_tokens=5)
        assert r.choices[0].finish_reason in ("stop", "length")


TOOLS = [{"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Za-z]{1,6}$"}},
    "required": ["city"]}}},
    {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a"]}}}]


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory):
    """A tiny chat run with room for tool definitions (block 512)."""
    tok = train_bpe([TEXT], 300 + len(trained_specials()))
    cfg = Config(name="wide", stage="sft", init_from="x",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=1,
                                   n_head=2, n_embd=32),
                 data=DataConfig(tokenizer="/nonexistent", seq_len=32, batch_size=2),
                 train=TrainConfig(steps=1))
    return runs.load(runs.save_run(str(tmp_path_factory.mktemp("wide")), cfg, tok, step=1))


def test_strict_tools_give_text_or_valid_calls_of_offered_functions(wide_run):
    tok = wide_run.tokenizer
    eng = Engine(wide_run.params, wide_run.config.model, tokenizer=tok, tools=tok.chat)
    grammar = eng.grammars.compile({"type": "tools", "tools": TOOLS})
    f = tok.functions

    def accepts(ids):
        m = eng.grammars.matcher(grammar).matcher
        return m.consume_tokens(ids) and m.is_accepting()

    call = lambda body: [f.call_start] + tok.encode(body) + [f.call_end]
    assert accepts(call('{"name": "get_weather", "arguments": {"city": "Oslo"}}'))
    assert accepts(call('{"name": "add", "arguments": {"a": 3}}') * 2)
    assert accepts(tok.encode("Just text."))
    assert not accepts(call('{"name": "get_time", "arguments": {"city": "Oslo"}}'))
    assert not accepts(call('{"name": "add", "arguments": {"a": 3, "b": 1}}'))    # strict: no extra
    assert not accepts(call('{"name": "add", "arguments": {"a": 30}}'))
    # through the engine: a random model writes special tokens everywhere, except under the grammar
    prompt = C.render_for_completion({"tools": TOOLS, "messages": [{"role": "user",
                                                                    "content": "hi"}]}, tok)
    kw = dict(n=16, max_new_tokens=24, temperature=1.0, seed=5, stop_tokens=list(tok.chat.stops))
    free = eng.generate([prompt], **kw)
    strict = eng.generate([prompt], response_format=[{"type": "tools", "tools": TOOLS}], **kw)
    specials = lambda g, r: [t for t in g.row(r, strip_stop=True) if tok.is_special(t)
                             and t not in (f.call_start, f.call_end)]
    assert sum(len(specials(free, r)) for r in range(16)) > 0
    assert all(not specials(strict, r) for r in range(16))
    with pytest.raises(structured.FormatError, match="name"):
        structured.call_schema([{"type": "function", "function": {"parameters": {}}}])


def test_the_server_decodes_strict_functions_under_their_grammar(wide_run):
    app = create_app(wide_run, slots=4, warmup=False)
    with serving(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
        msgs = [{"role": "user", "content": "hi"}]
        r = client.chat.completions.create(model="default", messages=msgs, tools=TOOLS, n=4,
                                           max_tokens=24, seed=3)
        for ch in r.choices:
            assert not any(s in (ch.message.content or "") for s in ("<|", "|>"))
            for c in ch.message.tool_calls or []:
                assert c.function.name in ("get_weather", "add")
        with pytest.raises(openai.BadRequestError, match="strict"):
            client.chat.completions.create(model="default", messages=msgs, tools=TOOLS,
                                           response_format={"type": "json_object"})


def test_the_library_and_the_agent_loop_answer_strictly(wide_run):
    model = api.load(wide_run.run_dir)
    conv = {"tools": TOOLS, "messages": [{"role": "user", "content": "hi"}]}
    for seed in range(6):
        parts = model.respond(conv, max_new_tokens=24, temperature=1.0, seed=seed,
                              strict_calls=True)
        for p in parts:
            assert p["type"] in ("text", "tool_call"), p          # no calculator, no stray tokens
            if p["type"] == "tool_call":
                assert p["name"] in ("get_weather", "add")
    m = agent.EngineModel(model, max_new_tokens=24, strict=True)
    assert isinstance(agent.run(m, [agent.calculator], "hi", max_steps=2).steps, int)
