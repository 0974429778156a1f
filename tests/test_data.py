"""Data: nanoGPT's split and vocabulary, deterministic windows, exact resume, offline errors."""
import os

import numpy as np
import pytest

from lm.config import DataConfig
from lm.data import pipeline, sources
from lm.data import corpus
from lm.data.corpus import CORPORA
from lm.tokenizer import CharTokenizer, load_tokenizer, train_bpe, trained_specials


def test_tinyshakespeare_char_split(data_env):
    cfg = DataConfig()
    s = pipeline.load_token_splits(cfg)
    text = open(os.path.join(data_env, "tinyshakespeare", "input.txt"), encoding="utf-8").read()
    assert s.tokenizer.vocab_size == len(set(text)) == 65
    n = int(len(text) * 0.9)
    assert len(s.train) == n and len(s.val) == len(text) - n
    assert s.tokenizer.decode(s.train[:14]) == text[:14]
    assert s.tokenizer.decode(s.val[-20:]) == text[-20:]


def test_windows_targets_are_next_tokens_and_deterministic():
    stream = np.arange(1000, dtype=np.uint16)
    cfg = DataConfig(seq_len=16, batch_size=4, seed=7)
    splits = pipeline.TokenSplits(stream, stream[:100], CharTokenizer(list("ab")))
    a, _ = pipeline.make_iterators(cfg, splits, eval_batches=2)
    b, _ = pipeline.make_iterators(cfg, splits, eval_batches=2)
    for _ in range(3):
        x, y = next(a), next(b)
        np.testing.assert_array_equal(x["inputs"], y["inputs"])
        np.testing.assert_array_equal(x["targets"], x["inputs"] + 1)
        assert x["inputs"].shape == (4, 16)
    other, _ = pipeline.make_iterators(DataConfig(seq_len=16, batch_size=4, seed=8), splits,
                                       eval_batches=2)
    assert not np.array_equal(next(other)["inputs"], next(a)["inputs"])


def test_iterator_resumes_exactly():
    stream = np.random.default_rng(0).integers(0, 50, 5000).astype(np.uint16)
    cfg = DataConfig(seq_len=8, batch_size=3)
    splits = pipeline.TokenSplits(stream, stream[:100], CharTokenizer(list("ab")))
    it, _ = pipeline.make_iterators(cfg, splits, eval_batches=1)
    seen = [next(it)["inputs"] for _ in range(5)]
    state = it.get_state()
    rest = [next(it)["inputs"] for _ in range(3)]
    fresh, _ = pipeline.make_iterators(cfg, splits, eval_batches=1)
    fresh.set_state(state)
    for r in rest:
        np.testing.assert_array_equal(next(fresh)["inputs"], r)
    assert not np.array_equal(seen[0], rest[0])


def test_segment_ids_follow_bos():
    stream = np.array([5, 1, 2, 0, 3, 4, 0, 6, 7, 8, 9, 1, 2], np.uint16)
    w = pipeline.TokenWindows(stream, 8, 0, "sequential", bos_id=0)
    item = w[0]
    np.testing.assert_array_equal(item["inputs"], stream[:8])
    np.testing.assert_array_equal(item["segment_ids"], [0, 0, 0, 1, 1, 1, 2, 2])


def test_val_batches_fixed_across_calls():
    stream = np.arange(3000, dtype=np.uint16)
    splits = pipeline.TokenSplits(stream, stream, CharTokenizer(list("ab")))
    _, val = pipeline.make_iterators(DataConfig(seq_len=8, batch_size=2), splits, eval_batches=3)
    a, b = list(val()), list(val())
    assert len(a) == 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_offline_error_names_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(sources.FILES, "tinyshakespeare",
                        sources.RemoteFile("tinyshakespeare/input.txt", "http://127.0.0.1:9/input.txt"))
    with pytest.raises(sources.DataUnavailableError) as e:
        sources.fetch("tinyshakespeare", timeout=2)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in str(e.value)
    assert not list(tmp_path.rglob("tmp*"))  # no partial download left behind


def test_cached_file_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path))
    p = tmp_path / "tinyshakespeare" / "input.txt"
    p.parent.mkdir()
    p.write_text("hello")
    assert sources.fetch("tinyshakespeare") == str(p)


def test_char_tokenizer_roundtrip_and_errors(tmp_path):
    tok = CharTokenizer.from_text("hello world")
    ids = tok.encode("hello")
    assert tok.decode(ids) == "hello"
    np.testing.assert_array_equal(tok.encode_array("world"), tok.encode("world"))
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("z")
    tok.save(str(tmp_path / "t.json"))
    assert load_tokenizer(str(tmp_path / "t.json")).encode("hello") == ids


def test_bpe_tokenizer_trained_on_train_split_only(data_env, tmp_path, monkeypatch):
    monkeypatch.setenv("LM_TOKENIZER_DIR", str(tmp_path))
    cfg = DataConfig(tokenizer="bpe:400")
    s = pipeline.load_token_splits(cfg)
    assert s.tokenizer.vocab_size == 400
    assert (tmp_path / "tinyshakespeare_train_bpe400.json").exists()
    text = open(os.path.join(data_env, "tinyshakespeare", "input.txt"), encoding="utf-8").read()
    n = int(len(text) * 0.9)
    assert s.tokenizer.decode(s.train) == text[:n] and s.tokenizer.decode(s.val) == text[n:]
    assert len(s.train) < 0.8 * n   # 35 merges already compress
    again = pipeline.load_token_splits(cfg)   # cached artifact, same ids
    np.testing.assert_array_equal(again.val, s.val)
    with pytest.raises(ValueError, match="bpe:<vocab size>"):
        pipeline.build_tokenizer(DataConfig(tokenizer="bpe:x"), text="abc")


def test_unknown_tokenizer_name_is_a_clear_error():
    with pytest.raises(ValueError, match="data.tokenizer.*'char'"):
        pipeline.build_tokenizer(DataConfig(tokenizer="no_such_tokenizer"), text="abc")


def test_tokenizer_source_trains_the_bpe_on_another_source(data_env, tmp_path, monkeypatch):
    """A warm-up on one corpus shares the tokenizer another corpus' run trains."""
    monkeypatch.setenv("LM_TOKENIZER_DIR", str(tmp_path))
    own = pipeline.build_tokenizer(DataConfig(tokenizer="bpe:400"))        # tinyshakespeare
    other = pipeline.build_tokenizer(DataConfig(source="induction_drill", tokenizer="bpe:400",
                                                tokenizer_source="tinyshakespeare"),
                                     text="text that must not be used")
    assert other.to_dict() == own.to_dict()
    assert sorted(os.listdir(tmp_path)) == ["tinyshakespeare_train_bpe400.json"]
    with pytest.raises(ValueError, match="data.tokenizer_source.*'nope'"):
        pipeline.build_tokenizer(DataConfig(tokenizer="bpe:400", tokenizer_source="nope"))


def test_induction_drill_repeats_each_run_and_holds_out_its_validation():
    train, val = CORPORA["induction_drill"]()
    for d in train[:50]:
        copies = d.split("\n\n")
        assert len(copies) in (2, 3) and len(set(copies)) == 1
    assert not set(val) & set(train)


def test_synthetic_copy_documents_repeat_their_run_in_token_space():
    """token_copy_docs: drawn when tokenized, deterministic, every later copy equal to the first
    run, ordinary ids only (never a special token), nothing for a tokenizer to train on; the
    warm-up's validation documents are drawn with another seed."""
    train, val = CORPORA["copy_warmup"]()
    assert len(train) > len(val) > 0 and {d["seed"] for d in val} != {d["seed"] for d in train}
    text = "a b c d e f. " * 200
    tok = train_bpe([text], 256 + len(trained_specials()) + 20)
    ordinary = tok.vocab_size - len(tok.special_tokens)
    specials = set(tok.special_tokens.values())
    for d in train[:200]:
        ids = corpus.synthetic_tokens(d, ordinary)
        assert ids == corpus.synthetic_tokens(d, ordinary)               # deterministic
        run, gap = ids[:d["length"]], ids[d["length"]:d["length"] + d["gap"]]
        assert ids == (run + gap) * (d["copies"] - 1) + run
        assert not set(ids) & specials and max(ids) < ordinary
        assert corpus.text_of(d) == ""
    assert corpus.synthetic_tokens(val[0], ordinary) != corpus.synthetic_tokens(train[0], ordinary)
    stream = pipeline.tokenize_docs(tok, train[:5] + ["plain text"], seed=0)
    assert (stream == tok.bos_id).sum() == 6
    with pytest.raises(ValueError, match="unknown synthetic"):
        corpus.synthetic_tokens({"synthetic": "nope"}, ordinary)


def test_text_of_reads_every_part_a_conversation_can_hold():
    """Tokenizer training text: function calls as the JSON the model writes, the tool's result,
    text parts of a user turn with an image; media codes are not text."""
    conv = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                     {"type": "image", "codes": [1, 2, 3, 4]}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me check. "},
            {"type": "tool_call", "id": "c0", "name": "get_time", "arguments": {"zone": "Lima"}},
            {"type": "python", "text": "2+3"}, {"type": "output", "text": "5"}]},
        {"role": "tool", "tool_call_id": "c0", "content": '{"time": "04:30"}'},
        {"role": "assistant", "content": "It is 04:30."}]}
    lines = corpus.text_of(conv).split("\n")
    assert lines[0] == "What is this?"
    assert lines[1] == 'Let me check. {"name": "get_time", "arguments": {"zone": "Lima"}}2+35'
    assert lines[2:] == ['{"time": "04:30"}', "It is 04:30."]
