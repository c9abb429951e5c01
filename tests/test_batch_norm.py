"""MaskedBatchNorm against numpy on a hand-made batch spread unevenly over 3 devices.

float64 throughout, so the comparison is to 1e-12: the layer sums a dozen products, and numpy computes the
same moments in another order (rounding ~1e-16 each).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxunlearn.engine.parallel import DATA_AXIS, data_mesh
from jaxunlearn.models.batch_norm import MaskedBatchNorm

MOMENTUM, EPSILON = 0.9, 1e-5
# 9 samples over 3 devices: device 0 holds 3 real samples, device 1 one real and two padding slots,
# device 2 only padding (a batch of 4 real samples padded to 9).
MASK = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0], np.float64)


def hand_made_batch() -> np.ndarray:
    """[9, 2, 2, 3] NHWC: real samples with distinct moments per channel, padding slots far off (1e3)."""
    x = np.arange(9 * 2 * 2 * 3, dtype=np.float64).reshape(9, 2, 2, 3) % 7 - 3.0
    x[:, :, :, 1] *= 2.5
    x[MASK == 0] = 1e3
    return x


def numpy_batch_norm(x: np.ndarray, mask: np.ndarray, scale: np.ndarray, bias: np.ndarray):
    """The textbook layer over the real samples only: (output [B, H, W, C], mean [C], biased var [C])."""
    real = x[mask > 0].reshape(-1, x.shape[-1])
    mean, var = real.mean(axis=0), real.var(axis=0)
    return (x - mean) / np.sqrt(var + EPSILON) * scale + bias, mean, var


def float64_split(bn: MaskedBatchNorm):
    """(graphdef, state) with every variable in float64 (Flax keeps running statistics in float32)."""
    graphdef, state = nnx.split(bn)
    return graphdef, jax.tree.map(lambda v: v.astype(jnp.float64), state)


def layer(axis_name: str | None) -> MaskedBatchNorm:
    bn = MaskedBatchNorm(3, momentum=MOMENTUM, epsilon=EPSILON, axis_name=axis_name, rngs=nnx.Rngs(0))
    bn.scale[...] = jnp.array([1.0, 0.5, 2.0], jnp.float32)  # exact in float32; the split casts to float64
    bn.bias[...] = jnp.array([0.0, 1.0, -1.0], jnp.float32)
    return bn


def split_over(mesh, *arrays: np.ndarray) -> list[jax.Array]:
    """Each array's leading axis split over the mesh's devices."""
    return [jax.device_put(jnp.asarray(a), NamedSharding(mesh, P(DATA_AXIS))) for a in arrays]


def sharded_call(x: np.ndarray, mask: np.ndarray):
    """The layer in training mode under shard_map on 3 devices: (output, running mean, running var)."""
    graphdef, state = float64_split(layer(DATA_AXIS))

    def per_device(state, x, mask):
        bn = nnx.merge(graphdef, state, copy=True)
        y = bn(x, use_running_average=False, mask=mask)
        return y, bn.mean[...], bn.var[...]

    mesh = data_mesh(3)
    run = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)),
                                out_specs=(P(DATA_AXIS), P(), P()), check_vma=False))
    return run(state, *split_over(mesh, x, mask))


def test_statistics_and_output_use_only_the_real_samples_of_all_devices():
    with jax.enable_x64(True):
        x = hand_made_batch()
        y, running_mean, running_var = sharded_call(x, MASK)
        expected, mean, var = numpy_batch_norm(x, MASK, np.array([1.0, 0.5, 2.0]), np.array([0.0, 1.0, -1.0]))
        real = MASK > 0
        np.testing.assert_allclose(np.asarray(y)[real], expected[real], rtol=1e-12, atol=1e-12)
        # Running statistics start at mean 0, var 1 and move (1 − momentum) of the way to the batch's.
        np.testing.assert_allclose(running_mean, (1 - MOMENTUM) * mean, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(running_var, MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-12, atol=1e-12)
        assert np.all(np.abs(mean) < 10)  # the padding slots' 1e3 did not leak in


def test_padding_slots_receive_no_gradient():
    with jax.enable_x64(True):
        x = hand_made_batch()
        graphdef, state = float64_split(layer(DATA_AXIS))

        def per_device(x, mask):
            def loss(x):
                y = nnx.merge(graphdef, state, copy=True)(x, use_running_average=False, mask=mask)
                return jax.lax.psum(jnp.sum(mask[:, None, None, None] * jnp.sin(y)), DATA_AXIS)
            return jax.grad(loss)(x)

        mesh = data_mesh(3)
        grad = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(DATA_AXIS), P(DATA_AXIS)), out_specs=P(DATA_AXIS),
                                     check_vma=False))(*split_over(mesh, x, MASK))
        grad = np.asarray(grad)
        assert np.all(grad[MASK == 0] == 0) and np.all(np.abs(grad[MASK > 0]).sum(axis=(1, 2, 3)) > 0)


@pytest.mark.parametrize("use_running_average", [False, True])
def test_without_a_mask_it_is_flax_batch_norm_bit_for_bit(use_running_average):
    x = jnp.asarray(hand_made_batch()[:4], jnp.float32)
    ours = MaskedBatchNorm(3, momentum=MOMENTUM, epsilon=EPSILON, rngs=nnx.Rngs(0))
    flax = nnx.BatchNorm(3, momentum=MOMENTUM, epsilon=EPSILON, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(ours(x, use_running_average), flax(x, use_running_average))
    np.testing.assert_array_equal(ours.mean[...], flax.mean[...])
    np.testing.assert_array_equal(ours.var[...], flax.var[...])
