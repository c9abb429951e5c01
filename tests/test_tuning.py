"""Equal tuning budgets: the grid, the score (no test accuracy in it), the choice, and a tuned experiment
end to end on digits (the choice made on seed 0 from validation images, then run on every seed)."""

import json
import math
import textwrap

import numpy as np
import pytest

from jaxunlearn.cli import main
from jaxunlearn.config import TrainConfig
from jaxunlearn.errors import UserError
from jaxunlearn.experiment import ExperimentProtocol, load_protocol, run_experiment
from jaxunlearn.tuning import SCORED_PARTS, TUNING_BUDGET, Tuning, choose, tuning_score


def test_a_grid_is_every_learning_rate_with_every_value_of_one_knob():
    grid = Tuning(learning_rates=("1e-4", "1e-3"), knob="lambda_ul", values=("0.5", "1", "3"))
    assert grid.configurations() == [{"learning_rate": lr, "lambda_ul": v} for lr in ("1e-4", "1e-3")
                                     for v in ("0.5", "1", "3")]
    assert Tuning(learning_rates=("0.1",)).configurations() == [{"learning_rate": "0.1"}]
    grid.check("contrastive")  # 6: the budget
    assert TUNING_BUDGET == 6


@pytest.mark.parametrize("grid, message", [
    (Tuning(learning_rates=()), "no learning rates"),
    (Tuning(learning_rates=("1", "2", "3", "4"), knob="beta", values=("0.1", "0.2")), "8 configurations, more"),
    (Tuning(learning_rates=("1",), knob="learning_rate", values=("2",)), "another hyperparameter"),
    (Tuning(learning_rates=("1",), knob="beta"), "at least one value"),
    (Tuning(learning_rates=("1",), values=("2",)), "without a knob"),
    (Tuning(learning_rates=("1", "1")), "repeated learning rates"),
])
def test_bad_grids_are_refused(grid, message):
    with pytest.raises(UserError, match=message):
        grid.check("neggrad_plus")


def test_the_score_is_the_mean_gap_over_forget_retain_and_validation_and_ignores_test():
    reference = {"forget_train_acc": 0.0, "retain_train_acc": 0.9, "validation_acc": 0.8, "test_acc": 0.8}
    run = {"forget_train_acc": 0.1, "retain_train_acc": 0.85, "validation_acc": 0.83, "test_acc": 0.1}
    assert tuning_score(run, reference) == pytest.approx((0.1 + 0.05 + 0.03) / 3, abs=1e-15)
    assert tuning_score({**run, "test_acc": 0.8}, reference) == tuning_score(run, reference)
    assert tuning_score({**run, "validation_acc": float("nan")}, reference) == math.inf  # a diverged run
    assert tuning_score({k: v for k, v in run.items() if k != "validation_acc"}, reference) == math.inf
    assert choose([0.3, 0.1, 0.1, math.inf]) == 1  # the first among equals
    assert SCORED_PARTS == ("forget_train_acc", "retain_train_acc", "validation_acc")


PROTOCOL = '''
    """Digits with 200 validation images held out; gradient ascent at its test-suite defaults and tuned."""
    from jaxunlearn.config import SupervisedHparams, TrainConfig
    from jaxunlearn.experiment import ExperimentProtocol
    from jaxunlearn.tuning import Tuning

    PROTOCOL = ExperimentProtocol(
        name="digits_tuned",
        description="digits, gradient ascent tuned",
        train=TrainConfig(dataset="digits", width=0.125, validation_size=200,
                          recipe=SupervisedHparams(epochs=6, batch_size=64)),
        forget="class:5",
        methods=("gradient_ascent",),
        seeds=(0, 1),
        hparams={"gradient_ascent": {"batch_size": "32", "learning_rate": "0.01"}},
        tuning={"gradient_ascent": Tuning(learning_rates=("0.001", "0.01"), knob="epochs", values=("1", "5"))},
        reference_hparams={"epochs": "3"},
        relearn_steps=5,
    )
'''


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tuned")
    path = root / "digits_tuned.py"
    path.write_text(textwrap.dedent(PROTOCOL))
    assert main(["experiment", str(path), "--runs-dir", str(root / "runs"), "--out", str(root / "out")]) == 0
    return root, json.loads((root / "out" / "results.json").read_text())


@pytest.mark.slow
def test_a_tuned_experiment_chooses_on_validation_and_runs_the_choice_on_every_seed(tuned):
    root, results = tuned
    record = results["tuning"]["gradient_ascent"]
    seed0, seed1 = results["runs"]["0"], results["runs"]["1"]
    assert record["seed"] == 0 and len(record["configurations"]) == 4
    reference = seed0["retrain"]
    assert 0.5 < reference["validation_acc"] <= 1.0 and reference["forget_validation_acc"] == 0.0
    scores = [np.mean([abs(seed0[f"gradient_ascent-tune{i}"][part] - reference[part]) for part in SCORED_PARTS])
              for i in range(4)]
    for i, tried in enumerate(record["configurations"]):
        assert tried["score"] == pytest.approx(scores[i], abs=1e-12)
        assert tried["hparams"] == [{"learning_rate": lr, "epochs": e} for lr in ("0.001", "0.01")
                                    for e in ("1", "5")][i]
    chosen = int(np.argmin(scores))
    assert record["chosen"] == chosen and record["hparams"] == record["configurations"][chosen]["hparams"]
    assert len(set(np.round(scores, 6))) > 1  # the grid's settings differ: the choice means something
    assert seed0["gradient_ascent-tuned"] == seed0[f"gradient_ascent-tune{chosen}"]  # that run, not another
    assert seed0["gradient_ascent-tune3"] == seed0["gradient_ascent"]  # lr 0.01, 5 epochs: the defaults, reused
    ran = json.loads((root / "runs" / "digits_tuned" / "seed1" / "gradient_ascent-tuned" / "config.json").read_text())
    assert ran["hparams"]["learning_rate"] == float(record["hparams"]["learning_rate"])
    assert ran["hparams"]["epochs"] == int(record["hparams"]["epochs"]) and ran["hparams"]["batch_size"] == 32
    assert "gradient_ascent-tune0" not in seed1  # tuning runs on the first seed only
    for runs in (seed0, seed1):
        assert {"validation_acc", "test_acc"} <= set(runs["original"])
    report = (root / "out" / "report.md").read_text()
    assert "| gradient_ascent-tuned |" in report and "## Tuning" in report
    assert report.count("| chosen |") == 1 and "| gradient_ascent-tune0 |" not in report


@pytest.mark.slow
def test_a_later_seed_alone_waits_for_the_choice(tuned, tmp_path, capsys):
    root, _ = tuned
    protocol = load_protocol(root / "digits_tuned.py")
    with pytest.raises(UserError, match="on seed 0; run that seed first"):
        run_experiment(protocol, tmp_path / "runs", tmp_path / "out", seeds=(1,))
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_tuning_needs_validation_images_and_known_methods_and_knobs():

    grid = Tuning(learning_rates=("0.01",), knob="beta", values=("0.5",))
    protocol = dict(name="p", description="", train=TrainConfig(dataset="digits", validation_size=100),
                    forget="class:5", methods=("neggrad_plus",), tuning={"neggrad_plus": grid})
    ExperimentProtocol(**protocol).check()
    with pytest.raises(UserError, match="holds out no validation images"):
        ExperimentProtocol(**{**protocol, "train": TrainConfig(dataset="digits")}).check()
    with pytest.raises(UserError, match="tuning for methods it does not run: salun"):
        ExperimentProtocol(**{**protocol, "tuning": {"salun": grid}}).check()
    with pytest.raises(UserError, match="unknown hyperparameter 'lambda_ul'"):
        ExperimentProtocol(**{**protocol, "tuning": {"neggrad_plus": Tuning(("0.1",), "lambda_ul", ("1",))}}).check()
    with pytest.raises(UserError, match="must be a Tuning"):
        ExperimentProtocol(**{**protocol, "tuning": {"neggrad_plus": {"learning_rate": "0.1"}}}).check()
