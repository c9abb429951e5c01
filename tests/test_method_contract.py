"""The contract every registered method meets, run over all of them (a new method gets it for free), with the
functions of the public check `jaxunlearn.testing.check_method` (whose docstring states the contract and its
tolerances): defaults that validate and refuse bad values, a deterministic plan, one finite step equal on 1
and 2 devices, two vmapped models stepping like one, a state that survives a checkpoint, and a step on a
user's model it has never seen. A user's method written outside the package: tests/test_user_method.py.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxunlearn import testing
from jaxunlearn.engine.parallel import DATA_AXIS
from jaxunlearn.methods import METHODS
from jaxunlearn.methods.base import BUILT_IN
from jaxunlearn.models import EmbeddingClassifier, relu_l2_normalise

SMALL = {
    "contrastive": ("random:16", {"batch_size": "16", "retain_per_forget": "2", "epochs": "1"}),
    "retrain": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "finetune": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "gradient_ascent": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "neggrad_plus": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "random_label": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "l1_sparse": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "salun": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "boundary_shrink": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "boundary_expand": ("class:5", {"epochs": "1", "batch_size": "64"}),
    "scrub": ("class:5", {"epochs": "1", "batch_size": "64", "msteps": "1", "forget_batch_size": "64"}),
    "unsir": ("class:5", {"epochs": "2", "batch_size": "64", "noise_batch": "8", "noise_steps": "2",
                          "noise_copies": "2", "retain_per_class": "20"}),
    "bad_teacher": ("class:5", {"epochs": "1", "batch_size": "64"}),
}
"""Every method at a size that takes one step quickly: (forget spec, overrides). Batches divide by 2 devices."""


class UserEmbedding(nnx.Module):
    """A user's embedding network with its own layer names and no `mask` argument."""

    def __init__(self, rngs):
        self.conv = nnx.Conv(1, 8, (3, 3), strides=2, use_bias=False, rngs=rngs)  # BatchNorm follows
        self.norm = nnx.BatchNorm(8, axis_name=DATA_AXIS, rngs=rngs)
        self.out = nnx.Linear(8, 16, rngs=rngs)

    def __call__(self, x, *, train):
        x = nnx.relu(self.norm(self.conv(x), use_running_average=not train))
        return relu_l2_normalise(self.out(x.mean(axis=(1, 2))))


def user_model(num_classes, seed):
    """An `EmbeddingClassifier`: the user's embedding network and a plain linear head."""
    rngs = nnx.Rngs(seed)
    return EmbeddingClassifier(UserEmbedding(rngs), nnx.Linear(16, num_classes, rngs=rngs))


@pytest.fixture(scope="module")
def digits():
    return testing.digits()


def ready(name, dataset, data, seed=0, build=testing.small_model):
    forget, overrides = SMALL[name]
    return testing.setup(METHODS[name], forget, overrides, dataset, data, seed, build)


def one_step(name, dataset, data, devices, build=testing.small_model):
    forget, overrides = SMALL[name]
    return testing.one_step(METHODS[name], forget, overrides, dataset, data, devices, build)


def test_every_method_has_small_settings():
    assert set(SMALL) == set(BUILT_IN) <= set(METHODS)


@pytest.mark.parametrize("name", BUILT_IN)
def test_defaults_validate_and_bad_values_are_refused(name):
    testing.check_defaults(METHODS[name])


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_plan_is_deterministic_in_seed_and_epoch(name, digits):
    testing.check_plan(METHODS[name], ready(name, *digits))


@pytest.mark.parametrize("name", BUILT_IN)
def test_one_step_is_finite_and_equal_on_one_and_two_devices(name, digits):
    forget, overrides = SMALL[name]
    testing.check_devices(METHODS[name], forget, overrides, *digits)


@pytest.mark.parametrize("name", BUILT_IN)
def test_two_models_vmapped_step_like_one_and_the_state_survives_a_checkpoint(name, digits, tmp_path):
    forget, overrides = SMALL[name]
    testing.check_models_side_by_side(METHODS[name], forget, overrides, *digits, one_step(name, *digits, 1),
                                      str(tmp_path))


@pytest.mark.parametrize("name", BUILT_IN)
def test_one_step_on_a_user_model(name, digits):
    """Every method steps a model it knows nothing of (an `EmbeddingClassifier` of the user's modules), on 1
    and 2 devices alike."""
    dataset, data = digits
    forget, overrides = SMALL[name]
    single = testing.check_devices(METHODS[name], forget, overrides, dataset, data, build=user_model)
    assert single[1].step == 1
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
        jax.tree.leaves(single[1].params), jax.tree.leaves(ready(name, dataset, data, build=user_model).state.params))]
    assert max(moved) > 0
