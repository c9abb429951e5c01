"""The contract every registered method meets, run over all of them (a new method gets it for free).

For each method, on digits with a small untrained network (tests/small_model.py: the package's masked BatchNorm,
an embedding and a head; the end-to-end tests of `make test-long` run every method on ResNet-18) and small
settings (`SMALL`):
- its reference defaults validate in every mode it supports, and bad values are refused;
- its epoch plan is deterministic in (seed, epoch) and another seed gives another plan;
- one step of its loss is finite, and equal on 1 and 2 devices (float32, one step: parameters, statistics and
  losses to rtol 1e-5, atol 1e-6, the policy of tests/test_parallel.py; the optimizer state, which after one
  step holds raw gradients (or Adam's moments of them), to rtol 1e-4, atol 1e-5: a BatchNorm parameter's
  gradient sums many terms that cancel, and its float32 reduction-order noise was measured at 5e-5 relative).
  Adam's first step moves every coordinate by about lr·g/(|g| + ε), ±lr wherever |g| ≫ ε but sensitive to
  noise where |g| is near ε, so the parameters of the methods trained with Adam (`ADAM`) are compared to
  atol 1e-2·lr (measured: 1.3e-4·lr for UNSIR, 1.7e-3·lr for Bad Teacher);
- two models stepping side by side, vmapped, each with its own seed, constants and optimizer state: model 0's
  step equals the single model's (same tolerance);
- its state after the step survives a checkpoint round trip bit for bit;
- it steps a user's model (`EmbeddingClassifier` of modules it has never seen) on 1 and 2 devices alike.
"""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.config import SupervisedHparams, TrainConfig, override
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import load_dataset
from jaxunlearn.data.splits import make_split, parse_forget
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.ensemble import make_ensemble, make_models_epoch_fn, place_group, place_group_blocks, stack
from jaxunlearn.engine.epoch import make_epoch_fn, place_blocks, steps_in
from jaxunlearn.engine.step import eval_forward, make_train_step
from jaxunlearn.engine.parallel import AXIS, Execution, data_mesh, local_replica, replicate
from jaxunlearn.engine.state import create_state
from jaxunlearn.errors import UserError
from jaxunlearn.methods import METHODS, Context
from jaxunlearn.methods.base import StartingModel
from jaxunlearn.models import EmbeddingClassifier, relu_l2_normalise
from small_model import small_model

SMALL = {
    "contrastive": ("random:16", {"batch_size": "16", "retain_per_forget": "2", "epochs": "1"}),
    "retrain": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "finetune": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "gradient_ascent": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "neggrad_plus": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "random_label": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "l1_sparse": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "salun": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "boundary_shrink": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "boundary_expand": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "scrub": ("class:5", {"epochs": "1", "batch_size": "64", "msteps": "1", "forget_batch_size": "64"}),
    "unsir": ("class:5", {"epochs": "2", "batch_size": "64", "noise_batch": "8", "noise_steps": "2",
                          "noise_copies": "2", "retain_per_class": "20"}),
    "bad_teacher": ("class:5", {"epochs": "1", "batch_size": "64"}),
}
"""Every method at a size that takes one step quickly: (forget spec, overrides). Batches divide by 2 devices."""

ORIGINAL = TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=1, batch_size=64))
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
GRADIENT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
ADAM = {"unsir", "bad_teacher"}
"""The methods whose optimizer is Adam (their parameters get the looser one-step tolerance)."""


@pytest.fixture(scope="module")
def digits():
    dataset = load_dataset("digits", None)
    return dataset, DeviceData.from_dataset(dataset)




class UserEmbedding(nnx.Module):
    """A user's embedding network with its own layer names and no `mask` argument."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), strides=2, use_bias=False, rngs=rngs)  # BatchNorm follows
        self.norm = nnx.BatchNorm(8, axis_name=AXIS, rngs=rngs)
        self.out = nnx.Linear(8, 16, rngs=rngs)

    def __call__(self, x, *, train):
        x = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
        return relu_l2_normalise(self.out(x.mean(axis=(1, 2))))


def user_model(num_classes, seed):
    """An `EmbeddingClassifier`: the user's embedding network and a plain linear head."""
    rngs = nnx.Rngs(seed)
    return EmbeddingClassifier(UserEmbedding(rngs), nnx.Linear(16, num_classes, rngs=rngs))


def setup(name, dataset, data, seed=0, build=small_model):
    """(hparams, context, plan of epoch 0, loss, optimizer, state, aux, graphdef) of method `name` on the
    model `build(num_classes, seed)`."""
    method = METHODS[name]
    forget, overrides = SMALL[name]
    split = make_split(parse_forget(forget), dataset.train_labels, dataset.num_classes, seed=0)
    hparams = override(method.default_hparams(split.spec.mode, ORIGINAL), overrides)
    hparams.validate()
    context = Context(split=split, num_classes=dataset.num_classes, pairing="default", seed=seed,
                      train_labels=dataset.train_labels, image_shape=dataset.image_shape,
                      mean=tuple(dataset.mean), std=tuple(dataset.std))
    graphdef, params, batch_stats = nnx.split(build(dataset.num_classes, seed), nnx.Param, nnx.BatchStat)
    fresh = lambda: nnx.split(build(dataset.num_classes, seed + 1), nnx.Param, nnx.BatchStat)[1:]
    start = StartingModel(graphdef=graphdef, params=params, batch_stats=batch_stats, forward=eval_forward(graphdef),
                          data=data, fresh=fresh)
    aux = method.prepare(hparams, context, start)
    extra = method.init_extra(hparams, context, start)
    steps = [steps_in(method.plan(hparams, context, epoch)) for epoch in range(hparams.epochs)]
    tx, _ = method.optimizer(hparams, steps, aux)
    plan = method.plan(hparams, context, 0)
    state = create_state(jax.tree.map(np.array, params), jax.tree.map(np.array, batch_stats), tx, extra)
    return hparams, context, plan, method.loss_fn(hparams, context), tx, state, aux, graphdef


def first_step(plan):
    return [{name: columns[:1] for name, columns in plan[0].items()}]


def one_step(name, dataset, data, devices, build=small_model):
    _, _, plan, loss_fn, tx, state, aux, graphdef = setup(name, dataset, data, build=build)
    mesh = data_mesh(devices)
    state, images, labels, aux = replicate((state, data.train_images, data.train_labels, aux), mesh)
    epoch_fn = make_epoch_fn(graphdef, tx, loss_fn, data.mean, data.std, mesh, loop="steps")
    state, metrics = epoch_fn(state, images, labels, aux, place_blocks(first_step(plan), mesh, "shard_map"), 0)
    return np.asarray(local_replica(metrics)["loss"]), local_replica(state)


def assert_trees_close(a, b, **tolerance):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64), **tolerance)


def assert_states_close(name, hparams, a, b):
    """Two train states of method `name` after one step, with the module docstring's tolerances."""
    for part in ("batch_stats", "step"):
        assert_trees_close(getattr(a, part), getattr(b, part), **TOLERANCE)
    moved = {"rtol": 0.0, "atol": 1e-2 * hparams.learning_rate} if name in ADAM else TOLERANCE
    assert_trees_close((a.params, a.extra), (b.params, b.extra), **moved)
    assert_trees_close(a.opt_state, b.opt_state, **GRADIENT_TOLERANCE)


def test_every_method_has_small_settings():
    assert set(SMALL) == set(METHODS)


@pytest.mark.parametrize("name", list(METHODS))
def test_defaults_validate_and_bad_values_are_refused(name):
    method = METHODS[name]
    for mode in method.modes:
        defaults = method.default_hparams(mode, ORIGINAL)
        defaults.validate()
        assert defaults.epochs >= 1 and defaults.batch_size >= 1
        for field, bad in (("epochs", "0"), ("batch_size", "0"), ("learning_rate", "nan"), ("learning_rate", "-1")):
            with pytest.raises(UserError, match=field):
                override(defaults, {field: bad}).validate()


@pytest.mark.parametrize("name", list(METHODS))
def test_the_plan_is_deterministic_in_seed_and_epoch(name, digits):
    dataset, data = digits
    hparams, context, plan, *_ = setup(name, dataset, data)
    method = METHODS[name]
    again = method.plan(hparams, context, 0)
    other = method.plan(hparams, dataclasses.replace(context, seed=1), 0)
    assert [list(block) for block in plan] == [list(block) for block in again]
    for block, same in zip(plan, again):
        for column in block:
            np.testing.assert_array_equal(block[column], same[column])
    assert any(not np.array_equal(block[column], moved[column])
               for block, moved in zip(plan, other) for column in block if block[column].shape == moved[column].shape)


@pytest.mark.parametrize("name", list(METHODS))
def test_one_step_is_finite_and_equal_on_one_and_two_devices(name, digits):
    dataset, data = digits
    single = one_step(name, dataset, data, 1)
    assert np.all(np.isfinite(single[0]))
    double = one_step(name, dataset, data, 2)
    np.testing.assert_allclose(double[0], single[0], **TOLERANCE)
    assert_states_close(name, setup(name, dataset, data)[0], single[1], double[1])


@pytest.mark.parametrize("name", list(METHODS))
def test_two_models_vmapped_step_like_one_and_the_state_survives_a_checkpoint(name, digits, tmp_path):
    dataset, data = digits
    models = [setup(name, dataset, data, seed) for seed in (0, 1)]
    _, _, plan, loss_fn, tx, _, _, graphdef = models[0]
    ensemble = make_ensemble(2, Execution(devices=1, models_per_device=2))
    epoch_fn = make_models_epoch_fn(make_train_step(graphdef, tx, loss_fn, data.mean, data.std), ensemble, "steps")
    blocks = [{column: np.stack([first_step(m[2])[0][column] for m in models]) for column in plan[0]}]
    state = place_group(stack([m[5] for m in models]), ensemble)
    aux = place_group(stack([m[6] for m in models]), ensemble) if models[0][6] is not None else None
    state, metrics = epoch_fn(state, data.train_images, data.train_labels, aux,
                              place_group_blocks(blocks, ensemble, "steps"), 0, place_group(np.ones(2, bool), ensemble))
    losses = np.asarray(metrics["loss"])
    single_loss, single_state = one_step(name, dataset, data, 1)
    np.testing.assert_allclose(losses[:, 0], single_loss, **TOLERANCE)
    assert_states_close(name, models[0][0], single_state, jax.tree.map(lambda x: np.asarray(x)[0], state))
    assert np.all(np.isfinite(losses)) and losses[0, 0] != losses[0, 1]

    manager = checkpoint.open_manager(tmp_path)
    checkpoint.save(manager, 1, single_state, {"epoch": 1})
    restored, meta = checkpoint.restore_state(manager, 1, single_state)
    manager.close()
    assert meta == {"epoch": 1, "params_hash": checkpoint.tree_hash(single_state.params)}
    for a, b in zip(jax.tree.leaves(single_state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


@pytest.mark.parametrize("name", list(METHODS))
def test_one_step_on_a_user_model(name, digits):
    """Every method steps a model it knows nothing of (an `EmbeddingClassifier` of the user's modules), on 1
    and 2 devices alike."""
    dataset, data = digits
    single = one_step(name, dataset, data, 1, build=user_model)
    double = one_step(name, dataset, data, 2, build=user_model)
    assert np.all(np.isfinite(single[0])) and single[1].step == 1
    np.testing.assert_allclose(double[0], single[0], **TOLERANCE)
    assert_states_close(name, setup(name, dataset, data, build=user_model)[0], single[1], double[1])
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
        jax.tree.leaves(single[1].params), jax.tree.leaves(setup(name, dataset, data, build=user_model)[5].params))]
    assert max(moved) > 0
