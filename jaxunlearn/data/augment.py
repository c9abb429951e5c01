"""Data augmentation inside the compiled step: each image transformed by a draw from its own PRNG key
(`StepContext.example_keys`), so an image is augmented the same on any device count."""

import jax
import jax.numpy as jnp


def random_crop_flip(images: jax.Array, keys: jax.Array, padding: int = 4) -> jax.Array:
    """The standard CIFAR augmentation: pad by `padding` pixels of zeros (the dataset's mean colour, on
    normalised images), crop back to [H, W] at a random offset, and flip horizontally with probability ½.

    images: float [B, H, W, C], normalised; keys: [B] PRNG keys, image b's draw from keys[b] alone.
    Returns float [B, H, W, C].
    """
    height, width = images.shape[1:3]

    def one(image: jax.Array, key: jax.Array) -> jax.Array:
        offset_key, flip_key = jax.random.split(key)
        top, left = jax.random.randint(offset_key, (2,), 0, 2 * padding + 1)
        padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
        crop = jax.lax.dynamic_slice(padded, (top, left, 0), (height, width, image.shape[-1]))
        return jnp.where(jax.random.bernoulli(flip_key), crop[:, ::-1], crop)

    return jax.vmap(one)(images, keys)
