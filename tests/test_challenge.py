"""The NeurIPS 2023 challenge score (jaxunlearn.evaluation.challenge) against the published scorer.

tests/data/challenge_golden.json holds fixed φ arrays [N models, M examples] and the per-example ε and forget
quality F that google-deepmind/unlearning_evaluation metric.py (commit ffae0ff) computed for them, run on CPU
with its `.cuda()` calls removed and its `assert thr_eps` read as the non-empty check it means. Equality is
exact: both compute the rates and ε in the same float32 arithmetic. A second, independent implementation
below (an explicit [models × rules] indicator matrix, no sorted searches) checks the same arrays and a few
more.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from jaxunlearn.evaluation import challenge_epsilons, forget_quality
from jaxunlearn.evaluation.attacks import per_example_scores
from jaxunlearn.evaluation.challenge import EPSILON_CAP, epsilon_points, final_score, logit_scaled_confidence

GOLDEN = json.loads((Path(__file__).parent / "data" / "challenge_golden.json").read_text())


def reference_epsilons(unlearned, retrained, delta=1e-5):
    """ε per example from the description in docs/evaluation.md §4, with explicit [rules × models] indicators."""
    result = []
    positive_is_retrain = np.median(retrained, 0) > np.median(unlearned, 0)
    for i in range(unlearned.shape[1]):
        pos, neg = (retrained[:, i], unlearned[:, i]) if positive_is_retrain[i] else (unlearned[:, i], retrained[:, i])
        spreads = sorted([np.ptp(pos), np.ptp(neg)])
        if spreads[1] > 0 and spreads[0] / spreads[1] < 0.01:
            result.append(EPSILON_CAP)
            continue
        # Interval rules around the peakier side (the negatives when the spreads tie): inside is positive.
        peaky, other = (neg, pos) if np.ptp(pos) >= np.ptp(neg) else (pos, neg)
        width = spreads[0]
        low, high = peaky.min() + width - 2.0, peaky.max() + 2.0
        rights = np.linspace(low, high, int(np.ceil((high - low) * 100)))
        lefts = np.concatenate([np.linspace(r - width - 2.0, r - width + 2.0, 400) for r in rights])
        rights = np.repeat(rights, 400)[:, None]
        lefts = lefts[:, None]
        inside = [((lefts <= side) & (side <= rights)) for side in (peaky, other)]
        # Single thresholds on torch's float32 grid (its CUDA formula): at or above is positive.
        both = np.concatenate([pos, neg])
        steps = int(np.ceil((both.max() - both.min()) * 100))
        start, end = np.float32(both.min()), np.float32(both.max())
        step = (end - start) / np.float32(max(steps - 1, 1))
        grid = [start + step * np.float32(k) if k < steps // 2 else end - step * np.float32(steps - k - 1)
                for k in range(steps)]
        above = [side[None, :] >= np.array(grid, np.float64)[:, None] for side in (pos, neg)]
        predicted = [np.concatenate([inside[j], above[j]]) for j in range(2)]  # [rules, models]
        n = np.float32(len(pos))
        tpr, fpr = (np.float32(1) * p.sum(1).astype(np.float32) / n for p in predicted)
        fnr, tnr = ((~p).sum(1).astype(np.float32) / n for p in predicted)
        epsilons = []
        for t_p, f_p, f_n, t_n in zip(tpr, fpr, fnr, tnr):
            if f_p == 0 and f_n == 0:
                epsilons.append(math.inf)
            elif f_p * f_n != 0:
                with np.errstate(invalid="ignore"):
                    bounds = [np.log(np.float32(1 - delta) - f_p) - np.log(f_n),
                              np.log(np.float32(1 - delta) - f_n) - np.log(f_p)]
                finite = [b for b in bounds if not np.isnan(b)]
                if finite:
                    epsilons.append(max(float(max(finite)), 0.0))
        result.append(min(max(epsilons), EPSILON_CAP) if epsilons else 0.0)
    return np.array(result)


@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_epsilons_and_forget_quality_equal_the_published_scorer(case):
    data = GOLDEN[case]
    unlearned, retrained = np.array(data["unlearned"]), np.array(data["retrained"])
    np.testing.assert_array_equal(challenge_epsilons(unlearned, retrained), data["epsilons"])
    assert forget_quality(unlearned, retrained) == data["forget_quality"]


@pytest.mark.parametrize("case", ["shifted", "few_models", "overlapping_ties", "separated"])
def test_epsilons_equal_an_independent_rule_by_rule_implementation(case):
    data = GOLDEN[case]
    unlearned, retrained = np.array(data["unlearned"]), np.array(data["retrained"])
    np.testing.assert_array_equal(challenge_epsilons(unlearned, retrained), reference_epsilons(unlearned, retrained))


def test_random_cases_equal_the_independent_implementation():
    rng = np.random.default_rng(3)
    for n_models in (2, 3, 5, 9):
        unlearned = np.round(rng.normal(0, 1, (n_models, 2)), 2)
        retrained = np.round(rng.normal(0.5, 0.7, (n_models, 2)), 2)
        np.testing.assert_array_equal(challenge_epsilons(unlearned, retrained),
                                      reference_epsilons(unlearned, retrained))


def test_degenerate_cases():
    # Zero spread on one side only: the cap, whatever the other side does.
    spread = np.array([[0.1], [0.5], [0.9], [1.3]])
    assert challenge_epsilons(np.full((4, 1), 0.7), spread)[0] == EPSILON_CAP
    # Zero spread on both sides at different values: perfect separation (FPR = FNR = 0) is ∞, capped.
    assert challenge_epsilons(np.full((4, 1), 0.7), np.full((4, 1), 0.2))[0] == EPSILON_CAP
    # The same point mass on both sides: every rule has FPR·FNR = 0 (the published scorer fails); ε = 0.
    assert challenge_epsilons(np.full((4, 1), 0.7), np.full((4, 1), 0.7))[0] == 0.0
    # Perfectly separated samples of spread: ∞, capped at 50, and F = 0.
    separated = np.array(GOLDEN["separated"]["unlearned"]), np.array(GOLDEN["separated"]["retrained"])
    assert np.all(challenge_epsilons(*separated) == EPSILON_CAP) and forget_quality(*separated) == 0.0
    # Identical samples: every rule's rates are equal on both sides, so ε = 0 and F = 1.
    same = np.linspace(-1, 1, 12).reshape(6, 2)
    np.testing.assert_array_equal(challenge_epsilons(same, same.copy()), [0.0, 0.0])
    assert forget_quality(same, same.copy()) == 1.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2 models"):
        challenge_epsilons(np.zeros((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="one shape"):
        challenge_epsilons(np.zeros((4, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        forget_quality(np.array([[0.0], [np.inf]]), np.zeros((2, 1)))


def test_epsilon_points_bins():
    # N = 512: max ε ⌈ln 511⌉ = 7, bins of ½ scoring 1, ½, …, 2⁻¹³; 7 and above score 0.
    eps = np.array([0.0, 0.49, 0.5, 1.0, 6.99, 7.0, 50.0])
    np.testing.assert_array_equal(epsilon_points(eps, 512), [1.0, 1.0, 0.5, 0.25, 2.0**-13, 0.0, 0.0])
    # N = 3: ⌈ln 2⌉ = 1, two bins; N = 2: ln 1 = 0, no bin, everything scores 0.
    np.testing.assert_array_equal(epsilon_points(np.array([0.2, 0.7, 1.0]), 3), [1.0, 0.5, 0.0])
    np.testing.assert_array_equal(epsilon_points(np.array([0.0]), 2), [0.0])


def test_final_score_is_quality_times_utility_ratios():
    assert final_score(0.5, np.array([0.9, 0.7]), np.array([1.0, 1.0]), np.array([0.4]), np.array([0.8])) \
        == pytest.approx(0.5 * 0.8 * 0.5, rel=1e-15)


def test_logit_scaled_confidence_matches_the_stable_score_and_floors_underflow():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(0, 3, (50, 10)), rng.integers(0, 10, 50)
    np.testing.assert_allclose(logit_scaled_confidence(logits, labels),
                               per_example_scores(logits, labels)["logit_confidence"], rtol=1e-10, atol=1e-10)
    # p_y = exp(−200) underflows in float32: the 1e-45 floor bounds φ at log(1e-45) ≈ −103.6.
    extreme = np.array([[0.0, 200.0]], np.float32)
    assert logit_scaled_confidence(extreme, np.array([0]))[0] == pytest.approx(np.log(1e-45), rel=1e-12)
