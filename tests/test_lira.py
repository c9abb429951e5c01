"""U-LiRA's pieces (jaxunlearn.evaluation.lira) on synthetic confidences, and `jaxunlearn ulira` on digits."""

import json

import numpy as np
import pytest

from jaxunlearn.cli import main
from jaxunlearn.evaluation.lira import balanced_shadow_halves, ulira


def test_shadow_halves_are_balanced_and_complementary():
    audited = np.array([3, 10, 11, 40, 41, 42, 77, 90])
    subsets, held = balanced_shadow_halves(101, audited, 6, seed=0)
    assert subsets.shape == (6, 50) and held.shape == (6, 8)  # (101 − 8) // 2 others + 4 audited
    np.testing.assert_array_equal(held.sum(axis=0), 3)  # every audited example in exactly half the shadows
    np.testing.assert_array_equal(held.sum(axis=1), 4)  # every shadow holds half of them
    for j in range(3):
        first, second = subsets[2 * j], subsets[2 * j + 1]
        assert not np.intersect1d(first, second).size and len(np.union1d(first, second)) == 100
        np.testing.assert_array_equal(held[2 * j], ~held[2 * j + 1])
    for subset, holds in zip(subsets, held):
        np.testing.assert_array_equal(np.intersect1d(subset, audited), np.sort(audited[holds]))
    with pytest.raises(ValueError, match="even"):
        balanced_shadow_halves(101, audited, 5, seed=0)


def synthetic(shift, shadows=64, examples=300, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 3, examples)  # every example its own scale of φ, as LiRA assumes
    held = np.zeros((shadows, examples), bool)
    for t in range(examples):
        held[rng.permutation(shadows)[: shadows // 2], t] = True
    never_seen = means + rng.normal(0, 1, (shadows, examples))
    unlearned = means + shift + rng.normal(0, 1, (shadows, examples))
    return unlearned, never_seen, held, np.arange(shadows) < 48


def test_indistinguishable_unlearning_scores_chance_and_a_shift_is_caught():
    unlearned, never_seen, held, fitting = synthetic(0.0)
    same = ulira(unlearned, never_seen, held, fitting)
    assert same["balanced_accuracy_low"] < 0.5 < same["balanced_accuracy_high"]
    # every example a target shadow held, shown twice: after unlearning and after retraining
    assert abs(same["balanced_accuracy"] - 0.5) < 0.03 and same["targets"] == 2 * held[~fitting].sum()
    shifted = ulira(*synthetic(2.0))
    # Two unit Gaussians 2 apart: the likelihood-ratio test is right with probability Φ(1) ≈ 0.84.
    assert shifted["balanced_accuracy"] == pytest.approx(0.84, abs=0.03)
    assert shifted["balanced_accuracy_low"] > 0.8


def test_ulira_refuses_what_it_cannot_fit():
    unlearned, never_seen, held, fitting = synthetic(0.0, shadows=8, examples=5)
    with pytest.raises(ValueError, match="target"):
        ulira(unlearned, never_seen, held, np.ones(8, bool))
    with pytest.raises(ValueError, match="at least 2 fitting shadows"):
        ulira(unlearned, never_seen, held, np.arange(8) < 2)


@pytest.mark.slow
def test_ulira_command_on_digits(tmp_path):
    from jaxunlearn.config import SupervisedHparams, TrainConfig
    from jaxunlearn.runs import train

    source = tmp_path / "original"
    train(TrainConfig(dataset="digits", width=0.125, recipe=SupervisedHparams(epochs=2, batch_size=64)), source)
    workdir = tmp_path / "ulira"
    assert main(["ulira", "--from", str(source), "--method", "contrastive", "--audited", "20", "--shadows", "8",
                 "--workdir", str(workdir), "--epochs", "1"]) == 0
    results = json.loads((workdir / "ulira.json").read_text())
    assert results["shadows"] == 8 and results["targets"] == 2 and set(results["methods"]) == {"contrastive"}
    for attack in [results["original"], results["floor"], *results["methods"].values()]:
        assert 0 <= attack["balanced_accuracy_low"] <= attack["balanced_accuracy"] <= attack["balanced_accuracy_high"] <= 1
        assert attack["targets"] == 2 * 20
    shadows = json.loads((workdir / "shadows" / "config.json").read_text())
    assert shadows["seeds"] == list(range(24, 32)) and "subsets_hash" in shadows
    for arm, seeds in (("contrastive", range(8)), ("retrain", range(8, 16)), ("retrain-floor", range(16, 24))):
        assert json.loads((workdir / arm / "config.json").read_text())["seeds"] == list(seeds)
        assert len(list((workdir / arm / "splits").glob("model*.npz"))) == 8
    assert main(["ulira", "--from", str(source), "--method", "unsir", "--audited", "20", "--shadows", "8",
                 "--workdir", str(tmp_path / "refused")]) == 2
    assert main(["ulira", "--from", str(source), "--method", "contrastive", "--audited", "21", "--shadows", "8",
                 "--workdir", str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
