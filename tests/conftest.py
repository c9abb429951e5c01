"""Test-session setup: 8 fake CPU devices for the multi-device tests.

This must run before any JAX backend initialises, which is why it lives here.
"""

import jax

jax.config.update("jax_num_cpu_devices", 8)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The demo's original model (narrow ResNet-18 on digits, 15 epochs), trained once per session.

    Returns (run directory, its final metrics). Tests must not write into it except through the library.
    """
    from jaxunlearn.demo import TRAIN
    from jaxunlearn.runs import train

    run = tmp_path_factory.mktemp("digits") / "original"
    return run, train(TRAIN, run)
