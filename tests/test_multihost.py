"""Several hosts on loopback: 2 processes (one CPU device each, gloo collectives on 127.0.0.1)
train a few steps, checkpoint, resume, and give the same losses as one process with the same
global batch; they share one run directory."""
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "data.seq_len=32",
        "data.batch_size=8", "train.steps=8", "train.eval_every=4", "train.eval_batches=2",
        "train.log_every=1", "checkpoint.every=2", "train.sample_tokens=0", "model.dtype=float32"]


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)              # one device per process, not the tests' 8
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT
    return env


def _launch(workdir, extra, procs: int, devices: int):
    args = [sys.executable, "-m", "lm.main", "-e", "shakespeare_char_cpu", "--no_progress",
            "--workdir", str(workdir)] + [x for s in TINY + [f"mesh.cpu_devices={devices}"]
                                          for x in ("--set", s)] + extra
    if procs == 1:
        r = subprocess.run(args, cwd=ROOT, env=_env(), capture_output=True, text=True,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        return
    port = _port()
    ps = [subprocess.Popen(args + ["--coordinator", f"127.0.0.1:{port}", "--num_processes",
                                   str(procs), "--process_id", str(i)], cwd=ROOT, env=_env(),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
          for i in range(procs)]
    outs = [p.communicate(timeout=600) for p in ps]
    for p, (_, err) in zip(ps, outs):
        assert p.returncode == 0, err[-3000:]


def _losses(workdir):
    runs = os.path.join(str(workdir), "runs", "shakespeare_char_cpu")
    dirs = sorted(os.listdir(runs))
    assert len(dirs) == 1, dirs                    # one run directory, shared by the processes
    rows = [json.loads(l) for l in open(os.path.join(runs, dirs[0], "metrics.jsonl"))]
    train = {r["step"]: r["loss"] for r in rows if "loss" in r}
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    return train, val, os.path.join(runs, dirs[0])


@pytest.mark.slow
def test_two_processes_train_checkpoint_resume_like_one(tmp_path, data_env):
    one, two = tmp_path / "one", tmp_path / "two"
    for wd, procs, devices in ((one, 1, 2), (two, 2, 1)):
        _launch(wd, ["--stop_after", "4"], procs, devices)
        _launch(wd, ["--resume"], procs, devices)
    t1, v1, _ = _losses(one)
    t2, v2, d2 = _losses(two)
    assert sorted(t1) == sorted(t2) == list(range(1, 9))
    for k in t1:
        assert t2[k] == pytest.approx(t1[k], rel=1e-5), (k, t1[k], t2[k])
    for k in v1:
        assert v2[k] == pytest.approx(v1[k], rel=1e-5)
    steps = sorted(int(s) for s in os.listdir(os.path.join(d2, "checkpoints")) if s.isdigit())
    assert steps[-1] == 8


def test_partial_coordinates_are_a_clear_error():
    r = subprocess.run([sys.executable, "-m", "lm.main", "-e", "shakespeare_char_cpu",
                        "--coordinator", "127.0.0.1:1234"], cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--num_processes" in r.stderr
