"""examples/own_model.py runs as a user runs it (its own process, one CPU device) and does what it says."""

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
