"""The examples run as a user runs them (their own processes, one CPU device) and do what they say."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent.parent / "examples" / "own_model.py"


@pytest.mark.slow
def test_own_model_example_trains_forgets_and_evaluates(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLE), "--json", str(tmp_path / "results.json")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "CU stopped after" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    original, unlearned = results["original"], results["contrastive"]
    assert original["test_acc"] > 0.9 and original["forget_test_acc"] > 0.9
    assert unlearned["forget_test_acc"] <= 0.1  # CU's rule: at most chance (1/10) on the forgotten class
    assert unlearned["test_acc"] > 0.9 and unlearned["forget_train_acc"] < 0.1
    assert 1 <= results["unlearn_epochs"] <= 30
    for metrics in (original, unlearned):  # the library's whole evaluation, shallow-forgetting checks included
        assert {"mia_efficacy", "probe_forget_acc", "bn_recomputed_forget_test_acc"} <= set(metrics)


OWN_DATA = Path(__file__).parent.parent / "examples" / "own_data.py"


@pytest.mark.slow
def test_own_data_goes_through_every_command_from_python_and_from_the_command_line(tmp_path):
    """examples/own_data.py: the user's arrays (3 classes of 16×16 RGB shapes) trained, unlearned with CU,
    evaluated against retraining and reported from Python; then the same dataset by its import path through
    train, unlearn, evaluate, report and audit on the command line."""
    result = subprocess.run([sys.executable, str(OWN_DATA), str(tmp_path / "py")], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    original = json.loads((tmp_path / "py" / "original" / "metrics.json").read_text())
    unlearned = json.loads((tmp_path / "py" / "contrastive" / "metrics.json").read_text())
    assert original["test_acc"] >= 0.9
    assert unlearned["forget_test_acc"] <= 1 / 3  # CU's rule with C = 3, not the 1/10 of a faked 10-class set
    assert unlearned["test_acc"] >= 0.85 and "js_forget" in unlearned  # evaluated against the retrained run
    assert (tmp_path / "py" / "report" / "report.md").is_file()

    def cli(*args):
        finished = subprocess.run([sys.executable, "-m", "jaxunlearn.cli", *map(str, args)], cwd=OWN_DATA.parent,
                                  capture_output=True, text=True, timeout=900)
        assert finished.returncode == 0, finished.stderr[-3000:]
        return finished.stdout

    runs = tmp_path / "cli"
    cli("train", "--dataset", "own_data:make_dataset", "--width", 0.125, "--epochs", 6, "--batch-size", 64,
        "--workdir", runs / "original")
    config = json.loads((runs / "original" / "config.json").read_text())
    assert config["config"]["dataset"] == "own_data:make_dataset" and len(config["dataset_fingerprint"]) == 64
    for method in ("contrastive", "retrain"):
        cli("unlearn", "--method", method, "--forget", "class:1", "--from", runs / "original", "--workdir", runs / method)
    assert "forget_test_acc" in cli("evaluate", "--from", runs / "contrastive", "--reference", runs / "retrain")
    cli("report", runs / "contrastive", runs / "retrain", "--out", runs / "report")
    cli("audit", "--from", runs / "original", "--forget", "class:1", "--method", "contrastive", "--models", 2,
        "--epochs", 1, "--workdir", runs / "audit")
    audit = json.loads((runs / "audit" / "audit.json").read_text())
    assert audit["models"] == 2 and 0 <= audit["methods"]["contrastive"]["forget_quality"] <= 1
