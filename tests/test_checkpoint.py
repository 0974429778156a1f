"""lm.checkpoint: round trip, every-N / keep-K / force, resharding 8 <-> 1 devices, corruption fallback."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import glob
import logging
import shutil

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from lm.checkpoint import CheckpointManager, describe

need8 = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before "
           "jax is first imported (another test module imported jax first)")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    opt_state: optax.OptState
    rng: jax.Array


MASK = {"w": True, "emb": True, "b": False}
TX = optax.chain(
    optax.clip_by_global_norm(1.0),
    optax.adamw(1e-2, weight_decay=0.1, mask=MASK),
    optax.masked(optax.scale_by_adam(), MASK),  # puts optax.MaskedNode leaves in the state
)


def make_numpy(seed: int) -> dict:
    """The expected values, built independently of the code under test."""
    r = np.random.default_rng(seed)
    return {"w": r.standard_normal((16, 8)).astype(np.float32),
            "emb": r.standard_normal((32, 4)).astype(np.float32),
            "b": r.standard_normal((8,)).astype(np.float32)}


def make_state(seed: int, step: int, place=None) -> TrainState:
    """A TrainState with non-trivial optimizer moments; `place(leaf) -> sharding` lays leaves out."""
    params = {k: jnp.asarray(v) for k, v in make_numpy(seed).items()}
    opt_state = TX.init(params)
    grads = jax.tree.map(lambda p: 0.5 * p + 1.0, params)
    _, opt_state = TX.update(grads, opt_state, params)
    state = TrainState(step=jnp.asarray(step, jnp.int32), params=params, opt_state=opt_state,
                       rng=jax.random.PRNGKey(seed))
    if place is not None:
        state = jax.tree.map(lambda x: jax.device_put(x, place(x)), state)
    return state


def to_numpy(state):
    return jax.tree.map(lambda x: np.array(x, copy=True), state)


def abstract(state_like, place):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=place(x)), state_like)


def one_device(_):
    return SingleDeviceSharding(jax.devices()[0])


def assert_same(restored, expected_np):
    assert jax.tree.structure(restored) == jax.tree.structure(expected_np)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(restored),
                                 jax.tree.leaves(expected_np)):
        got = np.asarray(got)
        assert got.dtype == want.dtype, jax.tree_util.keystr(path)
        assert got.shape == want.shape, jax.tree_util.keystr(path)
        np.testing.assert_array_equal(got, want, err_msg=jax.tree_util.keystr(path))


@pytest.fixture
def mesh8():
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices")
    return Mesh(np.array(jax.devices()[:8]).reshape(1, 8), ("data", "fsdp"))


def fsdp_place(mesh):
    def place(x):
        if x.ndim == 2 and x.shape[0] % mesh.shape["fsdp"] == 0:
            return NamedSharding(mesh, P("fsdp", None))
        return NamedSharding(mesh, P())
    return place


# ------------------------------------------------------------------------------------- round trip
def test_round_trip_exact(tmp_path):
    state = make_state(seed=1, step=7, place=one_device)
    expected = to_numpy(state)
    leaves = jax.tree.leaves(expected)
    assert any(isinstance(n, optax.MaskedNode) for n in jax.tree.leaves(
        state.opt_state, is_leaf=lambda n: isinstance(n, optax.MaskedNode)))
    assert expected.rng.dtype == np.uint32 and expected.step.dtype == np.int32 and len(leaves) > 10
    extra = {"data": {"index": 123}, "note": "hello", "hist": [1, 2.5, None]}

    mgr = CheckpointManager(str(tmp_path), every=100, keep=3)
    assert mgr.restore(abstract(state, one_device)) is None  # empty directory
    assert mgr.latest_step() is None and mgr.all_steps() == []
    assert mgr.save(7, state, extra, force=True) is True
    mgr.close()

    mgr = CheckpointManager(str(tmp_path), every=100, keep=3)
    assert mgr.latest_step() == 7 and mgr.all_steps() == [7]
    step, restored, got_extra = mgr.restore(abstract(state, one_device))
    mgr.close()
    assert step == 7
    assert isinstance(restored, TrainState)
    assert_same(restored, expected)
    assert got_extra == {"data": {"index": 123}, "note": "hello", "hist": [1, 2.5, None]}


def test_async_save_snapshots_state_and_extra(tmp_path):
    """After save returns the caller may donate/delete its arrays and mutate `extra`."""
    state = make_state(seed=2, step=3, place=one_device)
    expected = to_numpy(state)
    extra = {"data": {"index": 5}}
    mgr = CheckpointManager(str(tmp_path), every=1, keep=2)
    assert mgr.save(3, state, extra)
    for leaf in jax.tree.leaves(state):
        leaf.delete()
    extra["data"]["index"] = 999
    step, restored, got_extra = mgr.restore(abstract(expected, one_device))
    mgr.close()
    assert step == 3 and got_extra == {"data": {"index": 5}}
    assert_same(restored, expected)


def test_extra_must_be_json(tmp_path):
    mgr = CheckpointManager(str(tmp_path), every=1, keep=1)
    with pytest.raises(TypeError):
        mgr.save(1, make_state(0, 1), {"bad": object()}, force=True)
    mgr.close()


# ----------------------------------------------------------------------------- every / keep / force
def test_every_keep_and_force(tmp_path):
    mgr = CheckpointManager(str(tmp_path), every=2, keep=2)
    assert [mgr.should_save(s) for s in range(0, 6)] == [False, False, True, False, True, False]
    saved = [mgr.save(s, make_state(seed=s, step=s), {"data": {"index": 10 * s}})
             for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]
    assert mgr.all_steps() == [4, 6]  # keep the last 2
    assert mgr.save(7, make_state(seed=7, step=7), {"data": {"index": 70}}, force=True) is True
    assert mgr.all_steps() == [6, 7]
    # the final forced save of a step already saved is a no-op
    assert mgr.save(7, make_state(seed=99, step=7), {"data": {"index": -1}}, force=True) is False
    assert mgr.should_save(6) is False  # already saved
    mgr.close()
    assert sorted(n for n in os.listdir(tmp_path) if n.isdigit()) == ["6", "7"]

    mgr = CheckpointManager(str(tmp_path), every=2, keep=2)
    like = make_state(seed=0, step=0)
    step, restored, extra = mgr.restore(abstract(like, one_device))
    assert (step, extra) == (7, {"data": {"index": 70}})
    assert_same(restored, to_numpy(make_state(seed=7, step=7)))
    step, restored, extra = mgr.restore(abstract(like, one_device), step=6)
    assert (step, extra) == (6, {"data": {"index": 60}})
    assert_same(restored, to_numpy(make_state(seed=6, step=6)))
    with pytest.raises(FileNotFoundError):
        mgr.restore(abstract(like, one_device), step=4)  # deleted by keep=2
    mgr.close()


def test_every_zero_means_only_forced(tmp_path):
    mgr = CheckpointManager(str(tmp_path), every=0, keep=1)
    assert not any(mgr.should_save(s) for s in range(1, 20))
    assert mgr.save(5, make_state(0, 5), {}) is False
    assert mgr.save(5, make_state(0, 5), {}, force=True) is True
    mgr.close()
    assert describe(str(tmp_path))[0]["step"] == 5


# ------------------------------------------------------------------------------------- resharding
@need8
def test_save_8_devices_fsdp_restore_1_device(tmp_path, mesh8):
    place = fsdp_place(mesh8)
    state = make_state(seed=3, step=11, place=place)
    w = state.params["w"]
    assert w.sharding == NamedSharding(mesh8, P("fsdp", None))
    assert len(w.addressable_shards) == 8 and w.addressable_shards[0].data.shape == (2, 8)
    expected = to_numpy(state)
    mgr = CheckpointManager(str(tmp_path), every=1, keep=1)
    mgr.save(11, state, {"data": {"index": 1}}, force=True)
    mgr.close()

    target = SingleDeviceSharding(jax.devices()[0])
    mgr = CheckpointManager(str(tmp_path), every=1, keep=1)
    step, restored, _ = mgr.restore(abstract(expected, lambda _: target))
    mgr.close()
    assert step == 11
    assert_same(restored, expected)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == target


@need8
def test_save_1_device_restore_8_devices_fsdp(tmp_path, mesh8):
    state = make_state(seed=4, step=12, place=one_device)
    expected = to_numpy(state)
    mgr = CheckpointManager(str(tmp_path), every=1, keep=1)
    mgr.save(12, state, {"data": {"index": 2}}, force=True)
    mgr.close()

    place = fsdp_place(mesh8)
    mgr = CheckpointManager(str(tmp_path), every=1, keep=1)
    step, restored, extra = mgr.restore(abstract(expected, place))
    mgr.close()
    assert (step, extra) == (12, {"data": {"index": 2}})
    assert_same(restored, expected)
    requested = jax.tree.leaves(abstract(expected, place))
    for got, want in zip(jax.tree.leaves(restored), requested):
        assert got.sharding == want.sharding
    w = restored.params["w"]
    assert w.sharding == NamedSharding(mesh8, P("fsdp", None))
    assert len(w.addressable_shards) == 8 and w.addressable_shards[0].data.shape == (2, 8)
    np.testing.assert_array_equal(np.asarray(w.addressable_shards[3].data), expected.params["w"][6:8])


# ----------------------------------------------------------------------------- corruption, partial
# A restore that fails on a damaged file returns while some of orbax's other TensorStore reads are
# still in flight; when they finish they poke orbax's already-closed asyncio loop ("Event loop is
# closed", reported by pytest as an unraisable exception). Harmless here; silenced for these tests.
benign_loop_closed = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _save_steps(directory, steps, keep=5):
    mgr = CheckpointManager(directory, every=1, keep=keep)
    for s in steps:
        mgr.save(s, make_state(seed=s, step=s), {"data": {"index": 10 * s}})
    mgr.close()


def _data_files(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
             if os.path.isfile(f)]
    assert files, f"no data files found under {step_dir}"
    return files


def _truncate_data(step_dir):
    # every data file: orbax may leave two of the same size (state/d and state/ocdbt.process_0/d),
    # and cutting only the one restore does not read corrupts nothing (a flaky test before)
    for f in _data_files(step_dir):
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)


def _delete_data(step_dir):
    for f in _data_files(step_dir):
        os.remove(f)


def _garbage_metadata(step_dir):
    with open(os.path.join(step_dir, "state", "_METADATA"), "w") as fh:
        fh.write("{not json")


def _delete_extra(step_dir):
    shutil.rmtree(os.path.join(step_dir, "extra"))


@benign_loop_closed
@pytest.mark.parametrize("corrupt", [_truncate_data, _delete_data, _garbage_metadata, _delete_extra])
def test_corrupt_latest_falls_back_to_previous(tmp_path, caplog, corrupt):
    d = str(tmp_path)
    _save_steps(d, [1, 2, 3])
    corrupt(os.path.join(d, "3"))
    like = make_state(seed=0, step=0)
    mgr = CheckpointManager(d, every=1, keep=5)
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint"):
        out = mgr.restore(abstract(like, one_device))
    assert out is not None
    step, restored, extra = out
    assert (step, extra) == (2, {"data": {"index": 20}})
    assert_same(restored, to_numpy(make_state(seed=2, step=2)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(os.path.join(d, "3") in m and "step 3" in m for m in warnings), warnings

    # training continues from 2: the next save replaces the abandoned (corrupt) step 3
    assert mgr.save(3, make_state(seed=33, step=3), {"data": {"index": 33}})
    mgr.close()
    mgr = CheckpointManager(d, every=1, keep=5)
    step, restored, extra = mgr.restore(abstract(like, one_device))
    mgr.close()
    assert (step, extra) == (3, {"data": {"index": 33}})
    assert_same(restored, to_numpy(make_state(seed=33, step=3)))


@benign_loop_closed
def test_two_corrupt_checkpoints_fall_back_twice(tmp_path, caplog):
    d = str(tmp_path)
    _save_steps(d, [1, 2, 3])
    _truncate_data(os.path.join(d, "3"))
    _delete_data(os.path.join(d, "2"))
    mgr = CheckpointManager(d, every=1, keep=5)
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint"):
        step, restored, extra = mgr.restore(abstract(make_state(0, 0), one_device))
    mgr.close()
    assert (step, extra) == (1, {"data": {"index": 10}})
    assert_same(restored, to_numpy(make_state(seed=1, step=1)))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "step 3" in text and "step 2" in text


@benign_loop_closed
def test_all_corrupt_raises_instead_of_starting_over(tmp_path):
    d = str(tmp_path)
    _save_steps(d, [1])
    _delete_data(os.path.join(d, "1"))
    mgr = CheckpointManager(d, every=1, keep=5)
    with pytest.raises(RuntimeError, match="could be restored"):
        mgr.restore(abstract(make_state(0, 0), one_device))
    mgr.close()


@benign_loop_closed
def test_explicit_corrupt_step_raises(tmp_path):
    d = str(tmp_path)
    _save_steps(d, [1, 2])
    _truncate_data(os.path.join(d, "2"))
    mgr = CheckpointManager(d, every=1, keep=5)
    with pytest.raises(Exception):
        mgr.restore(abstract(make_state(0, 0), one_device), step=2)
    mgr.close()


@benign_loop_closed
def test_leftover_tmp_and_partial_dirs_are_ignored(tmp_path, caplog):
    d = str(tmp_path)
    _save_steps(d, [1, 2])
    # what a save killed mid-write leaves: an unfinalized tmp folder with part of the files
    tmp = os.path.join(d, "3.orbax-checkpoint-tmp-1700000000000000")
    shutil.copytree(os.path.join(d, "2"), tmp)
    shutil.rmtree(os.path.join(tmp, "extra"))
    _delete_data(tmp)
    # and a step-named folder that never got its contents (e.g. an interrupted copy)
    os.makedirs(os.path.join(d, "4", "state"))

    mgr = CheckpointManager(d, every=1, keep=5)
    assert mgr.all_steps() == [1, 2] and mgr.latest_step() == 2
    with caplog.at_level(logging.WARNING, logger="lm.checkpoint"):
        step, restored, extra = mgr.restore(abstract(make_state(0, 0), one_device))
    assert (step, extra) == (2, {"data": {"index": 20}})
    assert_same(restored, to_numpy(make_state(seed=2, step=2)))

    rows = {(r["step"], r["tmp"]): r for r in describe(d)}
    assert set(rows) == {(1, False), (2, False), (3, True), (4, False)}
    assert rows[(1, False)]["complete"] and rows[(2, False)]["complete"]
    assert not rows[(3, True)]["complete"] and not rows[(4, False)]["complete"]
    assert rows[(2, False)]["extra"] == {"data": {"index": 20}}
    assert rows[(2, False)]["bytes"] > 0

    # resuming at 2 and saving 3 and 4 works despite the leftovers
    assert mgr.save(3, make_state(seed=3, step=3), {"data": {"index": 30}})
    assert mgr.save(4, make_state(seed=4, step=4), {"data": {"index": 40}})
    assert mgr.all_steps() == [1, 2, 3, 4]
    step, restored, _ = mgr.restore(abstract(make_state(0, 0), one_device))
    mgr.close()
    assert step == 4
    assert_same(restored, to_numpy(make_state(seed=4, step=4)))


def test_save_into_foreign_checkpoints_refuses_without_restore(tmp_path):
    d = str(tmp_path)
    _save_steps(d, [5])
    mgr = CheckpointManager(d, every=1, keep=5)
    with pytest.raises(RuntimeError, match="already holds"):
        mgr.save(5, make_state(0, 5), {}, force=True)
    mgr.close()
    assert describe(d)[0]["extra"] == {"data": {"index": 50}}  # untouched


def test_restore_of_an_earlier_step_abandons_later_ones(tmp_path):
    d = str(tmp_path)
    _save_steps(d, [1, 2, 3])
    mgr = CheckpointManager(d, every=1, keep=5)
    step, _, _ = mgr.restore(abstract(make_state(0, 0), one_device), step=1)
    assert step == 1 and mgr.all_steps() == [1, 2, 3]
    assert mgr.save(2, make_state(seed=22, step=2), {"data": {"index": 22}})
    assert mgr.all_steps() == [1, 2]
    step, restored, extra = mgr.restore(abstract(make_state(0, 0), one_device))
    mgr.close()
    assert (step, extra) == (2, {"data": {"index": 22}})
    assert_same(restored, to_numpy(make_state(seed=22, step=2)))
