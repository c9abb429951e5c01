"""Test-session setup: 8 fake CPU devices, one compilation cache and one copy of each shared run per test run.

This must run before any JAX backend initialises, which is why it lives here. `make test` runs the suite in
two pytest-xdist workers; everything here is shared by both: the cache of compiled XLA programs and the
session's shared runs (`shared_run`), each built once by whichever worker needs it first.
"""

import atexit
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

jax.config.update("jax_num_cpu_devices", 8)
# Compiled programs are kept for the test run, as the CLI keeps them across runs: the many runs of the suite
# compile the same steps again and again (each run builds its own closures), and XLA:CPU takes seconds per
# program. The cache starts empty, so every program is compiled once per test run. The pytest-xdist workers
# inherit the directory from the controller (the process that imports this first), which removes it at exit.
if "JAXUNLEARN_TEST_XLA_CACHE" not in os.environ:
    os.environ["JAXUNLEARN_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxunlearn-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAXUNLEARN_TEST_XLA_CACHE"], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAXUNLEARN_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

import pytest  # noqa: E402


def shared_run(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Any]) -> Any:
    """`build(directory)` for the run `name`, done once per test run and shared by the xdist workers.

    The first worker to ask builds it while the others wait; later calls build again in the same directory,
    which for a harness run returns its finished result at once (a rerun of a finished run builds nothing).
    Tests must not write into a shared run except through the library.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the workers' common parent
    directory = root / "shared" / name
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build(directory)


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Callable[[str, Callable[[Path], Any]], Any]:
    """`shared(name, build)`: `shared_run` for a test module's own shared runs."""
    return lambda name, build: shared_run(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The demo's original model (narrow ResNet-18 on digits, 15 epochs), trained once per test run.

    Returns (run directory, its final metrics).
    """
    from jaxunlearn.demo import FORGET, TRAIN
    from jaxunlearn.run import training_data
    from jaxunlearn.runs import obtain_split, train

    def build(run: Path):
        metrics = train(TRAIN, run)
        # the class-5 split the tests unlearn, saved now: no test writes it into the shared run while another
        # test compares the run's files before and after a refusal
        obtain_split(run, training_data(TRAIN), FORGET, "default", 0)
        return run, metrics

    return shared_run(tmp_path_factory, "digits", build)


def _cli_run(tmp_path_factory, name: str, args: list[str]) -> Path:
    from jaxunlearn.cli import main

    def build(workdir: Path) -> Path:
        assert main([*args, "--workdir", str(workdir)]) == 0
        return workdir

    return shared_run(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def contrastive_run(digits_run, tmp_path_factory):
    """Contrastive unlearning of class 5 from `digits_run`, through the CLI, with the official defaults."""
    source, _ = digits_run
    return _cli_run(tmp_path_factory, "contrastive",
                    ["unlearn", "--method", "contrastive", "--forget", "class:5", "--from", str(source)])


@pytest.fixture(scope="session")
def retrain_run(digits_run, tmp_path_factory):
    """The retrained reference for class 5 of `digits_run`, 3 epochs, through the CLI."""
    source, _ = digits_run
    return _cli_run(tmp_path_factory, "retrain", ["unlearn", "--method", "retrain", "--forget", "class:5", "--from",
                                                  str(source), "--epochs", "3"])
