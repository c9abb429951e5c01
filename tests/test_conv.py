"""`gemm_conv_general_dilated` (convolution as GEMMs) against `lax.conv_general_dilated`: value, input gradient
and filter gradient (a vjp with a random cotangent), on every configuration the ResNets use and a few more.

Tolerances, relative to the largest absolute value of the reference:
- float64: 1e-10. Both compute the same sums of products in another order; each term rounds at ~1e-16.
- float32: 1e-5. The value sums K = kh·kw·c_in products, the input gradient kh·kw·c_out and the filter gradient
  B·Ho·Wo, each in an order of its own; the difference grows like sqrt(K)·eps (eps = 6e-8), ~1e-6 for the
  largest sums here (K ≤ 2·14·14), so 1e-5 leaves margin while a wrong or missing term would be O(1/sqrt(K)).
- bfloat16 inputs, float32 accumulation: the products of two bfloat16 numbers are exact in float32, so the value
  is compared with a float32 convolution of the same (rounded) inputs at the float32 tolerance. The gradients
  are returned in bfloat16, one rounding of at most 2^-8 (half a bfloat16 ulp) of their own magnitude: 2^-7.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxunlearn.errors import UserError
from jaxunlearn.models.conv import gemm_conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")
TOLERANCE = {jnp.float64: 1e-10, jnp.float32: 1e-5}

# (batch, height, width, in channels, out channels, kernel, stride, padding)
CONFIGS = {
    "3x3s1-8x8-c3": (2, 8, 8, 3, 4, 3, 1, ((1, 1), (1, 1))),
    "3x3s1-7x7-c1": (1, 7, 7, 1, 4, 3, 1, ((1, 1), (1, 1))),
    "3x3s1-4x4-c8": (2, 4, 4, 8, 8, 3, 1, ((1, 1), (1, 1))),
    "3x3s1-1x1-c5": (3, 1, 1, 5, 3, 3, 1, ((1, 1), (1, 1))),
    "3x3s2-32x32-c3": (1, 32, 32, 3, 2, 3, 2, ((1, 1), (1, 1))),
    "3x3s2-28x28-c1": (2, 28, 28, 1, 3, 3, 2, ((1, 1), (1, 1))),
    "3x3s2-8x8-c6": (2, 8, 8, 6, 4, 3, 2, ((1, 1), (1, 1))),
    "3x3s2-7x7-c3": (2, 7, 7, 3, 5, 3, 2, ((1, 1), (1, 1))),
    "3x3s2-4x4-c4": (1, 4, 4, 4, 8, 3, 2, ((1, 1), (1, 1))),
    "3x3s2-1x1-c4": (2, 1, 1, 4, 4, 3, 2, ((1, 1), (1, 1))),
    "1x1s1-8x8-c4": (2, 8, 8, 4, 6, 1, 1, ((0, 0), (0, 0))),
    "1x1s2-8x8-c4": (2, 8, 8, 4, 6, 1, 2, ((0, 0), (0, 0))),
    "1x1s2-7x7-c3": (1, 7, 7, 3, 5, 1, 2, ((0, 0), (0, 0))),
    "7x7s2-16x16-c3": (2, 16, 16, 3, 4, 7, 2, ((3, 3), (3, 3))),
    "3x3s2-asymmetric": (2, 9, 10, 3, 4, 3, 2, ((0, 2), (1, 0))),
    "3x3s1-negative": (2, 6, 6, 3, 4, 3, 1, ((-1, 1), (1, -1))),
    "2x3s1-same": (2, 5, 6, 3, 4, (2, 3), 1, "SAME"),
}


def lax_conv(x, w, stride, padding, **kwargs):
    return lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC, **kwargs)


def gemm_conv(x, w, stride, padding, **kwargs):
    return gemm_conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=NHWC, **kwargs)


def inputs(config, dtype):
    """(x [B, H, W, C], w [kh, kw, C, O]) with standard normal entries."""
    batch, height, width, c_in, c_out, kernel, _, _ = config
    kh, kw = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    rng = np.random.default_rng(0)
    return (jnp.asarray(rng.normal(size=(batch, height, width, c_in)), dtype),
            jnp.asarray(rng.normal(size=(kh, kw, c_in, c_out)), dtype))


def value_and_cotangents(conv, x, w, stride, padding, **kwargs):
    """(y, dx, dw) for a cotangent drawn from a fixed seed in y's shape and dtype."""
    y, vjp = jax.vjp(lambda x, w: conv(x, w, stride, padding, **kwargs), x, w)
    dy = jnp.asarray(np.random.default_rng(1).normal(size=y.shape), y.dtype)  # a constant under jit
    return (y, *vjp(dy))


def relative_error(actual, expected) -> float:
    expected = np.asarray(expected, np.float64)
    return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_value_and_gradients_equal_lax(config, dtype):
    *_, stride, padding = config

    @jax.jit
    def both(x, w):
        return (value_and_cotangents(lax_conv, x, w, stride, padding),
                value_and_cotangents(gemm_conv, x, w, stride, padding))

    with jax.enable_x64(dtype == jnp.float64):
        expected, actual = both(*inputs(config, dtype))
        for name, a, e in zip(("y", "dx", "dw"), actual, expected):
            assert a.shape == e.shape and a.dtype == e.dtype == dtype, name
            assert relative_error(a, e) <= TOLERANCE[dtype], name


@pytest.mark.parametrize("config", [CONFIGS["3x3s1-8x8-c3"], CONFIGS["3x3s2-7x7-c3"], CONFIGS["1x1s2-8x8-c4"]],
                         ids=["3x3s1", "3x3s2", "1x1s2"])
def test_bfloat16_inputs_accumulate_in_float32(config):
    *_, stride, padding = config

    @jax.jit
    def both(x, w):
        return (value_and_cotangents(gemm_conv, x, w, stride, padding, preferred_element_type=jnp.float32),
                value_and_cotangents(lax_conv, x.astype(jnp.float32), w.astype(jnp.float32), stride, padding))

    (y, dx, dw), (y32, dx32, dw32) = both(*inputs(config, jnp.bfloat16))
    assert (y.dtype, dx.dtype, dw.dtype) == (jnp.float32, jnp.bfloat16, jnp.bfloat16)
    assert relative_error(y, y32) <= TOLERANCE[jnp.float32]
    assert relative_error(dx, dx32) <= 2**-7 and relative_error(dw, dw32) <= 2**-7


@pytest.mark.parametrize("precision", [lax.Precision.HIGHEST, [lax.Precision.HIGHEST] * 2, "highest"],
                         ids=["enum", "list", "string"])
def test_precision_is_accepted_and_honoured(precision):
    x, w = inputs(CONFIGS["3x3s1-8x8-c3"], jnp.float32)
    actual = jax.jit(lambda x, w: value_and_cotangents(gemm_conv, x, w, 1, ((1, 1), (1, 1)), precision=precision))(x, w)
    expected = value_and_cotangents(lax_conv, x, w, 1, ((1, 1), (1, 1)), precision=lax.Precision.HIGHEST)
    assert all(relative_error(a, e) <= TOLERANCE[jnp.float32] for a, e in zip(actual, expected))


def conv_layer(gemm: bool, seed: int = 0) -> nnx.Conv:
    """A ResNet-style 3x3 stride-2 conv 3 -> 4, through gemm_conv_general_dilated or nnx's default (lax)."""
    extra = {"conv_general_dilated": gemm_conv_general_dilated} if gemm else {}
    return nnx.Conv(3, 4, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, rngs=nnx.Rngs(seed), **extra)


def float64_split(layer: nnx.Conv):
    graphdef, state = nnx.split(layer)
    return graphdef, jax.tree.map(lambda v: v.astype(jnp.float64), state)


def loss(graphdef, state, x):
    return jnp.sum(jnp.sin(nnx.merge(graphdef, state)(x)))


def assert_trees_close(actual, expected, tolerance=1e-10):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    assert all(relative_error(a, e) <= tolerance for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)))


def test_nnx_conv_output_and_gradient_under_jit():
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 7, 3)))
        (lax_def, state), (gemm_def, gemm_state) = float64_split(conv_layer(False)), float64_split(conv_layer(True))
        assert jax.tree.structure(gemm_state) == jax.tree.structure(state)  # the same parameter paths
        forward = jax.jit(lambda graphdef, state, x: nnx.merge(graphdef, state)(x), static_argnums=0)
        assert_trees_close(forward(gemm_def, state, x), forward(lax_def, state, x))
        grad = jax.jit(jax.grad(loss, argnums=1), static_argnums=0)
        assert_trees_close(grad(gemm_def, state, x), grad(lax_def, state, x))


def test_nnx_conv_under_vmap_over_models():
    with jax.enable_x64(True):
        (lax_def, _), (gemm_def, _) = float64_split(conv_layer(False)), float64_split(conv_layer(True))
        states = [float64_split(conv_layer(True, seed))[1] for seed in range(3)]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
        xs = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 8, 8, 3)))

        def over_models(graphdef):
            return jax.jit(jax.vmap(jax.value_and_grad(lambda state, x: loss(graphdef, state, x))))(stacked, xs)

        assert_trees_close(over_models(gemm_def), over_models(lax_def))


@pytest.mark.parametrize("axis", ["shard_map", "pmap"])
def test_gradients_with_the_batch_split_over_devices(axis):
    """Each of 2 devices takes half the batch and the replicated kernel. The filter gradient is the sum of the
    devices' (under shard_map JAX sums the replicated kernel's gradient itself, as for lax's convolution; under
    pmap a psum does); the input gradient is each device's half."""
    with jax.enable_x64(True):
        x, w = inputs(CONFIGS["3x3s2-8x8-c6"], jnp.float64)

        def gradients(w, x):
            return jax.grad(lambda w, x: jnp.sum(gemm_conv(x, w, 2, ((1, 1), (1, 1))) ** 2), argnums=(0, 1))(w, x)

        devices = jax.devices()[:2]
        if axis == "shard_map":
            mesh = Mesh(np.array(devices), ("d",))
            run = jax.jit(jax.shard_map(gradients, mesh=mesh, in_specs=(P(), P("d")), out_specs=(P(), P("d"))))
            dw, dx = run(w, jax.device_put(x, NamedSharding(mesh, P("d"))))
        else:
            def summed(w, x):
                dw, dx = gradients(w, x)
                return lax.psum(dw, "d"), dx

            run = jax.pmap(summed, axis_name="d", in_axes=(None, 0), out_axes=(None, 0), devices=devices)
            dw, dx = run(w, x.reshape(2, 1, *x.shape[1:]))
            dx = dx.reshape(x.shape)
        expected = jax.grad(lambda w, x: jnp.sum(lax_conv(x, w, 2, ((1, 1), (1, 1))) ** 2), argnums=(0, 1))(w, x)
        assert relative_error(dw, expected[0]) <= 1e-10 and relative_error(dx, expected[1]) <= 1e-10


@pytest.mark.parametrize("kwargs, argument", [
    ({"rhs_dilation": (2, 2)}, "rhs_dilation"),
    ({"lhs_dilation": (2, 1)}, "lhs_dilation"),
    ({"feature_group_count": 2}, "feature_group_count"),
    ({"batch_group_count": 2}, "batch_group_count"),
    ({"dimension_numbers": None}, "dimension_numbers"),  # lax's default: NCHW
    ({"dimension_numbers": ("NCHW", "OIHW", "NCHW")}, "dimension_numbers"),
], ids=["rhs_dilation", "lhs_dilation", "feature_group_count", "batch_group_count", "default_nchw", "nchw"])
def test_unsupported_arguments_raise(kwargs, argument):
    x, w = inputs((2, 8, 8, 4, 4, 3, 1, None), jnp.float32)
    call = {"dimension_numbers": NHWC, **kwargs}
    with pytest.raises(ValueError, match=argument):
        gemm_conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), **call)


def test_nnx_conv_with_kernel_dilation_raises():
    layer = nnx.Conv(3, 4, (3, 3), kernel_dilation=2, conv_general_dilated=gemm_conv_general_dilated,
                     rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="rhs_dilation"):
        layer(jnp.ones((1, 8, 8, 3)))


def test_the_choice_reaches_every_resnet_convolution_and_no_other():
    from jaxunlearn.models import create_model
    from jaxunlearn.models.conv import ResNetConv, resolve_conv

    def implementations(model: nnx.Module, kind: type) -> set:
        return {module.conv_general_dilated for _, module in nnx.iter_modules(model) if type(module) is kind}

    resnet = lambda **conv: create_model("resnet18", 10, in_channels=1, width=0.0625, **conv)
    assert implementations(resnet(conv="gemm"), ResNetConv) == {gemm_conv_general_dilated}
    assert implementations(resnet(), ResNetConv) == {lax.conv_general_dilated}
    vit = create_model("vit_small", 10, in_channels=1, image_size=(8, 8), width=0.0625, depth=1, conv="gemm")
    assert implementations(vit, nnx.Conv) == {lax.conv_general_dilated}  # the patch embedding keeps XLA's
    assert not implementations(vit, ResNetConv)
    assert resolve_conv("auto", "cpu") == "xla"  # measured faster on CPU (BENCHMARKS.md)
    with pytest.raises(UserError, match="`conv` must be one of auto, xla, gemm"):
        resolve_conv("fast")
