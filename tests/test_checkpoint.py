"""Orbax checkpoints: exact round trips, and clear errors for missing, corrupt or mismatched ones."""

import logging
import sys
import threading

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.state import create_state, model_key
from jaxunlearn.errors import UserError
from jaxunlearn.models import create_model


def small_state(width=0.125, seed=0):
    model = create_model("resnet18", 10, in_channels=1, width=width, seed=seed)
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.sgd(0.1, momentum=0.9)
    extra = {"shadow": jax.numpy.full((3,), float(seed) + 0.5)}
    state = create_state(params, batch_stats, tx, extra, key=model_key(seed, 1))
    # A non-trivial optimizer state and step, so the round trip is not of zeros.
    trainable = (params, extra)
    grads = jax.tree.map(lambda p: p * 0.5 + 1.0, trainable)
    _, opt_state = tx.update(grads, state.opt_state, trainable)
    return state.replace(opt_state=opt_state, step=state.step + 7)


def assert_trees_equal(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 0
    for x, y in zip(leaves_a, leaves_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_full_state_round_trip_is_exact(tmp_path):
    state = small_state()
    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, 3, state, {"epoch": 3, "note": "x"})
    restored, meta = checkpoint.restore_state(manager, 3, small_state(seed=1))
    manager.close()
    assert meta == {"epoch": 3, "note": "x", "params_hash": checkpoint.tree_hash(state.params)}  # the saved model's
    assert checkpoint.tree_hash(restored.params) == meta["params_hash"] != checkpoint.tree_hash(small_state(1).params)
    assert_trees_equal(restored.params, state.params)
    assert_trees_equal(restored.batch_stats, state.batch_stats)
    assert_trees_equal(restored.opt_state, state.opt_state)
    assert_trees_equal(restored.extra, state.extra)
    assert int(restored.step) == 7
    assert_trees_equal(restored.key, state.key)  # the PRNG key: a resumed step draws what the killed one would
    assert not np.array_equal(state.key, small_state(seed=1).key)
    assert checkpoint.latest_epoch(tmp_path) == 3
    assert checkpoint.read_meta(tmp_path)["note"] == "x"


def test_model_restores_into_shapes_only(tmp_path):
    state = small_state()
    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, 1, state, {"epoch": 1})
    manager.close()
    abstract = nnx.eval_shape(lambda: create_model("resnet18", 10, in_channels=1, width=0.125))
    _, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
    restored_params, restored_stats = checkpoint.restore_model(tmp_path, params, batch_stats)
    assert_trees_equal(restored_params, state.params)
    assert_trees_equal(restored_stats, state.batch_stats)


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, 1, small_state(width=0.25), {"epoch": 1})
    manager.close()
    _, params, batch_stats = nnx.split(
        nnx.eval_shape(lambda: create_model("resnet18", 10, in_channels=1, width=0.125)), nnx.Param, nnx.BatchStat
    )
    with pytest.raises(UserError, match=r"does not match the model: params encoder/blocks/0/bn1/bias/value has shape \(16,\), the model needs \(8,\)"):
        checkpoint.restore_model(tmp_path, params, batch_stats)


def test_missing_checkpoint_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint in"):
        checkpoint.read_meta(tmp_path / "nowhere")


def test_a_failed_read_or_write_silences_only_its_abandoned_background_work():
    """Orbax's reads and writes that complete into its closed loop after a failure are reported as unraisable
    RuntimeError("Event loop is closed"), its threads end with tracebacks and it logs each failure: dropped
    once reading or writing starts, kept dropped after a failure (they may land later), the previous hooks
    and log level back after a success; every other unraisable still reaches the previous hook."""
    from jaxunlearn.engine.checkpoint import _quiet_background_failures

    class Raises:
        def __init__(self, error: Exception):
            self.error = error

        def __del__(self):
            raise self.error

    seen, threads = [], []
    previous, previous_threads = sys.unraisablehook, threading.excepthook
    absl = logging.getLogger("absl")
    level = absl.level
    sys.unraisablehook = lambda unraisable: seen.append(str(unraisable.exc_value))
    threading.excepthook = lambda report: threads.append(str(report.exc_value))
    try:
        mine, my_threads = sys.unraisablehook, threading.excepthook
        with _quiet_background_failures():
            Raises(RuntimeError("Event loop is closed"))
            assert absl.level == logging.CRITICAL
        assert sys.unraisablehook is mine and threading.excepthook is my_threads and absl.level == level
        assert seen == []
        with pytest.raises(OSError):
            with _quiet_background_failures():
                raise OSError("a read failed")
        Raises(RuntimeError("Event loop is closed"))  # a read landing after the failure
        Raises(ValueError("something else"))
        straggler = threading.Thread(target=lambda: 1 / 0)  # a writer thread failing after it
        straggler.start()
        straggler.join()
        assert seen == ["something else"] and threads == []
    finally:
        sys.unraisablehook, threading.excepthook = previous, previous_threads
        absl.setLevel(level)
