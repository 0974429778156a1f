"""Same global batch and seed: 1 device, 8 devices data-parallel (jit), 8 devices FSDP (jit) and
8 devices pmap give the same losses; FSDP really shards; the step compiles once."""
import dataclasses
import logging
import os

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from lm import cpu, kernels, model, parallel, stages, steps
from lm.config import ConfigError, Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

STEPS = 5


def tiny_cfg(**mesh) -> Config:
    return Config(
        model=ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32),
        data=DataConfig(seq_len=16, batch_size=16),
        optim=OptimConfig(lr=1e-2, warmup_steps=2),
        train=TrainConfig(steps=STEPS),
        mesh=MeshConfig(**mesh)).validate()


def batches():
    """Two fixed random batches, alternating (learnable, so the loss must fall)."""
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 64, size=(16, 17)).astype(np.int32) for _ in range(2)]
    for i in range(STEPS):
        x = xs[i % 2]
        yield {"inputs": x[:, :-1], "targets": x[:, 1:]}


def losses_for(cfg, devices):
    """Per-step train losses, then the validation loss/bpb of the final state on 3 batches."""
    c = steps.compile_steps(cfg, stages.loss_fn(cfg), devices=devices)
    state = c.init_state(0)
    out = []
    for b in batches():
        state, m = c.train_step(state, c.put_batch(b))
        m = jax.device_get(m)
        out.append(float(np.ravel(m["loss"])[0]))
    groups = steps.stack_batches(list(batches())[:3])
    ev = steps.evaluate(c, state.params, groups, np.ones(64, np.int32))
    out += [ev["val_loss"], ev["val_bpb"]]
    return np.array(out), c, state


def test_onednn_under_pmap_is_each_devices_own_program(monkeypatch):
    """A bf16 run that lm.process puts on pmap (mesh.parallelism=auto, small products): the
    oneDNN custom calls run inside each device's program, and the losses are one device's
    (bf16: to its rounding)."""
    if not cpu.cpu_has_bf16():
        pytest.skip("host hardware: this CPU has no bf16 matrix hardware (AVX512-BF16 / AMX): "
                    "the oneDNN path is not selected here")
    monkeypatch.setattr(kernels, "_PER_DEVICE_PROGRAMS", [False])
    assert kernels.resolve("auto", "bfloat16") == "xla_cpu"       # 8 devices under jit
    kernels.set_per_device_programs(True)
    assert kernels.resolve("auto", "bfloat16") == "onednn"

    def bf16(**mesh):
        cfg = tiny_cfg(**mesh)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="bfloat16"))
    cfg = bf16(parallelism="pmap", data=2)
    got, c, state = losses_for(cfg, jax.devices()[:2])
    ref, _, _ = losses_for(bf16(data=1, fsdp=1), jax.devices()[:1])
    np.testing.assert_allclose(got, ref, rtol=3e-2)
    params = jax.device_get(c.host_state(state).params)
    tokens = np.zeros((2, 4, 16), np.int32)
    hlo = jax.pmap(lambda x: model.apply(params, cfg.model, x)).lower(tokens).as_text()
    assert cpu.TARGET in hlo


@pytest.fixture(scope="module")
def reference():
    return losses_for(tiny_cfg(data=1, fsdp=1), jax.devices()[:1])[0]


def test_losses_decrease_on_one_device(reference):
    assert reference[STEPS - 1] < reference[0]
    assert reference[STEPS + 1] == pytest.approx(reference[STEPS] / np.log(2))   # 1 byte/token


@pytest.mark.parametrize("mesh", [dict(data=8, fsdp=1), dict(data=1, fsdp=8),
                                  dict(data=2, fsdp=4), dict(parallelism="pmap", data=8)],
                         ids=["dp8", "fsdp8", "dp2xfsdp4", "pmap8"])
def test_same_losses_as_one_device(reference, mesh):
    got, c, state = losses_for(tiny_cfg(**mesh), jax.devices()[:8])
    np.testing.assert_allclose(got, reference, rtol=1e-5)
    if mesh.get("fsdp", 1) > 1:
        k = state.params["h_0"]["mlp"]["c_fc"]["kernel"]       # logical ('embed', 'mlp')
        assert isinstance(k.sharding, NamedSharding)
        assert k.sharding.spec[0] == "fsdp"
        shard_rows = {s.data.shape[0] for s in k.addressable_shards}
        assert shard_rows == {k.shape[0] // mesh["fsdp"]}      # really split, not replicated
        mu = state.opt_state[1][0].mu["h_0"]["mlp"]["c_fc"]["kernel"]   # Adam moment follows
        assert mu.sharding.spec == k.sharding.spec


def test_grad_accum_matches_full_batch(reference):
    cfg = tiny_cfg(data=1, fsdp=1)
    cfg.train.grad_accum = 4
    got = losses_for(cfg, jax.devices()[:1])[0]
    np.testing.assert_allclose(got, reference, rtol=1e-5)


def test_train_step_compiles_once(caplog):
    cfg = tiny_cfg(data=2, fsdp=4)
    c = steps.compile_steps(cfg, stages.loss_fn(cfg), devices=jax.devices()[:8])
    state = c.init_state(0)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        for b in batches():
            state, m = c.train_step(state, c.put_batch(b))
        jax.block_until_ready(m)
    compiles = [r for r in caplog.records
                if r.getMessage().startswith("Compiling jit(train_step)")]
    assert len(compiles) == 1, [r.getMessage() for r in compiles]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- CPU hosts: cores as XLA devices -----------------------------------------------------------

@pytest.mark.parametrize("rows,cores,want", [(12, 2, 2), (12, 8, 6), (16, 8, 8), (7, 2, 1),
                                             (12, 1, 1), (5, 16, 5)])
def test_auto_cpu_devices_divides_the_batch(rows, cores, want):
    assert parallel.auto_cpu_devices(rows, cores) == want


def test_configure_cpu_devices_in_a_fresh_process():
    """Sets the device count before JAX starts; an explicit XLA flag wins; too late warns."""
    import subprocess
    import sys
    code = ("import warnings; from lm import parallel; n = parallel.configure_cpu_devices(3); "
            "import jax; print(n, len(jax.devices('cpu')));"
            "warnings.simplefilter('error');\n"
            "try:\n parallel.configure_cpu_devices(2)\nexcept UserWarning as e: print('warned')")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["3", "3", "warned"], out.stderr[-2000:]
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=5"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.stdout.split()[:2] == ["5", "5"], out.stderr[-2000:]


def test_cpu_devices_config_is_validated():
    cfg = tiny_cfg(data=1, fsdp=1)
    cfg.mesh.cpu_devices = -1
    with pytest.raises(ConfigError, match="mesh.cpu_devices"):
        cfg.validate()
