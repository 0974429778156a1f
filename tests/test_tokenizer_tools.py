"""Smoke tests of the tokenizer tools (train, visualize, evaluate, benchmark) on small inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lm.tokenizer import CHAT_SPECIAL_TOKENS, load_tokenizer, trained_specials
from tools import show_tokens, tok_eval, train_tokenizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data"))
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n\n"
        "Emoji 😀 and café, numbers 12345.\n\n") * 20


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tok")
    src = folder / "corpus.txt"
    src.write_text(TEXT, encoding="utf-8")
    out = folder / "small.json"
    assert train_tokenizer.main(["--file", str(src), "--vocab-size", "400", "--out", str(out),
                                 "--name", "small"]) == 0
    return str(out)


def test_train_tokenizer_saves_a_loadable_artifact(artifact):
    tok = load_tokenizer(artifact)
    assert tok.vocab_size == 400 and tok.name == "small"
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_train_tokenizer_errors_clearly(tmp_path, capsys):
    assert train_tokenizer.main(["--file", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_tokenizer.main(["--file", str(tmp_path / "x.txt"), "--vocab-size", "100"])


def test_tokenize_shows_tokens_ids_and_count(artifact, capsys, tmp_path):
    html_out = tmp_path / "t.html"
    assert show_tokens.main(["--tokenizer", artifact, "--no-color", "--html", str(html_out),
                          "Speak, speak <|assistant_start|> 😀"]) == 0
    out = capsys.readouterr().out
    tok = load_tokenizer(artifact)
    ids = tok.encode("Speak, speak <|assistant_start|> 😀")
    assert f"ids: {ids}" in out and f"{len(ids)} tokens" in out
    assert "│" in out and "\\xf0" in out  # token separators; the emoji's loose bytes
    page = html_out.read_text(encoding="utf-8")
    assert page.count('class="t ') == len(ids) and "&lt;" in page and "<|" not in page
    # --allow-special turns the spelling into the special token.
    assert show_tokens.main(["--tokenizer", artifact, "--allow-special", "--no-color", "<|bos|>hi"]) == 0
    assert f"ids: [{tok.bos_id}," in capsys.readouterr().out


def test_tokenize_reports_a_missing_tokenizer(capsys):
    assert show_tokens.main(["--tokenizer", "/nonexistent/tok.json", "x"]) == 2
    assert "cannot load tokenizer" in capsys.readouterr().err


def test_show_tokens_runs_as_a_script_without_shadowing_the_stdlib(artifact):
    r = subprocess.run([sys.executable, "tools/show_tokens.py", "--tokenizer", artifact,
                        "--no-color", "hello"], cwd=REPO, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "tokens (small, vocab 400)" in r.stdout


def test_tok_eval_table_and_json(artifact, capsys):
    assert tok_eval.main(["--tokenizer", artifact, "--no-gpt2", "--kinds", "code",
                          "--max-bytes", "20000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["columns"] == ["small"]
    row = result["rows"][0]
    assert row["kind"] == "code (Python)" and row["bytes"] >= 19_000
    assert 1.0 < row["bytes_per_token"]["small"] < 4.0
    assert any("cl100k" in n for n in result["notes"])
    assert tok_eval.main(["--tokenizer", artifact, "--no-gpt2", "--kinds", "code",
                          "--max-bytes", "20000"]) == 0
    assert "bytes per token" in capsys.readouterr().out


@pytest.mark.skipif(not os.path.exists(os.path.join(DATA, "gpt2_tokenizer", "vocab.bpe")),
                    reason=f"shared data folder {DATA} is absent")
def test_bench_tokenizer_json_keys(capsys):
    pytest.importorskip("tokenizers", reason="HF tokenizers (requirements-bench.txt) not installed")
    from tools import bench_tokenizer
    assert bench_tokenizer.main(["--json", "--mb", "0.2", "--repeats", "1",
                                 "--vocab-size", "512"]) == 0
    r = json.loads(capsys.readouterr().out)
    for key in ("train_mb_per_s", "peer_train_mb_per_s", "encode_mb_per_s",
                "peer_encode_mb_per_s"):
        assert r[key] > 0
    assert r["trained_vocab_size"] == r["peer_trained_vocab_size"] == 512
    assert len(CHAT_SPECIAL_TOKENS) == 9


def test_show_tokens_colours_a_conversation_by_its_loss_mask(tmp_path, capsys):
    from lm.tokenizer import train_bpe
    tok = train_bpe(["What is 2+3? It is 5. " * 30], 256 + len(trained_specials()) + 30)
    tpath = str(tmp_path / "t.json")
    tok.save(tpath)
    conv = {"messages": [{"role": "user", "content": "What is 2+3?"},
                         {"role": "assistant", "content": [
                             {"type": "python", "text": "2+3"}, {"type": "output", "text": "5"},
                             {"type": "text", "text": "It is 5."}]}]}
    cpath = tmp_path / "c.json"
    cpath.write_text(json.dumps(conv))
    assert show_tokens.main(["--tokenizer", tpath, "--conversation", str(cpath),
                             "--no-color"]) == 0
    out = capsys.readouterr().out
    assert "[<|python_start|>]" in out and "<|output_start|>5<|output_end|>" in out
    assert "[<|assistant_end|>]" in out and "<|assistant_start|>[" in out
    assert "What" in out and "[What" not in out          # the user's text is not trained
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"messages": [{"role": "assistant", "content": "x"}]}))
    assert show_tokens.main(["--tokenizer", tpath, "--conversation", str(bad)]) == 2
    assert "turn 0" in capsys.readouterr().err
