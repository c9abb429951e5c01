"""BatchNorm whose training statistics skip padding slots, across devices.

A batch padded to a multiple of the device count (`jaxunlearn.engine.parallel.pad_to_devices`) carries a
mask: 1 for a real sample, 0 for a padding slot. Flax's own `BatchNorm(mask=)` averages each device's
masked mean over the devices (`pmean`), which is wrong when the devices hold different numbers of real
samples and NaN on a device that holds none. Here the sums and the counts are reduced over the axis first.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class MaskedBatchNorm(nnx.BatchNorm):
    """`nnx.BatchNorm` over the last (feature) axis, with a per-sample mask in training mode and float32
    statistics at any compute dtype.

    mask: [B] (1 real, 0 padding) or None. With a mask and batch statistics, the statistics are
    mean = Σ_devices Σ_{b,h,w} m_b·x / Σ_devices Σ_{b,h,w} m_b and var = E[x²] − mean² (Flax's fast variance),
    reduced over `axis_name` when it is set; the running statistics are updated with them as Flax does.
    With dtype bfloat16 the statistics, the running statistics and the normalisation are computed in float32
    and only the output is bfloat16 (Flax's BatchNorm would round the running statistics to bfloat16 every
    step). Without a mask, at float32 (or dtype None), it is `nnx.BatchNorm` exactly.
    """

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
                 mask: jax.Array | None = None) -> jax.Array:
        if mask is None and (self.dtype is None or jnp.dtype(self.dtype) == jnp.float32):
            return super().__call__(x, use_running_average)
        output_dtype = self.dtype or x.dtype
        x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var = self._batch_statistics(x, jnp.ones(x.shape[:1], x.dtype) if mask is None else mask)
            for running, batch in ((self.mean, mean), (self.var, var)):
                updated = self.momentum * running[...] + (1 - self.momentum) * batch
                running[...] = jax.lax.stop_gradient(updated).astype(running.dtype)
        y = (x - mean) * (jax.lax.rsqrt(var + self.epsilon) * self.scale[...])
        return (y + self.bias[...]).astype(output_dtype)

    def _batch_statistics(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mean, var) [C] of x [B, ..., C] over the real samples of every device on `axis_name`."""
        weights = jnp.asarray(mask, x.dtype).reshape(mask.shape + (1,) * (x.ndim - mask.ndim))
        axes = tuple(range(x.ndim - 1))
        sums = jnp.stack([jnp.sum(weights * x, axes), jnp.sum(weights * jnp.square(x), axes)])
        count = jnp.sum(weights) * (x[..., 0].size // x.shape[0])
        if self.axis_name is not None:
            sums, count = jax.lax.psum((sums, count), self.axis_name)
        mean, mean_square = sums[0] / count, sums[1] / count
        return mean, jnp.maximum(0.0, mean_square - jnp.square(mean))
