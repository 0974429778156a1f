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
from lm import runs, structured
from lm.sampling import Engine
from lm.serve.app import create_app

sys.path.insert(0, os.path.dirname(__file__))
from test_sampling_chat import _run  # noqa: E402  (a tiny saved chat run)
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
