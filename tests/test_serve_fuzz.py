"""Fuzzing the server with schemathesis against its own OpenAPI schema (`/openapi.json`, request
bodies included): for every generated case, valid or not, no 5xx, an answer within a bound, and
the server alive and healthy afterwards. Deterministic (derandomized) and bounded."""
import os
import socket
import threading
import time

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from lm import runs
from lm.config import Config, DataConfig, ModelConfig
from lm.serve import app as serve_app
from lm.tokenizer import train_bpe, trained_specials

EXAMPLES = int(os.environ.get("LM_FUZZ_EXAMPLES", "60"))


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    tok = train_bpe(["Hello there! What is your name? 3 + 4 = 7. " * 40],
                    256 + len(trained_specials()) + 60)
    root = str(tmp_path_factory.mktemp("fuzz_run"))
    cfg = Config(name="tiny_sft", stage="sft", init_from="parent",
                 model=ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2,
                                   n_embd=32),
                 data=DataConfig(seq_len=32, batch_size=2))
    run = runs.load(runs.save_run(root, cfg, tok))
    app = serve_app.create_app(run, slots=4, chunk=4, max_queue=16)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started and time.time() - t0 < 60:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    th.join(timeout=30)


@pytest.fixture(scope="module")
def api(app):
    return schemathesis.openapi.from_url(app + "/openapi.json")


def test_the_schema_documents_the_request_bodies(app):
    spec = httpx.get(app + "/openapi.json").json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]
    ref = chat["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    props = spec["components"]["schemas"][ref]["properties"]
    assert {"messages", "max_tokens", "temperature", "top_p", "n", "seed", "stop"} <= set(props)


def cases(api):
    """Every route's generated requests, valid (positive) and schema-breaking (negative)."""
    ops = [r.ok() for r in api.get_all_operations()]
    assert {op.path for op in ops} >= {"/v1/chat/completions", "/v1/completions", "/health"}
    return st.one_of([op.as_strategy(mode) for op in ops
                      for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])


def test_no_server_error_no_hang_and_still_alive(api, app):
    seen = {"calls": 0, "by_status": {}}

    @given(case=cases(api))
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def one(case):
        t0 = time.time()
        r = case.call(base_url=app, timeout=60)
        took = time.time() - t0
        seen["calls"] += 1
        seen["by_status"][r.status_code] = seen["by_status"].get(r.status_code, 0) + 1
        assert r.status_code < 500, (case.as_curl_command(), r.status_code, r.text[:500])
        assert took < 60, (case.as_curl_command(), took)
        ctype = " ".join(r.headers.get("content-type") or [])     # header values come as lists
        if r.status_code >= 400 and "application/json" in ctype:
            body = r.json()
            assert set(body.get("error", {})) == {"message", "type", "param", "code"}, \
                (case.as_curl_command(), r.status_code, r.text[:500])
        health = httpx.get(app + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
    one()
    ok = seen["by_status"].get(200, 0)
    assert seen["calls"] >= EXAMPLES and ok > 0 and ok < seen["calls"], seen   # both kinds ran
