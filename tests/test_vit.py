"""SupConViT: shapes, feat geometry, the ViT-small parameter count, errors, bf16 compute, a training step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxunlearn.errors import UserError
from jaxunlearn.models.resnet import count_params
from jaxunlearn.models.vit import SupConViT

TINY = {"width": 0.125, "depth": 2}  # dim 48, MLP 192, 2 blocks: fast on CPU, same code paths as ViT-small


def _tiny_model(image_shape: tuple[int, int, int] = (8, 8, 1), *, seed: int = 0, **kwargs) -> SupConViT:
    return SupConViT(10, in_channels=image_shape[-1], image_size=image_shape[:2], rngs=nnx.Rngs(seed),
                     **(TINY | kwargs))


def _forward(model: SupConViT, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    graphdef, state = nnx.split(model)
    return jax.jit(lambda state, images: nnx.merge(graphdef, state)(images, train=True))(state, images)


def _images(shape: tuple[int, ...], seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("image_shape", [(8, 8, 1), (32, 32, 3)])
def test_output_shapes_dtypes_and_feat_geometry(image_shape, pool):
    model = _tiny_model(image_shape, pool=pool)
    assert model.encoder.output_dim == 48
    logits, feat = _forward(model, _images((3, *image_shape)))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert feat.shape == (3, 128) and feat.dtype == jnp.float32
    assert np.all(np.isfinite(logits)) and np.all(np.asarray(feat) >= 0)
    assert np.all(np.linalg.norm(feat, axis=1) <= 1 + 1e-5)


def test_param_count_vit_small():
    model = nnx.eval_shape(lambda: SupConViT(10, in_channels=3, image_size=(32, 32), rngs=nnx.Rngs(0)))
    dim, mlp, depth, p, channels, patches, feature_dim, classes = 384, 1536, 12, 4, 3, 64, 128, 10
    block = 2 * 2 * dim + (4 * dim * dim + 4 * dim) + (dim * mlp + mlp + mlp * dim + dim)
    expected = (
        (p * p * channels * dim + dim)  # patch embedding
        + (patches + 1) * dim  # position embeddings, class token included
        + dim  # class token
        + depth * block
        + 2 * dim  # final LayerNorm
        + (dim * dim + dim) + (dim * feature_dim + feature_dim)  # head
        + (feature_dim * classes + classes)  # classifier
    )
    assert count_params(nnx.state(model)) == expected == 21_536_906
    _, _, rest = nnx.split(model, nnx.Param, ...)
    assert not jax.tree.leaves(rest)


@pytest.mark.parametrize("kwargs, message", [
    ({"image_size": (30, 32)}, "multiples of the patch size"),
    ({"pool": "max"}, "unknown pool"),
    ({"width": 0}, "width must be > 0"),
    ({"depth": 0}, "depth must be >= 1"),
    ({"num_classes": 1}, "num_classes must be >= 2"),
    ({"in_channels": 0}, "in_channels must be >= 1"),
])
def test_bad_settings_raise_user_error(kwargs, message):
    settings = {"num_classes": 10, "in_channels": 3, "image_size": (32, 32)} | TINY | kwargs
    with pytest.raises(UserError, match=message):
        SupConViT(settings.pop("num_classes"), rngs=nnx.Rngs(0), **settings)


def test_bf16_compute_keeps_float32_params_and_outputs():
    f32 = _tiny_model((32, 32, 3))
    bf16 = _tiny_model((32, 32, 3), dtype=jnp.bfloat16)
    nnx.update(bf16, nnx.state(f32, nnx.Param))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    images = _images((4, 32, 32, 3))
    logits_32, _ = _forward(f32, images)
    logits_16, feat_16 = _forward(bf16, images)
    assert logits_16.dtype == feat_16.dtype == jnp.float32
    assert jax.eval_shape(bf16.encoder, images).dtype == jnp.bfloat16  # the encoder does compute in bf16
    scale = float(jnp.max(jnp.abs(logits_32)))
    assert float(jnp.max(jnp.abs(logits_16 - logits_32))) <= 5e-2 * scale


def test_jitted_gradient_step_changes_params():
    model = _tiny_model()
    graphdef, params = nnx.split(model, nnx.Param)
    images, labels = _images((4, 8, 8, 1)), jnp.arange(4)

    @jax.jit
    def step(params):
        def loss(params):
            logits, _ = nnx.merge(graphdef, params)(images, train=True)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

        grads = jax.grad(loss)(params)
        return jax.tree.map(lambda p, g: p - 0.1 * g, params, grads), grads

    new_params, grads = step(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(new_params))
    changed = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(new_params))]
    assert all(changed)  # every parameter, class and position embeddings included, gets a gradient
