"""Test-session setup: 8 fake CPU devices for the multi-device tests.

This must run before any JAX backend initialises, which is why it lives here.
"""

import atexit
import shutil
import tempfile

import jax

jax.config.update("jax_num_cpu_devices", 8)
# Compiled programs are kept for the session, as the CLI keeps them across runs: the many runs of the suite
# compile the same steps again and again (each run builds its own closures), and XLA:CPU takes seconds per
# program. The cache starts empty, so every program is compiled once per session.
_XLA_CACHE = tempfile.mkdtemp(prefix="jaxunlearn-tests-xla-")
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _XLA_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

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


@pytest.fixture(scope="session")
def contrastive_run(digits_run, tmp_path_factory):
    """Contrastive unlearning of class 5 from `digits_run`, through the CLI, with the official defaults."""
    from jaxunlearn.cli import main

    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("cu") / "contrastive"
    assert main(["unlearn", "--method", "contrastive", "--forget", "class:5", "--from", str(source),
                 "--workdir", str(workdir)]) == 0
    return workdir


@pytest.fixture(scope="session")
def retrain_run(digits_run, tmp_path_factory):
    """The retrained reference for class 5 of `digits_run`, 3 epochs, through the CLI."""
    from jaxunlearn.cli import main

    source, _ = digits_run
    workdir = tmp_path_factory.mktemp("retrain") / "retrain"
    assert main(["unlearn", "--method", "retrain", "--forget", "class:5", "--from", str(source),
                 "--workdir", str(workdir), "--epochs", "3"]) == 0
    return workdir
