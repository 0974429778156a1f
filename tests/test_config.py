"""Configs: every numeric field is range-checked with an error naming the key; overrides parse
with the field's type."""
import dataclasses
import typing

import pytest

import experiments
from lm.config import Config, ConfigError, ModelConfig, apply_overrides


def _sections(cfg: Config):
    yield "", cfg
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            yield f.name, v


def _numeric(tp) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
    return any(a in (int, float) for a in args)


def test_every_numeric_field_has_a_range():
    missing = []
    for name, section in _sections(Config()):
        hints = typing.get_type_hints(type(section))
        for f in dataclasses.fields(section):
            if _numeric(hints[f.name]) and "range" not in f.metadata:
                missing.append(f"{name}.{f.name}")
    assert not missing, f"numeric fields without num(..., lo, hi): {missing}"


@pytest.mark.parametrize("override,match", [
    ("train.steps=-5", "train.steps must be >= 1, got -5"),
    ("train.steps=0", "train.steps"),
    ("data.batch_size=0", "data.batch_size must be >= 1"),
    ("optim.lr=-1e-3", "optim.lr must be >= 0"),
    ("optim.b2=1.0", r"optim.b2 must be in \[0, 1\)"),
    ("train.eval_every=0", "train.eval_every"),
    ("model.dropout=1.5", "model.dropout"),
    ("model.norm_eps=0", "model.norm_eps must be > 0"),
    ("mesh.data=0", "mesh.data must be >= 1 or -1"),
    ("checkpoint.keep=0", "checkpoint.keep"),
    ("optim.lr=nan", "optim.lr"),
    ("optim.min_lr=1.0", "optim.min_lr"),
    ("model.qk_norm_scale=true", "model.qk_norm_scale=true needs model.qk_norm=true"),
])
def test_out_of_range_values_are_named_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(experiments.get("shakespeare_char_cpu"), [override])


def test_in_range_values_pass():
    cfg = apply_overrides(experiments.get("shakespeare_char_cpu"),
                          ["train.steps=7", "mesh.data=-1", "model.n_kv_head=2", "optim.min_lr=0",
                           "optim.lr=0"])
    assert cfg.train.steps == 7 and cfg.model.n_kv_head == 2


@pytest.mark.parametrize("override,match", [
    ("train.stepz=3", "unknown config key"),
    ("model.mlp=tanh", "choose one of"),
    ("model.kernels=fast", "choose one of"),
    ("train.steps=abc", "expected an int"),
    ("train", "key=value"),
])
def test_bad_keys_and_types(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(experiments.get("shakespeare_char_cpu"), [override])


def test_auto_dtype_is_bf16_exactly_where_the_bf16_kernels_run(monkeypatch):
    """The main job's `model.dtype=auto`: kept in the config until an entry point decides it
    (`lm.process.resolve`): bfloat16 on a CPU host with lm's bf16 kernels, float32 elsewhere.
    A model cannot be built from an undecided config."""
    from lm import kernels, process
    for here in (True, False):
        monkeypatch.setattr(kernels, "bf16_kernels_expected", lambda here=here: here)
        want = "bfloat16" if here else "float32"
        cfg = experiments.get("shakespeare_char_cpu")
        assert cfg.model.dtype == "auto"
        assert process.resolve(cfg).model.dtype == want
        assert cfg.model.dtype == "auto"                      # resolve copies, never mutates
        cfg = apply_overrides(experiments.get("shakespeare_char"), ["model.dtype=auto"])
        assert process.resolve(cfg).model.dtype == want
    with pytest.raises(ConfigError, match="auto"):
        ModelConfig(dtype="auto").compute_dtype
    # pinned dtypes are kept as given
    cfg = apply_overrides(experiments.get("shakespeare_char_cpu"), ["model.dtype=float32"])
    assert process.resolve(cfg).model.dtype == "float32"
    with pytest.raises(ConfigError, match="choose one of"):
        apply_overrides(experiments.get("shakespeare_char_cpu"), ["model.dtype=fp16"])


def test_eval_rewards_only_for_stages_that_reply_and_only_known_names():
    from lm import stages
    from lm.rl.rewards import parse
    with pytest.raises(ConfigError, match="eval.rewards.*does not"):
        stages.build(Config(stage="pretrain", eval=dataclasses.replace(
            Config().eval, rewards="labeller")).validate())
    with pytest.raises(ConfigError, match="eval.rewards: unknown reward 'nope'"):
        parse("labeller,nope", "eval.rewards")


def test_auto_parallelism_is_pmap_over_the_cores_only_for_small_onednn_steps(monkeypatch):
    """`mesh.parallelism=auto` (lm.process.resolve): pmap, one device per core, where the bf16
    step runs through oneDNN in products the kernel keeps on one thread (the main job); jit for
    the chain's wide steps, fp32, one core, FSDP, an explicit choice, or a lower threshold."""
    from lm import kernels, parallel, process
    monkeypatch.setattr(kernels, "bf16_kernels_expected", lambda: True)
    monkeypatch.setattr(parallel, "host_cores", lambda: 2)
    how = lambda name, *sets: process.resolve(
        apply_overrides(experiments.get(name), list(sets))).mesh.parallelism
    assert experiments.get("shakespeare_char_cpu").mesh.parallelism == "auto"
    assert how("shakespeare_char_cpu") == "pmap"
    assert how("chat_tiny_base") == "jit"                   # 8,192-row products: oneDNN threads
    assert how("shakespeare_char_cpu", "model.dtype=float32") == "jit"
    assert how("shakespeare_char_cpu", "mesh.cpu_devices=1") == "jit"
    assert how("shakespeare_char_cpu", "mesh.parallelism=jit") == "jit"
    assert how("shakespeare_char_cpu", "model.kernels=xla_cpu") == "jit"
    assert how("shakespeare_char_cpu", "mesh.fsdp=2") == "jit"
    monkeypatch.setenv("LM_ONEDNN_SERIAL_MACS", "0")
    assert how("shakespeare_char_cpu") == "jit"
    monkeypatch.delenv("LM_ONEDNN_SERIAL_MACS")
    monkeypatch.setattr(parallel, "host_cores", lambda: 1)
    assert how("shakespeare_char_cpu") == "jit"
    monkeypatch.setattr(kernels, "bf16_kernels_expected", lambda: False)
    monkeypatch.setattr(parallel, "host_cores", lambda: 2)
    assert how("shakespeare_char_cpu") == "jit"
