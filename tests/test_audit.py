"""`jaxunlearn audit` end to end on digits with a small N, and its refusals."""

import json

import numpy as np
import pytest

from jaxunlearn.cli import main
from jaxunlearn.config import SupervisedHparams, TrainConfig

N = 3


@pytest.fixture(scope="module")
def small_original(shared):
    """A 3-epoch narrow ResNet-18 on digits: quick to retrain N times."""
    from jaxunlearn.runs import train

    config = TrainConfig(dataset="digits", width=0.125, recipe=SupervisedHparams(epochs=3, batch_size=64))
    return shared("audit-source", lambda run: train(config, run) and run)


@pytest.fixture(scope="module")
def audited(small_original, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("audit") / "audit"
    arguments = ["audit", "--from", str(small_original), "--forget", "class:5", "--models", str(N),
                 "--workdir", str(workdir)]
    assert main([*arguments, "--method", "contrastive", "--epochs", "2"]) == 0
    first = json.loads((workdir / "audit.json").read_text())
    retrain_log = (workdir / "retrain" / "metrics.jsonl").read_text()
    assert main([*arguments, "--method", "gradient_ascent", "--epochs", "1", "--batch-size", "64"]) == 0
    assert (workdir / "retrain" / "metrics.jsonl").read_text() == retrain_log  # the shared arms are reused
    return workdir, first


@pytest.mark.slow
def test_audit_scores_the_method_against_the_retrain_floor(audited):
    workdir, _ = audited
    summary = json.loads((workdir / "audit.json").read_text())
    assert summary["models"] == N and summary["forget"] == "class:5"
    assert set(summary["methods"]) == {"contrastive", "gradient_ascent"}
    floor, original = summary["floor"]["forget_quality"], summary["original"]["forget_quality"]
    # Calibration: models that saw the class are told apart from retrained ones on every example (F = 0);
    # another set of retrained models is not, on every example.
    assert original == 0.0 and floor > original
    for entry in (summary["floor"], summary["original"], *summary["methods"].values()):
        epsilons = np.asarray(entry["epsilons"])
        assert epsilons.shape == (146,) and np.all((0 <= epsilons) & (epsilons <= 50))
        assert set(entry["forget_quality_by_models"]) == {"2", str(N)}
        assert entry["forget_quality_by_models"][str(N)] == entry["forget_quality"]
        assert 0 <= entry["retain_acc"] <= 1 and 0 <= entry["test_acc"] <= 1
    contrastive = summary["methods"]["contrastive"]
    assert contrastive["final_score"] == pytest.approx(
        contrastive["forget_quality"] * contrastive["retain_acc"] / summary["reference"]["retain_acc"]
        * contrastive["test_acc"] / summary["reference"]["test_acc"], rel=1e-12)
    confidences = np.load(workdir / "confidences.npz")
    for arm in ("contrastive", "gradient_ascent", "retrain", "retrain_floor", "original"):  # every arm scored
        assert confidences[arm].shape == (N, 146)
    assert (workdir / "epsilons.png").stat().st_size > 0


@pytest.mark.slow
def test_each_arm_holds_n_models_with_their_own_seeds(audited):
    workdir, _ = audited
    for arm, seeds in (("contrastive", [0, 1, 2]), ("retrain", [0, 1, 2]), ("retrain-floor", [3, 4, 5]),
                       ("original", [6, 7, 8])):
        assert json.loads((workdir / arm / "config.json").read_text())["seeds"] == seeds
        metrics = json.loads((workdir / arm / "metrics.json").read_text())
        assert len(metrics["models"]) == N


@pytest.mark.parametrize("arguments, message", [
    (["--method", "contrastive", "--models", "1"], "at least 2 models"),
    (["--method", "nonsense", "--models", "3"], "unknown method"),
    (["--method", "retrain", "--models", "3"], "reference itself"),
    (["--method", "unsir", "--models", "3", "--forget", "random:10"], "only class"),
    (["--method", "contrastive", "--models", "3", "--forget", "class:12"], "out of range"),
    (["--method", "contrastive", "--models", "3", "--hp", "nonsense=1"], "unknown hyperparameter"),
])
def test_bad_input_is_refused_before_anything_is_written(small_original, tmp_path, capsys, arguments, message):
    splits_before = sorted((small_original / "splits").glob("*")) if (small_original / "splits").exists() else []
    forget = [] if "--forget" in arguments else ["--forget", "class:5"]
    code = main(["audit", "--from", str(small_original), "--workdir", str(tmp_path / "audit"), *forget, *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "audit").exists()
    after = sorted((small_original / "splits").glob("*")) if (small_original / "splits").exists() else []
    assert after == splits_before


@pytest.mark.slow
def test_a_source_that_is_no_training_run_is_refused(audited, tmp_path, capsys):
    workdir, _ = audited
    code = main(["audit", "--from", str(workdir / "contrastive"), "--forget", "class:5", "--method", "contrastive",
                 "--models", "3", "--workdir", str(tmp_path / "audit")])
    assert code == 2 and "not a training run" in capsys.readouterr().err
    assert main(["audit", "--from", str(tmp_path / "nothing"), "--forget", "class:5", "--method", "contrastive",
                 "--models", "3", "--workdir", str(tmp_path / "audit")]) == 2
    assert not (tmp_path / "audit").exists()
