"""The method contract as a public check: `check_method(method)` runs what every method of the package is
tested for (tests/test_method_contract.py runs the same functions over all of them), so a researcher's own
method, written in their own file, is checked the same way before it is registered or run.

On scikit-learn's digits and a small untrained network (`small_model`: two convolutions with the package's
masked BatchNorm over the data axis, an embedding and a head):
- its defaults validate in every mode it supports, and out-of-range epochs, batch sizes and learning rates
  are refused;
- its plan is deterministic in (seed, epoch), and another seed gives another plan;
- one step of its loss is finite, and equal on 1 and 2 devices (float32, one step: losses, parameters and
  statistics to rtol 1e-5, atol 1e-6, the policy of tests/test_parallel.py; the optimizer state, which after
  one step holds raw gradients (or Adam's moments of them), to rtol 1e-4, atol 1e-5: a BatchNorm parameter's
  gradient sums many terms that cancel and its float32 reduction-order noise was measured at 5e-5 relative).
  Adam's first step moves every coordinate by about lr·g/(|g| + ε), ±lr wherever |g| ≫ ε but sensitive to noise
  where |g| is near ε, so parameters after an Adam step are compared to atol 1e-2·lr;
- two models stepping side by side, vmapped, each with its own seed, constants and optimizer state: model 0's
  step equals the single model's (same tolerances), and the two differ;
- its state after the step survives a checkpoint round trip bit for bit.
The check needs 2 devices (on CPU: `jax.config.update("jax_num_cpu_devices", 2)` before JAX starts).
"""

import dataclasses
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from jaxunlearn.config import SupervisedHparams, TrainConfig, override
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import load_dataset
from jaxunlearn.data.splits import make_split, parse_forget
from jaxunlearn.engine import checkpoint
from jaxunlearn.engine.ensemble import make_ensemble, make_models_epoch_fn, place_group, place_group_blocks, stack
from jaxunlearn.engine.epoch import make_epoch_fn, place_blocks, steps_in
from jaxunlearn.engine.parallel import DATA_AXIS, Execution, data_mesh, local_replica, replicate
from jaxunlearn.engine.state import TrainState, create_state
from jaxunlearn.engine.step import eval_forward, make_train_step
from jaxunlearn.errors import UserError
from jaxunlearn.methods.base import METHODS, Context, Method, StartingModel
from jaxunlearn.models import EmbeddingClassifier, relu_l2_normalise
from jaxunlearn.models.batch_norm import MaskedBatchNorm

ORIGINAL = TrainConfig(dataset="digits", width=0.0625, recipe=SupervisedHparams(epochs=1, batch_size=64))
"""The training configuration a method's `default_hparams` sees."""
TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}
GRADIENT_TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}
ADAM_PARAMETERS = 1e-2
"""Parameters after one Adam step: atol ADAM_PARAMETERS · learning rate (see the module docstring)."""


class SmallEmbedding(nnx.Module):
    """Two convolutions with masked BatchNorm over the data axis, pooled, projected to a unit-norm embedding."""

    def __init__(self, in_channels: int, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_channels, 8, (3, 3), use_bias=False, rngs=rngs)
        self.norm1 = MaskedBatchNorm(8, axis_name=DATA_AXIS, rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, (3, 3), strides=2, use_bias=False, rngs=rngs)
        self.norm2 = MaskedBatchNorm(16, axis_name=DATA_AXIS, rngs=rngs)
        self.projection = nnx.Linear(16, 16, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        x = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train, mask=mask))
        x = nnx.relu(self.norm2(self.conv2(x), use_running_average=not train, mask=mask))
        return relu_l2_normalise(self.projection(x.mean(axis=(1, 2))))


class SmallHead(nnx.Module):
    def __init__(self, num_classes: int, rngs: nnx.Rngs):
        self.linear = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, feat: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        return self.linear(feat)  # no statistics: a padded batch's mask changes nothing


def small_model(num_classes: int, seed: int = 0, in_channels: int = 1) -> EmbeddingClassifier:
    """A small classifier that compiles fast: (logits [B, C], unit-norm embedding [B, 16])."""
    rngs = nnx.Rngs(seed)
    return EmbeddingClassifier(SmallEmbedding(in_channels, rngs), SmallHead(num_classes, rngs))


@dataclasses.dataclass
class MethodSetup:
    """A method ready to step: its hyperparameters, context, epoch-0 plan, loss, optimizer, state, constants
    and the model's graph."""

    hparams: Any
    context: Context
    plan: list[dict[str, np.ndarray]]
    loss_fn: Any
    tx: optax.GradientTransformation
    state: TrainState
    aux: Any
    graphdef: nnx.GraphDef


def digits() -> tuple[Any, DeviceData]:
    dataset = load_dataset("digits")
    return dataset, DeviceData.from_dataset(dataset)


def setup(method: Method, forget: str, overrides: dict[str, str], dataset: Any, data: DeviceData, seed: int = 0,
          build: Callable[[int, int], nnx.Module] = small_model) -> MethodSetup:
    """`method` forgetting `forget` with `overrides` of its defaults, from the model `build(num_classes, seed)`."""
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
    state = create_state(jax.tree.map(np.array, params), jax.tree.map(np.array, batch_stats), tx, extra)
    return MethodSetup(hparams, context, method.plan(hparams, context, 0), method.loss_fn(hparams, context), tx,
                       state, aux, graphdef)


def first_step(plan: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [{name: columns[:1] for name, columns in plan[0].items()}]


def one_step(method: Method, forget: str, overrides: dict[str, str], dataset: Any, data: DeviceData, devices: int,
             build: Callable[[int, int], nnx.Module] = small_model) -> tuple[np.ndarray, TrainState]:
    """(the loss of the plan's first step, the state after it) on `devices` devices."""
    ready = setup(method, forget, overrides, dataset, data, build=build)
    mesh = data_mesh(devices)
    state, images, labels, aux = replicate((ready.state, data.train_images, data.train_labels, ready.aux), mesh)
    epoch_fn = make_epoch_fn(ready.graphdef, ready.tx, ready.loss_fn, data.mean, data.std, mesh, loop="steps")
    state, metrics = epoch_fn(state, images, labels, aux, place_blocks(first_step(ready.plan), mesh, "shard_map"), 0)
    return np.asarray(local_replica(metrics)["loss"]), local_replica(state)


def assert_trees_close(a: Any, b: Any, **tolerance: float) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b), "the trees differ in structure"
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(y, np.float64), np.asarray(x, np.float64), **tolerance)


def assert_states_close(hparams: Any, a: TrainState, b: TrainState, adam: bool) -> None:
    """Two train states after one step, with the module docstring's tolerances."""
    for part in ("batch_stats", "step"):
        assert_trees_close(getattr(a, part), getattr(b, part), **TOLERANCE)
    moved = {"rtol": 0.0, "atol": ADAM_PARAMETERS * hparams.learning_rate} if adam else TOLERANCE
    assert_trees_close((a.params, a.extra), (b.params, b.extra), **moved)
    assert_trees_close(a.opt_state, b.opt_state, **GRADIENT_TOLERANCE)


def uses_adam(ready: MethodSetup) -> bool:
    """Whether the method's optimizer state holds Adam's moments (its one-step parameters get the Adam
    tolerance)."""
    is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)
    return any(is_adam(leaf) for leaf in jax.tree.leaves(ready.state.opt_state, is_leaf=is_adam))


def check_defaults(method: Method) -> None:
    for mode in method.modes:
        defaults = method.default_hparams(mode, ORIGINAL)
        defaults.validate()
        assert defaults.epochs >= 1 and defaults.batch_size >= 1, f"{method.name}: epochs and batch_size >= 1"
        for field, bad in (("epochs", "0"), ("batch_size", "0"), ("learning_rate", "nan"), ("learning_rate", "-1")):
            try:
                override(defaults, {field: bad}).validate()
            except UserError as error:
                assert field in str(error), f"{method.name}: the refusal of {field}={bad} does not name it"
            else:
                raise AssertionError(f"{method.name}: {field}={bad} is accepted")


def check_plan(method: Method, ready: MethodSetup) -> None:
    again = method.plan(ready.hparams, ready.context, 0)
    other = method.plan(ready.hparams, dataclasses.replace(ready.context, seed=1), 0)
    assert [list(block) for block in ready.plan] == [list(block) for block in again], "the plan's columns vary"
    for block, same in zip(ready.plan, again):
        for column in block:
            np.testing.assert_array_equal(block[column], same[column], f"{method.name}: the plan is not deterministic")
    assert any(not np.array_equal(block[column], moved[column]) for block, moved in zip(ready.plan, other)
               for column in block if block[column].shape == moved[column].shape), \
        f"{method.name}: another seed gives the same plan"


def check_devices(method: Method, forget: str, overrides: dict[str, str], dataset: Any, data: DeviceData,
                  build: Callable[[int, int], nnx.Module] = small_model) -> tuple[np.ndarray, TrainState]:
    """One step, finite and equal on 1 and 2 devices; returns the 1-device (losses, state)."""
    single = one_step(method, forget, overrides, dataset, data, 1, build=build)
    assert np.all(np.isfinite(single[0])), f"{method.name}: a non-finite loss"
    double = one_step(method, forget, overrides, dataset, data, 2, build=build)
    np.testing.assert_allclose(double[0], single[0], **TOLERANCE)
    ready = setup(method, forget, overrides, dataset, data, build=build)
    assert_states_close(ready.hparams, single[1], double[1], uses_adam(ready))
    return single


def check_models_side_by_side(method: Method, forget: str, overrides: dict[str, str], dataset: Any,
                              data: DeviceData, single: tuple[np.ndarray, TrainState], directory: str) -> None:
    """Two models vmapped on one device, seeds 0 and 1: model 0 steps like the single model, model 1 otherwise;
    the single model's state survives a checkpoint bit for bit."""
    models = [setup(method, forget, overrides, dataset, data, seed) for seed in (0, 1)]
    ready = models[0]
    ensemble = make_ensemble(2, Execution(devices=1, models_per_device=2))
    epoch_fn = make_models_epoch_fn(make_train_step(ready.graphdef, ready.tx, ready.loss_fn, data.mean, data.std),
                                    ensemble, "steps")
    blocks = [{column: np.stack([first_step(m.plan)[0][column] for m in models]) for column in ready.plan[0]}]
    state = place_group(stack([m.state for m in models]), ensemble)
    aux = place_group(stack([m.aux for m in models]), ensemble) if ready.aux is not None else None
    state, metrics = epoch_fn(state, data.train_images, data.train_labels, aux,
                              place_group_blocks(blocks, ensemble, "steps"), 0, place_group(np.ones(2, bool), ensemble))
    losses = np.asarray(metrics["loss"])
    single_loss, single_state = single
    np.testing.assert_allclose(losses[:, 0], single_loss, **TOLERANCE)
    assert_states_close(ready.hparams, single_state, jax.tree.map(lambda x: np.asarray(x)[0], state),
                        uses_adam(ready))
    assert np.all(np.isfinite(losses)) and losses[0, 0] != losses[0, 1], f"{method.name}: the two models step alike"
    manager = checkpoint.open_manager(directory)
    checkpoint.save(manager, 1, single_state, {"epoch": 1})
    restored, meta = checkpoint.restore_state(manager, 1, single_state)
    manager.close()
    assert meta == {"epoch": 1, "params_hash": checkpoint.tree_hash(single_state.params)}
    for a, b in zip(jax.tree.leaves(single_state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def check_method(method: Method | str, *, forget: str = "class:5", overrides: dict[str, str] | None = None) -> None:
    """Run the method contract (module docstring) on `method` (an instance, or a registered name) forgetting
    `forget` with `overrides` of its defaults (small settings make it quick: batches that 2 devices divide,
    one or two epochs). Raises AssertionError naming what fails; returns None when the method meets it."""
    method = METHODS[method] if isinstance(method, str) else method
    overrides = overrides or {}
    dataset, data = digits()
    check_defaults(method)
    method.check_mode(parse_forget(forget).mode)
    check_plan(method, setup(method, forget, overrides, dataset, data))
    single = check_devices(method, forget, overrides, dataset, data)
    with tempfile.TemporaryDirectory() as directory:
        check_models_side_by_side(method, forget, overrides, dataset, data, single, directory)
