"""Data parallelism: the same steps on 1, 2 and 8 devices, under shard_map and pmap, give the same numbers.

Tolerance policy. Device counts change only the order of sums (per-device partial sums of the batch, of the
BatchNorm moments and of the gradients, then a cross-device mean).
- float32, one step: losses to rtol 1e-5, parameters and statistics to atol 1e-6 (+ rtol 1e-5): a few ulps.
- Several steps are compared in float64 to rtol 1e-9 / atol 1e-10; a whole epoch (16-20 steps at lr 0.05)
  to rtol 1e-9 / atol 1e-9: there the reordered sums' rounding grows to 1.6e-10 on one parameter of
  0.029 (CU, random 100, 8 devices), above 1e-10 absolute and far below any real difference. In float32 a pre-activation within
  rounding of 0 can take the other side of a ReLU on another device count and legitimately change the next
  gradient by percents: it happened in this very test (CU class mode, step 2: gradient norm 5.3644 on 1
  device, 5.3848 on 2), and in float64 every device count, 1 included, gave 5.38489156.
SGD, not Adam: Adam's first step is lr·sign(g), which turns ulp-level noise in a near-zero gradient into a
full ±lr difference.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.sources import load_dataset
from jaxunlearn.data.splits import make_split, parse_forget
from jaxunlearn.engine.epoch import make_epoch_fn, place_blocks
from jaxunlearn.engine.parallel import DATA_AXIS, PADDING_MASK, data_mesh, local_replica, pad_to_devices, replicate
from jaxunlearn.engine.state import create_state
from jaxunlearn.methods import Context, get_method
from jaxunlearn.methods.supervised import augmented_supervised_loss, supervised_loss
from jaxunlearn.models import create_model
from jaxunlearn.testing import small_model

TOLERANCES = {"float32": (1e-5, 1e-6), "float64": (1e-9, 1e-10), "float64-epoch": (1e-9, 1e-9)}
"""dtype → (rtol, atol); see the module docstring."""


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", None)


def resnet(num_classes, seed):
    return create_model("resnet18", num_classes, in_channels=1, width=0.0625, seed=seed, bn_axis_name=DATA_AXIS)


def run_steps(dataset, loss_fn, blocks, devices, backend, dtype, learning_rate=0.05, loop="auto", build=resnet):
    """Run `blocks` as one epoch from a fixed model `build(10, seed=0)` (by default a narrow ResNet-18) with
    parameters in `dtype`; returns (per-step losses, final state)."""
    model = build(10, seed=0)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, batch_stats = jax.tree.map(lambda x: x.astype(dtype), (params, batch_stats))
    tx = optax.sgd(learning_rate, momentum=0.9)
    mesh = data_mesh(devices)
    data = DeviceData.from_dataset(dataset)
    state, images, labels = replicate((create_state(params, batch_stats, tx), data.train_images,
                                       data.train_labels), mesh)
    epoch_fn = make_epoch_fn(graphdef, tx, loss_fn, data.mean, data.std, mesh, backend, loop=loop)
    state, metrics = epoch_fn(state, images, labels, None, place_blocks(blocks, mesh, backend), 0)
    return np.asarray(local_replica(metrics)["loss"]), local_replica(state)


def contrastive_case(dataset, mode):
    forget = "class:5" if mode == "class" else "random:64"
    split = make_split(parse_forget(forget), dataset.train_labels, 10, pairing="default", seed=0)
    method = get_method("contrastive")
    hparams = method.default_hparams(mode, None).__class__(batch_size=32, learning_rate=0.05)
    context = Context(split=split, num_classes=10, pairing="default", seed=0,
                      train_labels=dataset.train_labels, image_shape=dataset.image_shape)
    blocks = [{role: columns[:3] for role, columns in method.plan(hparams, context, 0)[0].items()}]
    return method.loss_fn(hparams, context), blocks


def supervised_case(dataset):
    order = np.random.default_rng(0).permutation(len(dataset.train_labels))[:3 * 32]
    return supervised_loss, [{"train": order.reshape(3, 32).astype(np.int32)}]


def assert_same_run(reference, other, dtype, tolerance=None):
    rtol, atol = TOLERANCES[tolerance or dtype]
    np.testing.assert_allclose(other[0], reference[0], rtol=rtol)
    for tree in ("params", "batch_stats"):
        for a, b in zip(jax.tree.leaves(getattr(reference[1], tree)), jax.tree.leaves(getattr(other[1], tree))):
            assert b.dtype == dtype
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=rtol, atol=atol)


@pytest.mark.parametrize("case", ["contrastive-class", "contrastive-sample", "supervised"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_steps_match_one_device_on_2_and_8_devices_under_both_backends(digits, case, dtype):
    if case == "supervised":  # pretraining and the retrain reference share this step
        loss_fn, blocks = supervised_case(digits)
    else:
        loss_fn, blocks = contrastive_case(digits, case.split("-")[1])
    if dtype == "float32":
        blocks = [{name: columns[:1] for name, columns in block.items()} for block in blocks]
    with jax.enable_x64(dtype == "float64"):
        reference = run_steps(digits, loss_fn, blocks, 1, "shard_map", dtype)
        assert np.all(np.isfinite(reference[0])) and len(set(reference[0])) == len(reference[0])
        for devices, backend in ((2, "shard_map"), (8, "shard_map"), (8, "pmap")):
            assert_same_run(reference, run_steps(digits, loss_fn, blocks, devices, backend, dtype), dtype)


def test_a_batch_that_does_not_divide_is_padded_with_masked_slots():
    block = {"forget": np.arange(10).reshape(2, 5), "retain": np.arange(10, 20).reshape(2, 5)}
    padded = pad_to_devices(block, 4)
    np.testing.assert_array_equal(padded["forget"], [[0, 1, 2, 3, 4, 0, 1, 2], [5, 6, 7, 8, 9, 5, 6, 7]])
    assert padded["retain"].shape == (2, 8)
    np.testing.assert_array_equal(padded[PADDING_MASK], [[1, 1, 1, 1, 1, 0, 0, 0]] * 2)
    one = pad_to_devices({"x": np.zeros((1, 2), np.int32)}, 8)
    assert one["x"].shape == (1, 8) and one[PADDING_MASK].tolist() == [[1, 1, 0, 0, 0, 0, 0, 0]]
    assert pad_to_devices(block, 5) is block  # a dividing batch is untouched: no mask column


def whole_epoch_case(dataset, method_name, forget, **overrides):
    """A method's whole first epoch (every block, the partial last batches included) at batch size 32."""
    spec = parse_forget(forget)
    split = make_split(spec, dataset.train_labels, 10, pairing="default", seed=0)
    method = get_method(method_name)
    hparams = dataclasses.replace(method.default_hparams(spec.mode, None), batch_size=32, learning_rate=0.05,
                                  **overrides)
    context = Context(split=split, num_classes=10, pairing="default", seed=0,
                      train_labels=dataset.train_labels, image_shape=dataset.image_shape)
    return method.loss_fn(hparams, context), method.plan(hparams, context, 0)


@pytest.mark.parametrize("case", ["contrastive-class", "contrastive-sample", "random_label"])
def test_a_whole_epoch_with_partial_batches_is_the_same_on_1_3_and_8_devices(digits, case):
    """Batches that do not divide by the device count are padded with masked slots, so they count once.

    contrastive, class 5: 146 forget images → 4 batches of 32 and one of 18, each 4 times (ω), beside retain
    batches of the same size: 32 pads to 33 on 3 devices, 18 to 24 on 8. contrastive, random 100: a last
    batch of 4, so on 8 devices four devices hold only padding. random labels: the forget pass (a partial
    batch of 18) and the last, partial retain batch. float64, rtol 1e-9 (the module's policy). On the small
    network of `jaxunlearn.testing.small_model` (masked BatchNorm, embedding, head): the steps of the ResNet-18 are those
    of the test above.
    """
    with jax.enable_x64(True):
        if case == "random_label":
            loss_fn, plan = whole_epoch_case(digits, "random_label", "class:5")
            plan = plan[:2] + plan[-1:]
        else:
            mode = case.split("-")[1]
            loss_fn, plan = whole_epoch_case(digits, "contrastive", "class:5" if mode == "class" else "random:100")
        widths = [next(iter(block.values())).shape[1] for block in plan]
        assert any(width % 3 for width in widths) and any(width % 8 for width in widths)
        reference = run_steps(digits, loss_fn, plan, 1, "shard_map", "float64", build=small_model)
        assert np.all(np.isfinite(reference[0]))
        for devices, backend in ((3, "shard_map"), (8, "shard_map"), (3, "pmap"), (8, "pmap")):
            assert_same_run(reference, run_steps(digits, loss_fn, plan, devices, backend, "float64",
                                                 build=small_model), "float64", "float64-epoch")


@pytest.mark.parametrize("devices, backend", [(1, "shard_map"), (2, "shard_map"), (8, "pmap")])
def test_a_host_loop_over_one_compiled_step_equals_the_scanned_epoch(digits, devices, backend):
    """The two epoch loops run the same steps: two blocks (3 and 2 steps), float64, several steps."""
    order = np.random.default_rng(1).permutation(len(digits.train_labels))[:5 * 32].astype(np.int32)
    blocks = [{"train": order[:96].reshape(3, 32)}, {"train": order[96:].reshape(2, 32)}]
    with jax.enable_x64(True):
        scanned = run_steps(digits, supervised_loss, blocks, devices, backend, "float64", loop="scan")
        stepped = run_steps(digits, supervised_loss, blocks, devices, backend, "float64", loop="steps")
    assert len(scanned[0]) == 5 and len(set(scanned[0])) == 5
    assert_same_run(scanned, stepped, "float64")


def dropout_resnet(num_classes, seed):
    return create_model("resnet18", num_classes, in_channels=1, width=0.0625, seed=seed, bn_axis_name=DATA_AXIS,
                        dropout=0.5)


@pytest.mark.parametrize("case", ["augmented-supervised",
                                  pytest.param("contrastive-class", marks=pytest.mark.slow)])  # `make test-long`
def test_dropout_and_augmentation_draw_the_same_on_1_2_and_8_devices(digits, case):
    """Each example's dropout mask and crop come from its own key (its position in the global batch), so
    the steps of a model with dropout (and, training, the crop-and-flip recipe) are the same on every device
    count: float64, the module's policy. The draws matter: without them the losses differ by far more."""
    if case == "augmented-supervised":
        loss_fn, blocks = augmented_supervised_loss, supervised_case(digits)[1]
    else:
        loss_fn, blocks = contrastive_case(digits, "class")
    with jax.enable_x64(True):
        reference = run_steps(digits, loss_fn, blocks, 1, "shard_map", "float64", build=dropout_resnet)
        deterministic = run_steps(digits, supervised_loss if case == "augmented-supervised" else loss_fn, blocks,
                                  1, "shard_map", "float64")
        assert np.abs(reference[0] - deterministic[0]).max() > 1e-3
        for devices, backend in ((2, "shard_map"), (8, "shard_map"), (8, "pmap")):
            assert_same_run(reference, run_steps(digits, loss_fn, blocks, devices, backend, "float64",
                                                 build=dropout_resnet), "float64")
