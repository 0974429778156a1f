"""TFDS builders of lm's datasets (lm.data.tfds_builders): built offline into a temporary
TFDS_DATA_DIR, read back through tfds.data_source, they give the same batches as the files
(text sources, token shards, chat tasks); a stale build is refused; tfds.load works."""
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import experiments
from lm import tasks, train
from lm.config import DataConfig, apply_overrides
from lm.data import pipeline, sft, shards
from lm.data import tfds_builders as tb
from lm.tokenizer import train_bpe, trained_specials


@pytest.fixture
def tfds_dir(tmp_path, monkeypatch, data_env):
    d = tmp_path / "tfds"
    monkeypatch.setenv("TFDS_DATA_DIR", str(d))
    return d


def batches(cfg: DataConfig, n: int, bos_id=None):
    splits = pipeline.load_token_splits(cfg)
    train_it, val_iter = pipeline.make_iterators(cfg, splits, eval_batches=3, bos_id=bos_id)
    return [next(train_it) for _ in range(n)] + list(val_iter()), splits


def assert_same(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.mark.parametrize("train_split", [0.9, 0.75])
def test_text_source_batches_match_the_files(tfds_dir, train_split):
    cfg = DataConfig(source="tinyshakespeare", tokenizer="char", seq_len=64, batch_size=8,
                     train_split=train_split)
    files, s_files = batches(cfg, 20)
    via, s_tfds = batches(DataConfig(**{**cfg.__dict__, "reader": "tfds"}), 20)
    assert_same(files, via)
    assert s_files.tokenizer.to_dict() == s_tfds.tokenizer.to_dict()
    np.testing.assert_array_equal(s_files.val, s_tfds.val)
    name = "tinyshakespeare" if train_split == 0.9 else "tinyshakespeare-split0.75"
    assert (tfds_dir / "lm_text" / name / "1.0.0").is_dir()
    assert list((tfds_dir / "lm_text" / name / "1.0.0").glob("*.array_record*"))


def write_shards(root, sizes, prefix, seed, bos=1, vocab=3000):
    rng = np.random.default_rng(seed)
    out = []
    for k, n in enumerate(sizes):
        arr = rng.integers(2, vocab, n).astype(np.uint16)
        arr[rng.random(n) < 0.02] = bos            # documents start at BOS
        path = str(root / f"{prefix}_{k:05d}.npy")
        shards.save_atomic(path, arr)
        out.append(path)
    return out


def test_token_shard_batches_match_the_files(tfds_dir, tmp_path):
    # shard sizes that cross the 4,096-token records at odd places
    write_shards(tmp_path, [5000, 3, 9000, 4096], "shard", 0)
    write_shards(tmp_path, [4097, 100], "val", 1)
    tok_path = tmp_path / "tok.json"
    train_bpe(["a few words for a tokenizer"], 256 + len(trained_specials())).save(str(tok_path))
    for val in ("", str(tmp_path / "val_*.npy")):
        cfg = DataConfig(source="shards", shards=str(tmp_path / "shard_*.npy"), val_shards=val,
                         tokenizer=str(tok_path), seq_len=128, batch_size=6,
                         segment_on_bos=True)
        files, s_files = batches(cfg, 30, bos_id=1)
        via, s_tfds = batches(DataConfig(**{**cfg.__dict__, "reader": "tfds"}), 30, bos_id=1)
        assert_same(files, via)
        assert len(s_files.train) == len(s_tfds.train) and len(s_files.val) == len(s_tfds.val)


def test_record_stream_slices_like_the_shard_stream(tfds_dir, tmp_path):
    files = write_shards(tmp_path, [4095, 1, 8192, 7000], "shard", 2)
    ref = shards.ShardStream(files)
    stream, val = tb.token_shards(files)
    assert val is None and len(stream) == len(ref) and stream.dtype == ref.dtype
    rng = np.random.default_rng(0)
    edges = [0, 1, 4095, 4096, 4097, 8192, len(ref) - 1, len(ref)]
    cuts = [(a, b) for a in edges for b in edges] + \
        [tuple(sorted(rng.integers(0, len(ref) + 1, 2))) for _ in range(200)]
    for a, b in cuts:
        np.testing.assert_array_equal(stream[a:b], ref[a:b])
    assert stream[-1] == ref[-1] and stream[4096] == ref[4096]
    with pytest.raises(IndexError):
        stream[len(ref)]
    with pytest.raises(ValueError, match="contiguous"):
        stream[0:10:2]
    # a changed shard is a new dataset (its id digests names, sizes and times)
    assert tb.shards_config(files).name == tb.shards_config(files).name
    os.utime(files[0], ns=(1, 1))
    assert tb.shards_config(files).name != tb.shards_config(list(reversed(files))).name


@pytest.fixture(scope="module")
def chat_tok():
    text = ("What is 3 plus 4? 3 + 4 = 7. Who are you? I am a small assistant. ") * 30
    return train_bpe([text], 256 + len(trained_specials()) + 30)


def test_sft_batches_match_the_task_library(tfds_dir, chat_tok):
    mix = {"identity": 1, "arithmetic_easy": 2, "dolly": 1}      # generated and fixed tasks
    files = sft.SFTBatches(chat_tok, mix, split="train", seq_len=255, batch_size=4, buffer=16,
                           seed=3)
    examples = tb.TaskExamples("tfds", tfds_examples=400)
    via = sft.SFTBatches(chat_tok, mix, split="train", seq_len=255, batch_size=4, buffer=16,
                         seed=3, examples=examples)
    assert_same([next(files) for _ in range(6)], [next(via) for _ in range(6)])
    assert files.packer.get_state() == via.packer.get_state()
    held = sft.SFTBatches(chat_tok, mix, split="test", seq_len=255, batch_size=4, buffer=16,
                          seed=4)
    held_via = sft.SFTBatches(chat_tok, mix, split="test", seq_len=255, batch_size=4, buffer=16,
                              seed=4, examples=examples)
    assert_same([next(held)], [next(held_via)])
    # dolly is written whole; the generated tasks hold tfds_examples training conversations
    assert len(tb.ChatTaskExamples("dolly", "train")) == tasks.get("dolly").size("train")
    small = tb.ChatTaskExamples("identity", "train", train_examples=400)
    assert len(small) == 400
    with pytest.raises(IndexError, match="holds 400 conversations.*tfds_examples"):
        small[400]


def test_a_stale_build_is_refused(tfds_dir, monkeypatch):
    tb.ChatTaskExamples("identity", "test", train_examples=5, other_examples=5)
    t = tasks.get("identity")
    real = t.example
    monkeypatch.setattr(t, "example", lambda split, i: {**real(split, i), "messages": []})
    with pytest.raises(tb.StaleDatasetError, match="delete that folder"):
        tb.ChatTaskExamples("identity", "test", train_examples=5, other_examples=5)


def test_bad_names_are_clear_errors(tfds_dir):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        tb.ChatTaskExamples("nope", "train")
    with pytest.raises(ValueError, match="unknown split 'rl'"):
        tb.ChatTaskExamples("identity", "rl")
    with pytest.raises(ValueError, match="unknown text source"):
        pipeline.load_token_splits(DataConfig(source="nope", reader="tfds"))
    with pytest.raises(ValueError, match="reader='files'"):
        pipeline.load_token_splits(DataConfig(source="chat_tiny", reader="tfds",
                                              tokenizer="bpe:300"))


def test_tfds_load_and_data_source_in_a_notebook(tfds_dir):
    """What the README shows: the builders registered by importing the module, tfds.load
    (tf.data) and tfds.data_source (no TensorFlow) on the default config, every task."""
    # (TFDS reads $TFDS_DATA_DIR once, at import: a notebook sets it first or passes data_dir)
    ds = tfds.load("lm_chat_tasks", split="test", data_dir=tfds_dir)
    src = tfds.data_source("lm_chat_tasks", split="test", data_dir=tfds_dir)
    first = next(iter(tfds.as_numpy(ds)))
    assert first["conversation"] == src[0]["conversation"]
    names = {src[k]["task"].decode() for k in range(len(src))}
    assert {"identity", "arithmetic_easy", "mmlu", "everyday_math"} <= names
    conv = json.loads(src[0]["conversation"])
    name, k = src[0]["task"].decode(), int(src[0]["index"])
    assert conv == json.loads(json.dumps(tasks.get(name).example("test", k)))


def test_a_training_run_reads_through_tfds(tfds_dir, tmp_path):
    """The main job's experiment with data.reader=tfds: the same losses as from the file."""
    out = []
    for reader in ("files", "tfds"):
        cfg = apply_overrides(experiments.get("shakespeare_char_cpu"), [
            f"data.reader={reader}", "train.steps=6", "train.eval_every=3",
            "train.eval_batches=2", "train.sample_tokens=0", "model.n_layer=1",
            "model.dtype=float32", "data.batch_size=8"])
        out.append(train.run(cfg, run_dir=str(tmp_path / reader), progress=False))
    assert out[0]["val_loss"] == out[1]["val_loss"]
