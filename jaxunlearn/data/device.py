"""The dataset as device-resident arrays, and batch gathering inside compiled code."""

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn.data.dataset import Dataset, read_images


@dataclass(frozen=True)
class DeviceData:
    """Train, test and (when the dataset holds one out) validation images on device, still uint8; normalised
    per batch inside the step."""

    train_images: jax.Array  # uint8 [N, H, W, C]
    train_labels: jax.Array  # int32 [N]
    test_images: jax.Array  # uint8 [M, H, W, C]
    test_labels: jax.Array  # int32 [M]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    validation_images: jax.Array | None = None  # uint8 [V, H, W, C]

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> "DeviceData":
        """Every set of `dataset` on the default device (a source read by index is read whole first)."""
        whole = lambda source: jax.device_put(source if isinstance(source, np.ndarray)
                                              else read_images(source, np.arange(len(source))))
        return cls(
            train_images=whole(dataset.train_images),
            train_labels=jax.device_put(dataset.train_labels.astype(np.int32)),
            test_images=whole(dataset.test_images),
            test_labels=jax.device_put(dataset.test_labels.astype(np.int32)),
            mean=tuple(dataset.mean),
            std=tuple(dataset.std),
            validation_images=None if dataset.validation_images is None else whole(dataset.validation_images),
        )


def normalise(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
    """uint8 [..., C] → float32 [..., C]: (x/255 − mean)/std per channel."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def gather_batch(
    images: jax.Array, labels: jax.Array, indices: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[jax.Array, jax.Array]:
    """Gather rows `indices` [B] of a device-resident set: (float32 [B, H, W, C], int32 [B])."""
    return normalise(images[indices], mean, std), labels[indices]
