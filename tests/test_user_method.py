"""A method written in a user's own file: docs/adding-a-method.md's code, run exactly as written, meets the
public contract check and runs through `unlearn`, `experiment` and `audit` from the command line with
`--plugin`; typed hyperparameters are accepted where overrides are, and a notebook can register again."""

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jaxunlearn as ju
from jaxunlearn import runs, testing
from jaxunlearn.config import UnlearnConfig
from jaxunlearn.errors import UserError
from jaxunlearn.methods import METHODS

DOC = Path(__file__).parent.parent / "docs" / "adding-a-method.md"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """docs/adding-a-method.md's Python blocks, in order, as the user's file my_method.py, imported."""
    directory = tmp_path_factory.mktemp("plugin")
    code = "\n\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))
    (directory / "my_method.py").write_text(code)
    sys.path.insert(0, str(directory))
    yield directory, importlib.import_module("my_method")
    sys.path.remove(str(directory))


def test_the_documented_method_meets_the_public_contract(plugin):
    _, module = plugin
    assert isinstance(METHODS["confuse"], module.Confuse)
    testing.check_method("confuse", forget="class:5", overrides={"epochs": "1"})


def test_the_contract_check_catches_a_method_that_breaks_it(plugin):
    _, module = plugin

    class Unseeded(module.Confuse):  # a plan drawn from an unseeded generator: not replayable
        name = "unseeded"

        def plan(self, hparams, context, epoch):
            retain = np.random.default_rng().choice(context.split.retain, (3, hparams.batch_size)).astype(np.int32)
            return [{"retain": retain, "forget": retain}]

    with pytest.raises(AssertionError, match="not deterministic|another seed"):
        testing.check_method(Unseeded(), forget="class:5", overrides={"epochs": "1"})


def test_a_notebook_registers_again_and_a_built_in_is_never_replaced(plugin):
    _, module = plugin
    importlib.reload(module)  # the cell run again: @ju.register(replace=True)
    assert type(METHODS["confuse"]).__module__ == "my_method"
    with pytest.raises(UserError, match="registered already"):
        ju.register(type("Again", (module.Confuse,), {"name": "confuse"}))
    with pytest.raises(UserError, match="registered already"):
        ju.register(replace=True)(type("Mine", (module.Confuse,), {"name": "contrastive"}))


def test_typed_hyperparameters_are_accepted_where_overrides_are(digits_run, tmp_path):
    source, _ = digits_run
    typed = UnlearnConfig(method="contrastive", forget="class:5", hparams=ju.ContrastiveHparams(batch_size=64, epochs=1))
    spelled = UnlearnConfig(method="contrastive", forget="class:5", hparams={"epochs": "1"})
    original = runs.source_config(source)
    assert runs.resolve_hparams(typed, original) == runs.resolve_hparams(spelled, original)
    with pytest.raises(UserError, match="takes ContrastiveHparams, not SupervisedHparams"):
        runs.resolve_hparams(UnlearnConfig(method="contrastive", forget="class:5",
                                           hparams=ju.SupervisedHparams()), original)


@pytest.mark.slow
def test_the_users_method_runs_through_unlearn_experiment_and_audit(plugin, digits_run, tmp_path):
    directory, _ = plugin
    source, _ = digits_run

    def cli(*args):
        finished = subprocess.run([sys.executable, "-m", "jaxunlearn.cli", "--plugin", "my_method", *map(str, args)],
                                  cwd=directory, capture_output=True, text=True, timeout=900)
        assert finished.returncode == 0, finished.stderr[-3000:]
        return finished

    cli("unlearn", "--method", "confuse", "--forget", "class:5", "--epochs", 2, "--from", source,
        "--workdir", tmp_path / "confuse")
    metrics = json.loads((tmp_path / "confuse" / "metrics.json").read_text())
    assert metrics["steps"] == 2 * (len(runs.obtain_split(source, runs.Run(source).dataset,
                                                          ju.parse_forget("class:5"), "default", 0).retain) // 64)
    assert metrics["forget_test_acc"] < 0.5  # pushed towards chance on the class
    (tmp_path / "protocol.py").write_text(
        "from jaxunlearn.config import SupervisedHparams, TrainConfig\n"
        "from jaxunlearn.experiment import ExperimentProtocol\n"
        "PROTOCOL = ExperimentProtocol(name='p', description='', forget='class:5', methods=('confuse',),\n"
        "    seeds=(0,), hparams={'confuse': {'epochs': '1'}}, reference_hparams={'epochs': '1'},\n"
        "    train=TrainConfig(dataset='digits', width=0.0625, recipe=SupervisedHparams(epochs=1, batch_size=64)))\n")
    cli("experiment", tmp_path / "protocol.py", "--runs-dir", tmp_path / "runs", "--out", tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {"original", "retrain", "confuse"} <= set(results["runs"]["0"])
    cli("audit", "--method", "confuse", "--forget", "class:5", "--from", source, "--models", 2, "--epochs", 1,
        "--workdir", tmp_path / "audit")
    assert "confuse" in json.loads((tmp_path / "audit" / "audit.json").read_text())["methods"]
