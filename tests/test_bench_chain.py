"""The nanochat peer harness's data (tools/nanochat_peer.py, used by tools/bench_chain.py): what
we export is what nanochat's own reader yields.

A small fake corpus (texts and a conversation), written as nanochat's parquet shards; nanochat's
`nanochat.dataset.parquets_iter_batched` (the peer folder on sys.path, NANOCHAT_BASE_DIR at the
export, in a separate process as the harness runs it) reads back exactly the held-out documents
as its "val" split and exactly the training documents as "train". Skipped with the reason when
../shared/peers/nanochat, pyarrow or torch is absent.
"""
import importlib.util
import os

import numpy as np
import pytest

pytest.importorskip("pyarrow", reason="pyarrow (requirements.txt) is not installed")

from lm.data import corpus  # noqa: E402
from lm.data.sft import SFTBatches  # noqa: E402
from lm.tokenizer import train_bpe, trained_specials  # noqa: E402
from tools import bench_chain, bench_chain_sft, nanochat_peer  # noqa: E402

TRAIN = ([f"Training document {i}: " + "word " * (i % 7) for i in range(40)]
         + ["", "unicode: naïve café — 你好 🌍", "lines\n\nand\nmore lines",
            {"messages": [{"role": "user", "content": "What is 2+3?"},
                          {"role": "assistant", "content": [
                              {"type": "text", "text": "Let me compute. "},
                              {"type": "python", "text": "2+3"},
                              {"type": "python_output", "text": "5"},
                              {"type": "text", "text": "It is 5."}]}]}])
VAL = [f"Held-out story {i}. The end." for i in range(9)] + ["held-out: ünïcödé\n"]


def _peer_or_skip():
    if not os.path.isfile(os.path.join(nanochat_peer.PEER, "scripts", "base_train.py")):
        pytest.skip(f"nanochat peer is absent ({nanochat_peer.PEER}; see its PEER.md)")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch (requirements-bench.txt) is not installed: nanochat imports it")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("nanochat_base"))
    m = nanochat_peer.export(TRAIN, VAL, base, shard_rows=16, row_group=5, name="fake")
    return base, m


@pytest.fixture(scope="module")
def read(exported):
    _peer_or_skip()
    return nanochat_peer.read_back(exported[0])


def test_layout_is_nanochats(exported):
    base, m = exported
    files = sorted(os.listdir(os.path.join(base, nanochat_peer.DATA_SUBDIR)))
    assert files == sorted(m["files"]) and files[-1] == m["val_file"]
    assert len(files) == 4                    # 44 training documents in shards of 16, then val
    assert (m["train_docs"], m["val_docs"]) == (len(TRAIN), len(VAL))
    assert m["train_conversations"] == 1 and m["val_conversations"] == 0


def test_nanochat_reads_back_the_held_out_documents_as_its_val_split(read):
    assert read["val"] == nanochat_peer.shuffled(VAL, nanochat_peer.SEED + 1)
    assert sorted(read["val"]) == sorted(VAL)          # the very documents our val_bpb scores


def test_nanochat_reads_back_the_training_documents(read):
    texts = [corpus.text_of(d) for d in TRAIN]
    assert read["train"] == nanochat_peer.shuffled(texts, nanochat_peer.SEED)
    assert sorted(read["train"]) == sorted(texts)
    assert "What is 2+3?\nLet me compute. 2+35It is 5." in read["train"]   # text_of's turns


def test_export_is_deterministic(exported, tmp_path):
    base, m = exported
    again = nanochat_peer.export(TRAIN, VAL, str(tmp_path), shard_rows=16, row_group=5, name="fake")
    assert again["files"] == m["files"]               # sha256 of every file
    for name in m["files"]:
        with open(os.path.join(base, nanochat_peer.DATA_SUBDIR, name), "rb") as f1, \
                open(os.path.join(tmp_path, nanochat_peer.DATA_SUBDIR, name), "rb") as f2:
            assert f1.read() == f2.read()


def test_export_refuses_a_folder_that_is_not_ours(tmp_path):
    data = tmp_path / nanochat_peer.DATA_SUBDIR
    data.mkdir()
    (data / "shard_00000.parquet").write_bytes(b"someone else's")
    with pytest.raises(ValueError, match="not an export of ours"):
        nanochat_peer.export(TRAIN, VAL, str(tmp_path))


def test_link_base_shares_the_export(exported, tmp_path, read):
    base = nanochat_peer.link_base(str(tmp_path / "run"), exported[0])
    assert os.path.islink(os.path.join(base, nanochat_peer.DATA_SUBDIR))
    assert sorted(os.listdir(os.path.join(base, nanochat_peer.DATA_SUBDIR))) == \
        sorted(exported[1]["files"])


def test_nanochats_tok_train_runs_on_the_export(exported, tmp_path, read):
    base = nanochat_peer.link_base(str(tmp_path / "tok"), exported[0])
    info = nanochat_peer.train_tokenizer(base, 300)
    for f in ("tokenizer.pkl", "token_bytes.pt"):
        assert os.path.exists(os.path.join(base, nanochat_peer.TOKENIZER_SUBDIR, f))
    assert info["vocab_size"] == 300 and "--vocab-size=300" in info["command"]


def test_time_to_interpolates_between_evaluations():
    curve = [(10.0, 3.0), (20.0, 2.0), (30.0, 1.5)]
    assert bench_chain.time_to(curve, 2.5) == pytest.approx(15.0)
    assert bench_chain.time_to(curve, 3.5) == 10.0          # already there at the first point
    assert bench_chain.time_to(curve, 1.0) is None           # never
    assert bench_chain.median_or_none([None, 5.0, None]) is None
    assert bench_chain.median_or_none([None, 5.0, 7.0]) == 7.0


def test_nanochat_output_is_parsed():
    lines = ["COMPUTE_DTYPE: torch.float32 (auto-detected: no CUDA (CPU/MPS))",
             '  "n_layer": 6,', '  "n_embd": 384,',
             "transformer_matrices    : 10,617,048", "scalars                 : 38",
             "Step 00000 | Validation bpb: 3.578013"]
    lines += [f"step {i:05d}/00040 ({i * 2.5:.2f}%) | loss: 8.0 | lrm: 0.03 | dt: "
              f"{9000.0 if i == 0 else 1000.0}ms | tok/sec: 16,384 | bf16_mfu: 0.00 | epoch: 1"
              for i in range(40)] + ["Step 00040 | Validation bpb: 2.5"]
    r = bench_chain.Run(0, 60.0, [(float(i), x) for i, x in enumerate(lines)], "log")
    out = bench_chain.parse_peer(r)
    assert out["steps"] == 40 and out["final_bpb"] == 2.5 and out["dtype"] == "torch.float32"
    assert out["tokens_per_s"] == 16384.0                    # the first 10 steps left out
    assert out["train_s"] == pytest.approx(48.0)
    assert out["curve"] == [(5.0, 3.578013), (46.0, 2.5)]
    assert out["param_counts"] == {"transformer_matrices": 10617048, "scalars": 38}
    assert out["model_config"] == {"n_layer": 6, "n_embd": 384}


def test_sft_batch_as_nanochat_reads_it():
    """tools/bench_chain_sft.py: nanochat's targets are -1 (its ignore index) exactly where our
    weights are 0 and our targets elsewhere; the inputs are ours; its loss counts our tokens."""
    _peer_or_skip()
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    text = "What is 3 + 2? It is 5. What is your name? I'm Lumen, a small assistant. " * 40
    tok = train_bpe([text], 256 + len(trained_specials()) + 30)
    batch = next(SFTBatches(tok, {"identity": 1, "arithmetic_easy": 2}, split="train",
                            seq_len=127, batch_size=4, buffer=16, seed=0))
    x, y = bench_chain_sft.peer_batch(batch)
    w = batch["weights"]
    assert x.dtype == np.int32 and y.dtype == np.int64        # as chat_sft's loader hands them
    np.testing.assert_array_equal(x, batch["inputs"])
    assert (w == 0).any() and (w > 0).any()
    np.testing.assert_array_equal(y == bench_chain_sft.IGNORE, w == 0)
    np.testing.assert_array_equal(y[w > 0], batch["targets"][w > 0])
    logits = torch.randn(*y.shape, tok.vocab_size, generator=torch.Generator().manual_seed(0))
    peer = F.cross_entropy(logits.view(-1, tok.vocab_size), torch.from_numpy(y).view(-1),
                           ignore_index=-1)
    ce = F.cross_entropy(logits.view(-1, tok.vocab_size),
                         torch.from_numpy(batch["targets"]).long().view(-1), reduction="none")
    ours = (ce * torch.from_numpy(w).view(-1)).sum() / w.sum()
    assert float(peer) == pytest.approx(float(ours), rel=1e-5)
