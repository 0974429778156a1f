"""The training loop end to end on tinyshakespeare: outputs, resume equality, CLI."""
import json
import math
import os
import subprocess
import sys

import pytest

import experiments
from lm import runs, steps, train
from lm.config import apply_overrides
from lm.logs import read_metrics
from tools import chain

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "data.seq_len=32",
        "data.batch_size=8", "train.steps=12", "train.eval_every=6", "train.eval_batches=2",
        "train.log_every=1", "checkpoint.every=4", "checkpoint.keep=5", "mesh.data=1",
        "train.sample_tokens=20", "model.dtype=float32"]


def tiny(*extra):
    return apply_overrides(experiments.get("shakespeare_char_cpu"), TINY + list(extra))


def losses(run_dir):
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    return {r["step"]: r["loss"] for r in rows if "loss" in r}, \
        {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    if not os.path.isdir(os.environ["LM_DATA_DIR"]):
        pytest.skip("needs ../shared/data (tinyshakespeare); see its README")
    d = str(tmp_path_factory.mktemp("full"))
    return d, train.run(tiny(), run_dir=d, progress=False)


def test_run_writes_outputs(full_run):
    d, summary = full_run
    for f in ("config.json", "metrics.jsonl", "sample.txt", "summary.json"):
        assert os.path.exists(os.path.join(d, f)), f
    assert os.listdir(os.path.join(d, "tb"))
    train_l, val_l = losses(d)
    assert sorted(train_l) == list(range(1, 13)) and sorted(val_l) == [6, 12]
    assert train_l[12] < train_l[1]
    assert len(open(os.path.join(d, "sample.txt")).read()) == 20
    assert json.load(open(os.path.join(d, "config.json")))["train"]["steps"] == 12
    assert summary["final_step"] == 12 and not summary["interrupted"]
    # tinyshakespeare is ASCII: one byte per character token, so bpb = nats/token / ln 2
    rows = [r for r in read_metrics(os.path.join(d, "metrics.jsonl")) if "val_bpb" in r]
    assert rows and all(r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-6)
                        for r in rows)


def test_resume_reproduces_uninterrupted_losses(full_run, tmp_path):
    d_full, _ = full_run
    d = str(tmp_path / "resumed")
    part = train.run(tiny(), run_dir=d, progress=False, stop_after=6)
    assert part["final_step"] == 6
    train.run(tiny(), run_dir=d, progress=False, resume=True)
    want_train, want_val = losses(d_full)
    got_train, got_val = losses(d)
    for step in range(7, 13):
        assert got_train[step] == want_train[step], step   # exact, not approximate
    assert got_val[12] == want_val[12]


def test_an_experiment_name_means_its_latest_finished_run(full_run, tmp_path, capsys):
    """A later stage, an evaluation or the server given an experiment's name never takes a run
    that is still training or was stopped half way; `tools.chain --resume` continues that one,
    reuses a finished one and starts afresh where the settings or the parent differ."""
    name, root = "shakespeare_char_cpu", tmp_path / "runs" / "shakespeare_char_cpu"
    done, stopped = str(root / "20260101-000000"), str(root / "20260102-000000")
    train.run(tiny(), run_dir=done, progress=False)
    train.run(tiny(), run_dir=stopped, progress=False, stop_after=4)
    assert runs.unfinished(done) is None
    assert "stopped early at step 4 of 12" in runs.unfinished(stopped)
    capsys.readouterr()
    assert runs.resolve(name, workdir=str(tmp_path)).run_dir == done
    assert stopped in capsys.readouterr().err                 # the newer run is named, not taken
    assert runs.resolve(stopped).run_dir == stopped           # by path: as it stands
    kv = TINY                                                 # the overrides both were trained with
    assert chain.decide(name, str(tmp_path), kv, None)[:2] == ("resume", stopped)
    action, _, why = chain.decide(name, str(tmp_path), kv + ["train.steps=13"], None)
    assert action == "start" and "train.steps" in why
    assert chain.decide(name, str(tmp_path), kv, done)[0] == "start"   # another parent
    os.remove(os.path.join(stopped, "summary.json"))          # killed: no summary at all
    assert "killed (latest checkpoint: step 4 of 12)" in runs.unfinished(stopped)
    os.rename(done, str(tmp_path / "elsewhere"))
    with pytest.raises(runs.RunError, match="no finished run.*--resume"):
        runs.load(name, workdir=str(tmp_path))
    train.run(tiny(), run_dir=stopped, progress=False, resume=True)
    assert runs.unfinished(stopped) is None
    assert chain.decide(name, str(tmp_path), kv, None)[:2] == ("reuse", stopped)


def test_resume_pmap_and_fsdp(full_run, tmp_path):
    """A run checkpointed under FSDP on 8 devices resumes under pmap on 8 devices."""
    d = str(tmp_path / "x")
    train.run(tiny("mesh.data=1", "mesh.fsdp=8"), run_dir=d, progress=False, stop_after=4)
    train.run(tiny("mesh.parallelism=pmap", "mesh.data=8"), run_dir=d, progress=False,
              resume=True)
    want, _ = losses(full_run[0])
    got, _ = losses(d)
    for step in range(5, 13):
        assert got[step] == pytest.approx(want[step], rel=1e-4)


def cli(*args, env_extra=None):
    env = dict(os.environ, XLA_FLAGS="", **(env_extra or {}))  # one CPU device, as on a laptop
    return subprocess.run([sys.executable, "-m", "lm.main", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_list_and_errors():
    out = cli("--list")
    assert out.returncode == 0
    for name in ("shakespeare_char_cpu", "shakespeare_char", "shakespeare_char_modern", "gpt2_124m"):
        assert name in out.stdout
    bad = cli("--experiment", "shakespeare_char_cpu", "--set", "model.n_layers=2")
    assert bad.returncode == 2 and "model.n_layers" in bad.stderr and "n_layer" in bad.stderr
    bad = cli("--experiment", "shakespeare_char_cpu", "--set", "train.steps=1.5")
    assert bad.returncode == 2 and "train.steps" in bad.stderr
    bad = cli("--experiment", "nope")
    assert bad.returncode == 2 and "shakespeare_char_cpu" in bad.stderr


def test_cli_dry_run_reports_memory_without_training(tmp_path):
    out = cli("--experiment", "shakespeare_char_cpu", "--dry_run", "--workdir", str(tmp_path))
    assert out.returncode == 0, out.stderr
    # 809,856: the parameter count HF's GPT2LMHeadModel reports for this config (torch peer)
    assert "parameters:        809,856" in out.stdout
    assert "temp_size_in_bytes" in out.stdout and "FLOPs/token" in out.stdout
    assert not os.path.exists(tmp_path / "runs")


def test_ctrl_c_checkpoints_and_resume_continues(tmp_path):
    import signal
    import time
    run_dir = tmp_path / "r"
    args = [sys.executable, "-m", "lm.main", "-e", "shakespeare_char_cpu", "--no_progress",
            "--run_dir", str(run_dir)] + [f"--set={s}" for s in TINY] + [
        "--set=train.steps=100000", "--set=checkpoint.every=100000", "--set=train.eval_every=100000",
        "--set=train.log_every=1"]
    env = dict(os.environ, XLA_FLAGS="")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not metrics.exists() or
                                      len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted at step" in out
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert len(steps) == 1 and steps[0] >= 5
    resumed = subprocess.run(args[:-4] + ["--set=train.steps=%d" % (steps[0] + 2),
                                          "--set=train.eval_every=1000", "--resume"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at step {steps[0]}" in resumed.stdout


def test_interim_evaluations_use_the_first_batches_and_the_final_one_all(tmp_path):
    a = train.run(tiny("train.eval_batches=3"), run_dir=str(tmp_path / "a"), progress=False)
    b = train.run(tiny("train.eval_batches=3", "train.interim_eval_batches=1"),
                  run_dir=str(tmp_path / "b"), progress=False)
    train.run(tiny("train.eval_batches=1"), run_dir=str(tmp_path / "c"), progress=False)
    (ta, va), (tb, vb), (_, vc) = (losses(str(tmp_path / x)) for x in "abc")
    assert ta == tb                                        # evaluation never touches training
    assert vb[12] == va[12] and vb[6] == vc[6] != va[6]    # final over 3 batches, interim over 1
    assert a["val_loss"] == b["val_loss"]


def test_resume_without_a_checkpoint_says_so_and_starts_at_zero(tmp_path, capsys):
    """`--resume` on a run folder with no checkpoint is said, not silent (issue 24)."""
    p = train.prepare(tiny("train.steps=2"), run_dir=str(tmp_path / "fresh"), resume=True,
                      progress=False)
    assert p.start == 0
    assert "has no checkpoint yet; starting at step 0" in capsys.readouterr().out


def test_cpu_peak_probe_is_sized_to_the_runs_products(monkeypatch):
    """MFU's CPU peak is a measured matmul rate: a 1024² probe for small products, 2048² where the
    run's largest product is larger (a 1024² probe ran below the chain's rate: MFU read 104%)."""
    sizes = []
    monkeypatch.setattr(steps, "measure_matmul_flops", lambda n=1024, *a, **k: sizes.append(n))
    monkeypatch.setattr(steps, "measure_onednn_flops", lambda n=1024, *a, **k: sizes.append(n))
    steps.peak_flops(tiny())
    steps.peak_flops(apply_overrides(experiments.get("chat_tiny_sft"), ["model.dtype=float32"]))
    assert sizes == [1024, 2048]


def test_tokens_per_second_counts_the_batches_the_steps_ran(monkeypatch):
    """A GRPO step trims its batch below data.batch_size × data.seq_len: the meter counts the
    positions of the batches it was given, not the configured shape."""
    import numpy as np
    cfg = experiments.get("shakespeare_char_cpu")
    monkeypatch.setattr(steps, "peak_flops", lambda cfg: 1e12)
    meter = train.StepMeter(cfg)
    clock = iter([102.0])
    monkeypatch.setattr(train.time, "perf_counter", lambda: next(clock))

    class Writer:
        def write(self, step, **row):
            return row
    meter.t_last = 100.0
    for shape in ((32, 128), (48, 64)):
        meter.count({"inputs": np.zeros(shape, np.int32)})
    row = meter.log(Writer(), 2, {"loss": 0.0, "lr": 0.0, "grad_norm": 0.0}, {})
    assert row["tokens_per_s"] == (32 * 128 + 48 * 64) / 2.0
    assert cfg.data.batch_size * cfg.data.seq_len != 32 * 128 + 48 * 64
