"""XLA's trace summed by kind of work: each convolution of a gradient lands in its own category."""

import jax
import jax.numpy as jnp
from jax import lax

from jaxunlearn.xla_profile import CATEGORIES, instruction_categories, profile_program


def conv_loss(x: jax.Array, w: jax.Array, v: jax.Array) -> jax.Array:
    """A 3x3 convolution, ReLU, a matmul and a sum: [4, 8, 8, 16] → scalar."""
    y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y).reshape(4, -1) @ v)


def compiled_gradient():
    x, w, v = jnp.ones((4, 8, 8, 16)), jnp.ones((3, 3, 16, 16)), jnp.ones((8 * 8 * 16, 2))
    gradient = jax.jit(jax.grad(conv_loss, argnums=(0, 1)))
    return gradient, (x, w, v), gradient.lower(x, w, v).compile()


def test_the_three_convolutions_of_a_gradient_and_the_matmul_are_told_apart():
    _, _, compiled = compiled_gradient()
    found = set(instruction_categories(compiled.as_text()).values())
    assert {"conv forward", "conv input grad", "conv filter grad", "matmul"} <= found
    assert found <= set(CATEGORIES)


def test_the_profile_times_every_kind_of_work_the_program_does():
    gradient, args, compiled = compiled_gradient()
    jax.block_until_ready(gradient(*args))
    profile = profile_program(lambda: gradient(*args), compiled, repeats=3)
    ms = profile["op_ms_per_step"]
    assert set(ms) == set(CATEGORIES)
    for category in ("conv forward", "conv input grad", "conv filter grad", "matmul"):
        assert ms[category] > 0, category
    assert ms["collective"] == 0  # one device
    assert profile["untraced_share"] == 0
    assert profile["ms_per_step"] > 0
