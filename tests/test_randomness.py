"""Explicit randomness: the step's key, per-example keys, dropout and the crop-and-flip augmentation.

That they draw the same on any device count is tests/test_parallel.py's; that a resumed run draws what the
killed one would follows from the key living in the checkpointed state (tests/test_checkpoint.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxunlearn as ju
from jaxunlearn.config import SupervisedHparams, TrainConfig
from jaxunlearn.data.augment import random_crop_flip
from jaxunlearn.engine.state import create_state, model_key
from jaxunlearn.errors import UserError
from jaxunlearn.methods.supervised import augmented_supervised_loss, supervised_loss, supervised_objective
from jaxunlearn.models import create_model
from jaxunlearn.models.resnet import example_dropout


def test_crop_and_flip_moves_each_image_by_its_own_draw():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8, 8, 3)), jnp.float32)
    keys = jax.vmap(jax.random.key)(jnp.arange(64))
    out = np.asarray(random_crop_flip(images, keys, padding=2))
    again = np.asarray(random_crop_flip(images, keys, padding=2))
    np.testing.assert_array_equal(out, again)  # a function of the keys alone
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets, flips = set(), 0
    for b in range(64):  # each output is one 8×8 window of the zero-padded image, mirrored or not
        window = lambda top, left, flip: padded[b, top:top + 8, left:left + 8][:, ::-1 if flip else 1]
        found = [(top, left, flip) for top in range(5) for left in range(5) for flip in (False, True)
                 if np.array_equal(out[b], window(top, left, flip))]
        assert found, b
        offsets.add(found[0][:2])
        flips += found[0][2]
    assert len(offsets) > 10 and 16 < flips < 48  # 25 offsets and a fair coin: drawn, not fixed
    np.testing.assert_array_equal(random_crop_flip(images[5:6], keys[5:6], padding=2)[0], out[5])  # per image


def test_example_dropout_masks_per_example_and_keeps_the_mean():
    x = jnp.ones((4, 1000))
    keys = jax.vmap(jax.random.key)(jnp.arange(4))
    out = np.asarray(example_dropout(x, 0.25, keys))
    assert set(np.unique(out)) == {0.0, np.float32(1 / 0.75)}
    assert abs((out == 0).mean() - 0.25) < 0.03  # 4000 Bernoulli(0.25) draws: 0.03 is over 4 standard errors
    np.testing.assert_array_equal(example_dropout(x[2:3], 0.25, keys[2:3])[0], out[2])


def test_a_dropout_model_draws_in_training_only_and_the_step_supplies_its_keys():
    model = create_model("resnet18", 10, in_channels=1, width=0.0625, dropout=0.5)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 8, 8, 1)), jnp.float32)
    keys = lambda seed: jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.arange(8))
    eval_logits = model(images, train=False)[0]
    np.testing.assert_array_equal(model(images, train=False, keys=keys(0))[0], eval_logits)
    first, second = model(images, train=True, keys=keys(0))[0], model(images, train=True, keys=keys(1))[0]
    assert float(jnp.abs(first - second).max()) > 1e-3
    np.testing.assert_array_equal(model(images, train=True, keys=keys(0))[0], first)

    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = optax.sgd(0.0)  # no update: the losses differ only by the step's draws
    step = jax.jit(ju.make_step(graphdef, tx, supervised_loss))
    batch = {"train": (images, jnp.arange(8) % 10)}
    losses = {}
    for seed in (0, 1):
        state = create_state(params, batch_stats, tx, key=model_key(seed))
        state, first_metrics = step(state, batch)
        _, second_metrics = step(state, batch)
        losses[seed] = (float(first_metrics["loss"]), float(second_metrics["loss"]))
    assert losses[0][0] != losses[0][1]  # the key of step 1 is not that of step 0
    assert losses[0] != losses[1]  # nor is model 1's that of model 0
    again = step(create_state(params, batch_stats, tx, key=model_key(0)), batch)[1]["loss"]
    assert float(again) == losses[0][0]


def test_the_recipe_chooses_its_loss_and_bad_settings_are_refused():
    assert supervised_objective(SupervisedHparams()) is supervised_loss
    assert supervised_objective(SupervisedHparams(augment=True)) is augmented_supervised_loss
    for rate in (-0.1, 1.0):
        with pytest.raises(UserError, match="dropout"):
            TrainConfig(dropout=rate).validate()
        with pytest.raises(UserError, match="dropout"):
            create_model("resnet18", 10, in_channels=1, width=0.0625, dropout=rate)
