"""Prefix caching: a prompt that starts with what a slot's cache still holds reuses those
keys/values; the replies are the ones a full prefill gives, and usage says how many were reused."""
import os
import sys

import numpy as np
import openai
import pytest

from lm import conversation as C
from lm import runs
from lm.sampling import Engine, EngineSettings
from lm.serve.app import create_app
from lm.serve.scheduler import common_prefix

sys.path.insert(0, os.path.dirname(__file__))
from test_sampling_chat import _run  # noqa: E402  (a tiny saved chat run)
from test_serve import serving  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return runs.load(_run(tmp_path_factory.mktemp("prefix"), "tiny", "sft"))


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2 and common_prefix([], [1]) == 0
    assert common_prefix([7], [8]) == 0


def test_admit_from_a_slot_cache_equals_a_full_prefill(run):
    tok, cfg = run.tokenizer, run.config.model
    eng = Engine(run.params, cfg, tokenizer=tok, settings=EngineSettings(grow_cache=False))
    first = C.render_for_completion({"messages": [{"role": "user", "content": "the quick fox"}]},
                                    tok)
    kw = dict(max_new_tokens=6, temperature=0.0, stop_tokens=[])
    st = eng.open_slots(3, out_len=16)
    st = eng.admit(st, [0], [first], **kw)
    st = eng.decode(st, 8)
    reply = eng.result(st).row(0)
    # the next turn starts with the first prompt and the reply the slot holds (all but its last)
    second = first + reply + tok.encode(" what is two plus three?")
    held = len(first) + len(reply) - 1
    st = eng.admit(st, [1], [second], cached=[(0, held)], **kw)
    st = eng.admit(st, [2], [second], **kw)                  # the same prompt, prefilled in full
    st = eng.decode(st, 8)
    g = eng.result(st)
    assert g.row(1) == g.row(2)
    np.testing.assert_allclose(g.logprobs[1], g.logprobs[2], atol=1e-4)
    with pytest.raises(ValueError, match="cached"):
        eng.admit(st, [1], [second], cached=[(0, len(second))], **kw)


def test_the_server_reuses_the_earlier_turns_and_replies_the_same(run):
    turns = ["the quick brown fox", "what is two plus three?"]
    replies, usage = {}, {}
    for cache in (True, False):
        app = create_app(run, slots=2, warmup=False, prefix_cache=cache)
        with serving(app) as url:
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
            msgs, got = [], []
            for t in turns:
                msgs.append({"role": "user", "content": t})
                r = client.chat.completions.create(model="default", messages=msgs,
                                                   max_tokens=6, temperature=0.0)
                text = r.choices[0].message.content
                msgs.append({"role": "assistant", "content": text or "ok"})
                got.append((text, r.usage.prompt_tokens_details.cached_tokens))
        replies[cache] = [t for t, _ in got]
        usage[cache] = [u for _, u in got]
    assert replies[True] == replies[False]
    assert usage[False] == [0, 0] and usage[True][0] == 0
    # the second prompt starts with the first prompt and (most of) the reply
    assert usage[True][1] >= 8
