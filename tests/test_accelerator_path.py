"""The accelerator recipe's code paths, exercised on CPU: FineWeb-style shards from parquet/JSONL
(hermetic files made here), resumable with the same output; gpt2_124m at toy size end to end
(held-out shard, HellaSwag during training, checkpoint, resume); the device check's script."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tools import prepare_fineweb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [f"Document {i}: the quick brown fox number {i} jumps over {i % 7} lazy dogs." * (1 + i % 3)
        for i in range(60)]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    d = tmp_path_factory.mktemp("fw")
    # two parquet files with FineWeb's extra columns, and a JSONL file
    for k, part in enumerate((DOCS[:25], DOCS[25:45])):
        t = pa.table({"text": part, "id": [f"id{k}-{i}" for i in range(len(part))],
                      "score": [3.5] * len(part), "int_score": [3] * len(part)})
        pq.write_table(t, str(d / f"part_{k}.parquet"), row_group_size=7)
    with open(d / "part_2.jsonl", "w") as f:
        for t in DOCS[45:]:
            f.write(json.dumps({"text": t, "url": "http://x"}) + "\n")
    return str(d)


def _prepare(inputs, out, *extra):
    return prepare_fineweb.main(["--input", os.path.join(inputs, "*.parquet"), "--input",
                                 os.path.join(inputs, "*.jsonl"), "--out", str(out),
                                 "--tokenizer", "gpt2", "--workers", "2", "--val-docs", "10",
                                 "--shard-tokens", "300", "--batch-docs", "4",
                                 "--no_progress", *extra])


def _digest(folder):
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder)) if f.endswith(".npy")}


def test_shards_hold_the_documents_tokens_in_order(inputs, tmp_path, data_env):
    from lm.data.shards import ShardStream, read_index
    from lm.tokenizer import BPETokenizer
    assert _prepare(inputs, tmp_path / "a") == 0
    idx = read_index(str(tmp_path / "a"))
    assert idx["documents"] == 50 and len(idx["val"]) == 1 and len(idx["shards"]) > 2
    tok = BPETokenizer.gpt2()
    want = np.concatenate([[tok.bos_id] + tok.encode(t) for t in DOCS[10:]])
    files = [os.path.join(tmp_path / "a", s["file"]) for s in idx["shards"]]
    got = ShardStream(files)[0:len(want) + 10]
    np.testing.assert_array_equal(got, want)
    val = np.load(os.path.join(tmp_path / "a", idx["val"][0]["file"]))
    np.testing.assert_array_equal(val, np.concatenate([[tok.bos_id] + tok.encode(t)
                                                       for t in DOCS[:10]]))
    # deterministic, and a rerun of a complete directory does nothing
    assert _prepare(inputs, tmp_path / "c") == 0
    assert _digest(tmp_path / "c") == _digest(tmp_path / "a")
    assert _prepare(inputs, tmp_path / "c") == 0


def test_resume_after_a_kill_gives_the_same_output(inputs, tmp_path, data_env):
    """Kill prepare_fineweb part way (after some shards are written), rerun: identical files."""
    ref = tmp_path / "ref"
    assert _prepare(inputs, ref) == 0
    out = tmp_path / "killed"
    code = ("import sys, os\nfrom tools import prepare_fineweb as p\n"
            "import lm.data.shards as s\n"
            "real = s.write_json_atomic\n"
            "calls = [0]\n"
            "def boom(path, obj):\n"
            "    real(path, obj)\n"
            "    calls[0] += 1\n"
            "    if calls[0] == 3: os._exit(9)\n"
            "s.write_json_atomic = boom\n"
            f"sys.exit(p.main(['--input', {os.path.join(inputs, '*.parquet')!r}, '--input', "
            f"{os.path.join(inputs, '*.jsonl')!r}, '--out', {str(out)!r}, '--tokenizer', 'gpt2', "
            "'--workers', '2', '--val-docs', '10', '--shard-tokens', '300', '--batch-docs', '4', "
            "'--no_progress']))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 9, r.stderr[-2000:]
    assert not os.path.exists(out / "index.json")
    assert _prepare(inputs, out) == 0
    assert _digest(out) == _digest(ref)


def test_offline_download_names_where_to_put_the_files(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert prepare_fineweb.main(["--subset", "sample-10BT", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert os.path.join(str(tmp_path), "fineweb-edu", "sample/10BT", "*.parquet") in err
    assert "--input" in err


def test_input_without_a_text_column_is_a_clear_error(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["x"]}), str(tmp_path / "bad.parquet"))
    assert prepare_fineweb.main(["--input", str(tmp_path / "bad.parquet"), "--out",
                                 str(tmp_path / "o"), "--no_progress"]) == 2
    assert "no 'text' column" in capsys.readouterr().err


@pytest.mark.slow
def test_gpt2_124m_recipe_at_toy_size(inputs, tmp_path, data_env):
    """Every code path of the accelerator recipe on CPU: local shards with a held-out shard,
    HellaSwag (acc_norm) during training, checkpoints, --resume."""
    shards = tmp_path / "shards"
    assert _prepare(inputs, shards) == 0
    toy = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=64",
           "data.seq_len=32", "data.batch_size=8", "train.grad_accum=2", "train.steps=6",
           "train.eval_every=3", "train.eval_batches=2", "train.log_every=1",
           "train.sample_tokens=8", "eval.every=3", "eval.limit=8", "eval.batch_size=8",
           "checkpoint.every=3", "model.dtype=bfloat16", "mesh.cpu_devices=2",
           f"data.shards={shards}/shard_*.npy", f"data.val_shards={shards}/val_*.npy"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("XLA_FLAGS", None)
    args = [sys.executable, "-m", "lm.main", "-e", "gpt2_124m", "--workdir", str(tmp_path),
            "--no_progress"] + [x for s in toy for x in ("--set", s)]
    r = subprocess.run(args + ["--stop_after", "3"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(args + ["--resume"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    run = os.path.join(tmp_path, "runs", "gpt2_124m")
    (d,) = os.listdir(run)
    rows = [json.loads(l) for l in open(os.path.join(run, d, "metrics.jsonl"))]
    hs = [r for r in rows if "bench/hellaswag/acc_norm" in r]
    assert [r["step"] for r in hs] == [3, 6] and all(0 <= r["bench/hellaswag/acc_norm"] <= 1
                                                     for r in hs)
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]
    assert os.path.exists(os.path.join(run, d, "report.md"))


def test_device_check_script_logic_on_cpu(tmp_path):
    # the script calls `python3`: the interpreter running these tests, activated or not
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = dict(os.environ, LM_DEVICE_CHECK_SMOKE="1", OUT=str(tmp_path), PYTHONPATH=ROOT, PATH=path)
    env.pop("XLA_FLAGS", None)
    r = subprocess.run(["bash", "tools/device_check.sh"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    d = json.load(open(tmp_path / "device_check.json"))
    assert [x["config"] for x in d["results"]] == ["shakespeare_char", "gpt2_124m"]
    assert all(x["tokens_per_s"] > 0 and x["step_s"] > 0 for x in d["results"])
    assert d["tests_rc"] == 0 and d["timing_rc"] == 0
