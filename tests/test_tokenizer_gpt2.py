"""GPT-2 parity: our loader of OpenAI's encoder.json + vocab.bpe gives the same ids as tiktoken's own
`gpt2` encoding built from the same files, on real text from ../shared/data."""
from __future__ import annotations

import csv
import gzip
import json
import os
import sys

import numpy as np
import pytest

from lm.tokenizer import (CHAT_SPECIAL_TOKENS, GPT2_SPLIT_PATTERN, BPETokenizer, load_tokenizer,
                          named_tokenizer)

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                    "data")
GPT2_DIR = os.path.join(DATA, "gpt2_tokenizer")
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(GPT2_DIR, "vocab.bpe")),
    reason=f"GPT-2 tokenizer files not found at {os.path.normpath(GPT2_DIR)} "
           f"(the shared data folder ../shared/data beside the repository is absent)")


def _read(rel: str, mode: str = "rt"):
    path = os.path.join(DATA, rel)
    if not os.path.exists(path):
        pytest.skip(f"{os.path.normpath(path)} is absent")
    opener = gzip.open if path.endswith(".gz") else open
    return opener(path, mode, encoding="utf-8")


def corpus(name: str) -> list[str]:
    if name == "tinyshakespeare":
        with _read("tinyshakespeare/input.txt") as f:
            return [f.read()]
    if name == "gsm8k_train":
        with _read("gsm8k/train.jsonl") as f:
            rows = [json.loads(line) for line in f]
        return [f"{r['question']}\n{r['answer']}" for r in rows]
    if name == "html_extraction_ground_truth":
        with _read("html_extraction_benchmark/ground-truth.json") as f:
            return [v["articleBody"] for v in json.load(f).values()]
    if name == "cc_text":
        out = []
        for fn in ("cc_en_head-0091.jsonl.gz", "cc_en_head-0174.jsonl.gz"):
            with _read(f"cc_text/{fn}") as f:
                out += [json.loads(line)["text"] for line in f]
        return out
    if name == "fineweb_edu_sample":
        csv.field_size_limit(sys.maxsize)
        with _read("fineweb_edu_sample/training_data.csv") as f:
            return [row["text"] for row in csv.DictReader(f)]
    raise KeyError(name)


@pytest.fixture(scope="module")
def ours() -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(os.path.join(GPT2_DIR, "encoder.json"),
                                        os.path.join(GPT2_DIR, "vocab.bpe"))


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken_ext.openai_public.gpt2(), but reading the local files (same hashes pinned)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext import openai_public

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")  # read the files directly, write no cache
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=os.path.join(GPT2_DIR, "vocab.bpe"),
            encoder_json_file=os.path.join(GPT2_DIR, "encoder.json"),
            vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
    return tiktoken.Encoding(name="gpt2", pat_str=openai_public.r50k_pat_str,
                             mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256},
                             explicit_n_vocab=50257)


def test_same_vocabulary_as_tiktoken(ours, tiktoken_gpt2):
    assert ours.n_ranks == 50256 and ours.bos_id == 50256
    assert ours.special_id("<|bos|>") == ours.special_id("<|endoftext|>") == 50256
    assert [ours.special_id(s) for s in CHAT_SPECIAL_TOKENS[1:]] == list(range(50257, 50265))
    assert ours.vocab_size == 50265
    assert ours.mergeable_ranks == tiktoken_gpt2._mergeable_ranks
    assert ours.pattern == GPT2_SPLIT_PATTERN


@pytest.mark.parametrize("name", ["tinyshakespeare", "gsm8k_train", "html_extraction_ground_truth",
                                  "cc_text", "fineweb_edu_sample"])
def test_ids_equal_tiktoken_gpt2(ours, tiktoken_gpt2, name):
    texts = corpus(name)
    assert texts and sum(map(len, texts)) > 10_000
    expected = tiktoken_gpt2.encode_ordinary_batch(texts, num_threads=2)
    got = ours.encode_batch(texts)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"{name}: document {i} differs from tiktoken's gpt2"
    assert len(got) == len(expected)
    # And back: GPT-2's byte-level BPE is lossless.
    assert [ours.decode(ids) for ids in got[:200]] == texts[:200]


def test_known_ids(ours):
    # "Hello world" is [15496, 995] in every GPT-2 implementation.
    assert ours.encode("Hello world") == [15496, 995]
    assert ours.encode("<|endoftext|>") != [50256]
    assert ours.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert ours.encode("hi", prepend_bos=True) == [50256, 5303]


def test_named_gpt2_resolves_through_the_data_cache(ours, monkeypatch):
    monkeypatch.setenv("LM_DATA_DIR", DATA)
    tok = named_tokenizer("gpt2")
    assert tok.mergeable_ranks == ours.mergeable_ranks and tok.vocab_size == 50265
    assert load_tokenizer("gpt2").encode("Hello world") == [15496, 995]


def test_load_tokenizer_from_folder_and_token_bytes(ours):
    tok = load_tokenizer(GPT2_DIR)
    assert tok.encode("Hello world") == [15496, 995]
    tb = tok.token_bytes()
    assert tb.shape == (50265,) and (tb[50256:] == 0).all() and tb.min() == 0
    assert tb[15496] == len(b"Hello") and tb[995] == len(b" world")
    assert np.array_equal(tb, ours.token_bytes())


def test_ids_equal_hugging_face_gpt2(ours):
    """A third, independent implementation: HF `tokenizers` (benchmark-only dependency)."""
    tk = pytest.importorskip("tokenizers", reason="HF tokenizers (requirements-bench.txt) is not "
                                                  "installed")
    hf = tk.Tokenizer(tk.models.BPE.from_file(os.path.join(GPT2_DIR, "encoder.json"),
                                              os.path.join(GPT2_DIR, "vocab.bpe")))
    hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    texts = corpus("gsm8k_train")[:1000] + corpus("html_extraction_ground_truth")[:50]
    expected = [e.ids for e in hf.encode_batch(texts)]
    assert ours.encode_batch(texts) == expected
