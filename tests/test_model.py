"""SupConResNet: shapes, parameter counts, feat geometry, BatchNorm modes, init, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxunlearn.errors import UserError
from jaxunlearn.models import ARCHITECTURES, SupConResNet, count_params, create_model
from jaxunlearn.models.resnet import relu_l2_normalise

NARROW = 0.125  # stage channels 8/16/32/64: fast on CPU, same code paths as width 1


def _narrow_model(architecture: str = "resnet18", *, in_channels: int = 1, seed: int = 0, **kwargs) -> SupConResNet:
    return create_model(architecture, 10, in_channels=in_channels, width=NARROW, seed=seed, **kwargs)


def _forward(model: SupConResNet, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Jitted (logits, feat), without updating the model (one compile beats op-by-op dispatch)."""
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, images: nnx.merge(graphdef, state, copy=True)(images, train=train))(state, images)


def _images(shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("architecture, hidden_dim", [("resnet18", 64), ("resnet34", 64), ("resnet50", 256)])
@pytest.mark.parametrize("image_shape", [(8, 8, 1), (32, 32, 3)])
def test_output_shapes_and_dtypes(architecture, hidden_dim, image_shape):
    model = _narrow_model(architecture, in_channels=image_shape[-1])
    assert model.encoder.output_dim == hidden_dim  # 512 * 0.125 * expansion
    for train in (True, False):
        logits, feat = _forward(model, _images((3, *image_shape)), train=train)
        assert logits.shape == (3, 10) and logits.dtype == jnp.float32
        assert feat.shape == (3, 128) and feat.dtype == jnp.float32


def _abstract_param_count(architecture: str) -> tuple[int, int]:
    """(whole model, encoder) Param scalars at width 1, C = 10, RGB, without allocating."""
    model = nnx.eval_shape(lambda: create_model(architecture, 10, in_channels=3))
    return count_params(nnx.state(model)), count_params(nnx.state(model.encoder))


def _head_and_classifier_params(hidden_dim: int, feature_dim: int = 128, num_classes: int = 10) -> int:
    return (hidden_dim + 1) * hidden_dim + (hidden_dim + 1) * feature_dim + (feature_dim + 1) * num_classes


def test_param_count_resnet18_matches_official_code():
    total, encoder = _abstract_param_count("resnet18")
    assert encoder == 11_168_832
    assert total == 11_498_442 == encoder + 262_656 + 65_664 + 1_290


def test_param_count_resnet50():
    # Encoder = torchvision-CIFAR ResNet-50 without fc (23,520,842 - 2048*10 - 10); head d = 2048.
    total, encoder = _abstract_param_count("resnet50")
    assert encoder == 23_500_352
    assert total == encoder + _head_and_classifier_params(2048) == 27_960_266


def test_count_params_ignores_batch_stats():
    model = _narrow_model()
    _, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    assert count_params(nnx.state(model)) == count_params(params) > 0
    assert count_params(batch_stats) == 0


def test_split_into_params_and_batch_stats_covers_all_state():
    model = _narrow_model("resnet50")
    _, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    assert len(jax.tree.leaves(rest)) == 0
    assert len(jax.tree.leaves(batch_stats)) > 0 and len(jax.tree.leaves(params)) > 0


def test_relu_l2_normalise_values():
    g = jnp.array([[3.0, 4.0], [3.0, -4.0], [-3.0, -4.0], [0.0, 0.0]])
    np.testing.assert_allclose(relu_l2_normalise(g), [[0.6, 0.8], [0.6, 0.0], [0.0, 0.0], [0.0, 0.0]], rtol=1e-6)


def test_feat_is_relu_of_unit_vector():
    model = _narrow_model()
    images = _images((16, 8, 8, 1))
    _, feat = _forward(model, images, train=False)
    g = model.head_out(nnx.relu(model.head_hidden(model.encoder(images, train=False))))
    unit = g / jnp.linalg.norm(g, axis=-1, keepdims=True)
    np.testing.assert_allclose(feat, jnp.maximum(unit, 0), rtol=1e-5, atol=1e-6)
    norms = jnp.linalg.norm(feat, axis=-1)
    assert jnp.all(feat >= 0) and jnp.all(norms <= 1 + 1e-6)
    # ||ReLU(u)||² + ||ReLU(-u)||² = 1: the norm is 1 only if g has no negative entry.
    np.testing.assert_allclose(norms**2 + jnp.sum(jnp.minimum(unit, 0) ** 2, axis=-1), 1.0, rtol=1e-5)
    assert jnp.all((norms > 0.3) & (norms < 0.95))  # random-init g: about half its mass is negative


def test_train_step_updates_batch_stats_with_momentum_0_9():
    model = _narrow_model()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = _images((8, 8, 8, 1))

    def loss_fn(params):
        merged = nnx.merge(graphdef, params, batch_stats, copy=True)
        logits, _ = merged(images, train=True)
        return jnp.mean(logits**2), nnx.state(merged, nnx.BatchStat)

    (loss, new_stats), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    assert jnp.isfinite(loss)
    assert jax.tree.structure(grads) == jax.tree.structure(params)

    # Stem BN sees the stem conv output; running stats start at mean 0, var 1.
    stem_out = model.encoder.stem_conv(images)
    batch_mean = jnp.mean(stem_out, axis=(0, 1, 2))
    batch_var = jnp.var(stem_out, axis=(0, 1, 2))
    stem_bn = new_stats["encoder"]["stem_bn"]
    np.testing.assert_allclose(stem_bn["mean"][...], 0.1 * batch_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stem_bn["var"][...], 0.9 + 0.1 * batch_var, rtol=1e-5, atol=1e-6)
    changed = jax.tree.map(lambda new, old: bool(jnp.any(new != old)), new_stats, batch_stats)
    assert all(jax.tree.leaves(changed))  # every BN layer saw a batch


def test_eval_mode_keeps_batch_stats_and_is_per_sample():
    model = _narrow_model()
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = _images((4, 8, 8, 1))

    @jax.jit
    def evaluate(images):
        merged = nnx.merge(graphdef, params, batch_stats, copy=True)
        outputs = merged(images, train=False)
        return outputs, nnx.state(merged, nnx.BatchStat)

    (logits, feat), stats_after = evaluate(images)
    unchanged = jax.tree.map(lambda new, old: bool(jnp.array_equal(new, old)), stats_after, batch_stats)
    assert all(jax.tree.leaves(unchanged))
    (logits_again, _), _ = evaluate(images)
    np.testing.assert_array_equal(logits_again, logits)
    (logits_first_two, feat_first_two), _ = evaluate(images[:2][::-1])
    np.testing.assert_allclose(logits_first_two[::-1], logits[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feat_first_two[::-1], feat[:2], rtol=1e-5, atol=1e-6)
    # Train mode normalises with batch statistics instead: outputs depend on the batch.
    logits_train, _ = _forward(model, images, train=True)
    assert not jnp.allclose(logits_train, logits, atol=1e-3)


def _submodules(model: SupConResNet, kind: type[nnx.Module]) -> list[nnx.Module]:
    return [module for _, module in nnx.iter_graph(model) if isinstance(module, kind)]


def test_strided_conv_pads_like_pytorch():
    # First stride-2 conv (resnet18 block 2, 3x3, 8 -> 16 channels) with an all-ones kernel on ones.
    # PyTorch pad 1: the window of output (0, 0) covers 2x2 real pixels, of (1, 1) 3x3 (SAME: reversed).
    conv = _narrow_model().encoder.blocks[2].conv1
    conv.kernel[...] = jnp.ones_like(conv.kernel[...])
    out = conv(jnp.ones((1, 4, 4, 8)))
    np.testing.assert_array_equal(out[0, :, :, 0], 8.0 * np.array([[4.0, 6.0], [6.0, 9.0]]))
    assert out.shape == (1, 2, 2, 16)


def test_conv_kernel_init_is_untruncated_kaiming_fan_out():
    model = _narrow_model()
    convs = _submodules(model, nnx.Conv)
    assert all(conv.bias is None for conv in convs)
    largest = max(convs, key=lambda conv: conv.kernel.size)
    kernel = np.asarray(largest.kernel[...]).ravel()
    k, _, _, out_channels = largest.kernel.shape
    expected_std = math.sqrt(2.0 / (k * k * out_channels))
    assert kernel.size == 3 * 3 * 64 * 64
    # The sample std of n normals has relative standard error ~1/sqrt(2n) = 0.37% here; allow 5 SE.
    assert abs(kernel.std() / expected_std - 1) < 5 / math.sqrt(2 * kernel.size)
    assert abs(kernel.mean()) < 5 * expected_std / math.sqrt(kernel.size)
    # Untruncated: ~4.55% of a normal lies beyond 2 std (a 2-std truncated normal has none).
    np.testing.assert_allclose(np.mean(np.abs(kernel) > 2 * expected_std), 0.0455, atol=0.006)


def test_linear_init_is_pytorch_default_uniform():
    model = _narrow_model()
    linears = _submodules(model, nnx.Linear)
    assert len(linears) == 3
    for linear in linears:
        fan_in = linear.kernel.shape[0]
        bound = 1 / math.sqrt(fan_in)
        for values in (linear.kernel[...], linear.bias[...]):
            assert float(jnp.max(jnp.abs(values))) <= bound
        # U(-b, b) has std b/sqrt(3); the head's 64x64 kernel has 4096 draws (rel. SE ~1.1%).
        if linear.kernel.size >= 4096:
            assert abs(float(jnp.std(linear.kernel[...])) * math.sqrt(3) / bound - 1) < 0.06
    head_bias = np.asarray(model.head_hidden.bias[...])
    assert np.max(np.abs(head_bias)) > 0.8 / math.sqrt(64)  # 64 draws fill the range, not zeros


def test_batch_norm_init_and_momentum():
    bns = _submodules(_narrow_model("resnet50"), nnx.BatchNorm)
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    assert all(bool(jnp.all(bn.scale[...] == 1)) and bool(jnp.all(bn.bias[...] == 0)) for bn in bns)


def test_gradient_is_finite_when_head_output_is_zero():
    model = _narrow_model()
    model.head_out.kernel[...] = jnp.zeros_like(model.head_out.kernel[...])
    model.head_out.bias[...] = jnp.zeros_like(model.head_out.bias[...])
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = _images((4, 8, 8, 1))

    def loss_fn(params):
        merged = nnx.merge(graphdef, params, batch_stats, copy=True)
        logits, feat = merged(images, train=True)
        return jnp.sum(logits) + jnp.sum(feat), feat

    grads, feat = jax.jit(jax.grad(loss_fn, has_aux=True))(params)
    np.testing.assert_array_equal(feat, 0.0)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    np.testing.assert_array_equal(grads["classifier"]["bias"][...], 4.0)  # d(sum of 4 rows' logits)/d bias


def test_synced_batch_norm_under_shard_map_matches_global_batch():
    mesh = jax.make_mesh((8,), ("data",))
    model = _narrow_model(bn_axis_name="data")
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    images = jax.device_put(_images((16, 8, 8, 1)), jax.NamedSharding(mesh, P("data")))

    def forward(params, batch_stats, images):
        merged = nnx.merge(graphdef, params, batch_stats, copy=True)
        logits, _ = merged(images, train=True)
        return logits, nnx.state(merged, nnx.BatchStat)

    sharded = jax.jit(jax.shard_map(forward, mesh=mesh, in_specs=(P(), P(), P("data")), out_specs=(P("data"), P())))
    logits, new_stats = sharded(params, batch_stats, images)
    global_model = _narrow_model()  # same seed, no axis name: one device sees the whole batch
    global_logits, _ = global_model(images, train=True)
    np.testing.assert_allclose(logits, global_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        new_stats["encoder"]["stem_bn"]["mean"][...], global_model.encoder.stem_bn.mean[...], rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "resnet19"}, "resnet18, resnet34, resnet50, resnet101, vit_small"),
        ({"depth": 3}, "fixed depth"),
        ({"precision": "fp16"}, "unknown precision"),
        ({"width": 0.0}, "width must be > 0"),
        ({"width": -1.0}, "width must be > 0"),
        ({"width": 0.005}, "every stage needs >= 1 channel"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"in_channels": 0}, "in_channels must be >= 1"),
    ],
)
def test_create_model_rejects_bad_settings(kwargs, message):
    settings = {"name": "resnet18", "num_classes": 10, "in_channels": 3, "width": NARROW} | kwargs
    with pytest.raises(UserError, match=message) as error:
        create_model(**settings)
    assert "\n" not in str(error.value)


def test_architectures_table():
    assert {name: (block.__name__, sizes) for name, (block, sizes) in ARCHITECTURES.items()} == {
        "resnet18": ("BasicBlock", (2, 2, 2, 2)),
        "resnet34": ("BasicBlock", (3, 4, 6, 3)),
        "resnet50": ("Bottleneck", (3, 4, 6, 3)),
        "resnet101": ("Bottleneck", (3, 4, 23, 3)),
    }
