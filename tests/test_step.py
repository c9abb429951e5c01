"""The public step (`jaxunlearn.make_step`): the harness's update on batches the caller supplies, under jit,
vmap over models, shard_map and pmap.

Tolerance policy, that of tests/test_parallel.py. Another compilation of the same update (the harness's step,
which gathers and normalises inside the step), another device count or a vmapped model axis reorders the sums.
In float32 that is noise of 1e-5 relative on a BatchNorm scale's gradient and, over several steps, a
pre-activation within rounding of zero may take the other side of a ReLU. So the steps are compared in float64
(three CU steps of SGD at lr 0.05 on a width-1/16 ResNet-18): losses, parameters and statistics to rtol 1e-9,
atol 1e-9. The harness's step normalises the uint8 images in float32 inside its compiled
program, where XLA rounds them otherwise than an eager normalisation by an ulp (then measured: 4.4e-7 on a
BatchNorm bias whose gradient sums terms that cancel), so the public step it is compared with normalises
inside its jit too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

import jaxunlearn as ju
from jaxunlearn.data.device import DeviceData, gather_batch, normalise
from jaxunlearn.engine.epoch import make_epoch_fn, place_blocks
from jaxunlearn.engine.parallel import data_mesh, local_replica, replicate

REORDERED = {"rtol": 1e-9, "atol": 1e-9}
STEPS, BATCH = 3, 32


@pytest.fixture(autouse=True)
def float64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def setting():
    """(dataset, graphdef, float64 params and batch_stats, tx, CU objective, forget/retain index blocks [3, 32])."""
    dataset = ju.load_dataset("digits")
    split = ju.make_split(ju.parse_forget("class:5"), dataset.train_labels, 10, seed=0)
    model = ju.create_model("resnet18", 10, in_channels=1, image_size=(8, 8), width=0.0625, bn_axis_name=ju.DATA_AXIS)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(0)
    blocks = {"forget": np.stack([rng.choice(split.forget, BATCH, replace=False) for _ in range(STEPS)]),
              "retain": rng.choice(split.retain, (STEPS, BATCH))}
    hparams = ju.ContrastiveHparams(batch_size=BATCH, learning_rate=0.05)
    params, batch_stats = jax.tree.map(lambda x: np.asarray(x, np.float64), (params, batch_stats))
    return (dataset, graphdef, params, batch_stats, optax.sgd(0.05, momentum=0.9),
            ju.contrastive_objective(hparams, "class"), {k: v.astype(np.int32) for k, v in blocks.items()})


def batches(dataset, blocks, step):
    """The CU batch of step `step`: {"forget": (images, labels), "retain": (images, labels)}, normalised as
    the harness does (in float32), then float64."""
    images = jnp.asarray(dataset.train_images)
    return {role: (normalise(images[rows[step]], dataset.mean, dataset.std).astype(jnp.float64),
                   jnp.asarray(dataset.train_labels[rows[step]])) for role, rows in blocks.items()}


def public_run(setting, step_fn=None, steps=STEPS):
    dataset, graphdef, params, batch_stats, tx, loss_fn, blocks = setting
    step_fn = step_fn or jax.jit(ju.make_step(graphdef, tx, loss_fn))
    state, losses = ju.create_state(params, batch_stats, tx), []
    for step in range(steps):
        state, metrics = step_fn(state, batches(dataset, blocks, step))
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


def assert_trees_close(a, b, tolerance):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), **tolerance)


def test_public_step_is_the_harness_step(setting):
    dataset, graphdef, params, batch_stats, tx, loss_fn, blocks = setting
    data = DeviceData.from_dataset(dataset)
    step = ju.make_step(graphdef, tx, loss_fn)
    gather = lambda rows: {role: gather_batch(data.train_images, data.train_labels, indices, data.mean, data.std)
                           for role, indices in rows.items()}
    compiled = jax.jit(lambda state, rows: step(state, {role: (x.astype(jnp.float64), y)
                                                         for role, (x, y) in gather(rows).items()}))
    state, metrics = compiled(ju.create_state(params, batch_stats, tx), {r: v[0] for r, v in blocks.items()})
    losses = np.asarray([metrics["loss"]])
    mesh = data_mesh(1)
    epoch_fn = make_epoch_fn(graphdef, tx, loss_fn, data.mean, data.std, mesh, loop="steps")
    copies = jax.tree.map(jnp.array, (params, batch_stats))  # the harness donates its state
    harness_state, metrics = epoch_fn(replicate(ju.create_state(*copies, tx), mesh),
                                      data.train_images, data.train_labels, None,
                                      place_blocks([{role: rows[:1] for role, rows in blocks.items()}], mesh,
                                                   "shard_map"), 0)
    np.testing.assert_allclose(losses, np.asarray(local_replica(metrics)["loss"]), **REORDERED)
    assert_trees_close(local_replica(harness_state), state, REORDERED)


def test_public_step_vmapped_over_models_equals_each_model(setting):
    dataset, graphdef, params, batch_stats, tx, loss_fn, blocks = setting
    _, *other = nnx.split(ju.create_model("resnet18", 10, in_channels=1, image_size=(8, 8), width=0.0625, seed=1,
                                          bn_axis_name=ju.DATA_AXIS), nnx.Param, nnx.BatchStat)
    other = jax.tree.map(lambda x: np.asarray(x, np.float64), other)
    states = [ju.create_state(params, batch_stats, tx), ju.create_state(*other, tx)]
    step = jax.jit(jax.vmap(ju.make_step(graphdef, tx, loss_fn)))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *states)
    batch = batches(dataset, blocks, 0)
    stacked, metrics = step(stacked, jax.tree.map(lambda x: jnp.stack([x, x]), batch))
    single = jax.jit(ju.make_step(graphdef, tx, loss_fn))
    for k, state in enumerate(states):
        state, single_metrics = single(state, batch)
        np.testing.assert_allclose(metrics["loss"][k], single_metrics["loss"], **REORDERED)
        assert_trees_close(state, jax.tree.map(lambda x: x[k], stacked), REORDERED)
    assert metrics["loss"][0] != metrics["loss"][1]


@pytest.mark.parametrize("axis", ["shard_map", "pmap"])
def test_public_step_per_device_equals_one_device(setting, axis):
    """8 devices, each with 4 of the 32 forget and retain images: the same steps as on one device."""
    dataset, graphdef, params, batch_stats, tx, loss_fn, blocks = setting
    per_device = ju.make_step(graphdef, tx, loss_fn, axis=axis)
    devices = jax.devices()[:8]
    if axis == "shard_map":
        mesh = jax.sharding.Mesh(np.array(devices), (ju.DATA_AXIS,))
        step = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(ju.DATA_AXIS)), out_specs=(P(), P())))
        place = lambda batch: jax.device_put(batch, NamedSharding(mesh, P(ju.DATA_AXIS)))
    else:
        step = jax.pmap(per_device, axis_name=ju.DATA_AXIS, in_axes=(None, 0), out_axes=None, devices=devices)
        place = lambda batch: jax.tree.map(lambda x: x.reshape(8, -1, *x.shape[1:]), batch)
    expected_losses, expected_state = public_run(setting)
    losses, state = public_run(setting, lambda state, batch: step(state, place(batch)))
    np.testing.assert_allclose(losses, expected_losses, **REORDERED)
    assert_trees_close(expected_state, jax.device_get(state), REORDERED)
