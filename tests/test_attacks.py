"""Membership-inference attacks against hand-computed values, scikit-learn and a DeLong variance.

Tolerances:
- per-example scores: 1e-12 relative/absolute. The hand forms are a few float64 logs/exps of O(1) numbers,
  each exact to ~1e-16 relative.
- AUC vs `roc_auc_score`: 1e-12. Both are trapezoid sums of the same rational ROC points, only summed in
  a different order (rounding ~1e-16 per term).
- TPR at FPR vs `roc_curve`: exact. Both divide the same integer counts held exactly in float64.
- SVC: exact. Same scikit-learn call on the same float64 features and labels, in the same order.
- Bootstrap width vs DeLong: 15%, see the test.
"""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.svm import SVC

from jaxunlearn.evaluation.attacks import (
    attack_suite,
    per_example_scores,
    svc_mia_efficacy,
    threshold_free_attack,
)

METRICS = ["auc", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr"]


# per_example_scores

def test_scores_two_classes_closed_form():
    # softmax([0, ln 3]) = [1/4, 3/4].
    s = per_example_scores(np.array([[0.0, math.log(3)], [0.0, math.log(3)]]), np.array([1, 0]))
    np.testing.assert_allclose(s["confidence"], [0.75, 0.25], rtol=1e-12)
    np.testing.assert_allclose(s["loss"], [math.log(4 / 3), math.log(4)], rtol=1e-12)
    np.testing.assert_allclose(s["logit_confidence"], [math.log(3), -math.log(3)], rtol=1e-12)
    assert all(v.dtype == np.float64 and v.shape == (2,) for v in s.values())


def test_scores_three_classes_match_probability_form():
    logits = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], np.float32)
    labels = np.array([0, 2])
    z = logits.astype(np.float64)
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    p_y = p[[0, 1], labels]
    s = per_example_scores(logits, labels)
    np.testing.assert_allclose(s["confidence"], p_y, rtol=1e-12)
    np.testing.assert_allclose(s["loss"], -np.log(p_y), rtol=1e-12)
    np.testing.assert_allclose(s["logit_confidence"], np.log(p_y) - np.log(1 - p_y), rtol=1e-12)
    # By hand: φ_0 = 1 − log(e² + e³).
    assert s["logit_confidence"][0] == pytest.approx(1 - math.log(math.e**2 + math.e**3), rel=1e-12)


def test_logit_confidence_finite_for_extreme_logits():
    s2 = per_example_scores(np.array([[1000.0, -1000.0]] * 2), np.array([0, 1]))
    s3 = per_example_scores(np.array([[1000.0, -1000.0, -1000.0]]), np.array([0]))
    np.testing.assert_array_equal(s2["logit_confidence"], [2000.0, -2000.0])
    np.testing.assert_array_equal(s2["loss"], [0.0, 2000.0])
    np.testing.assert_array_equal(s2["confidence"], [1.0, 0.0])
    assert s3["logit_confidence"][0] == pytest.approx(2000 - math.log(2), rel=1e-12)
    # The probability form is useless here: p_y rounds to exactly 1 and the rest to exactly 0.
    with np.errstate(all="ignore"):
        z = np.array([1000.0, -1000.0])
        p = np.exp(z) / np.exp(z).sum()
    assert not np.isfinite(np.log(p[0]) - np.log(1 - p[0]))


# svc_mia_efficacy

def direct_svc(members, nonmembers, target):
    """SalUn's SVC_fit_predict, written out: shadow train → 1, shadow test → 0; 1 − mean(predict(target))."""
    x = np.concatenate([members, nonmembers]).reshape(-1, 1)
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    clf = SVC(C=3, gamma="auto", kernel="rbf")
    clf.fit(x, y)
    return 1 - clf.predict(np.asarray(target).reshape(-1, 1)).mean()


def test_svc_separated_exact_fraction():
    members = np.linspace(0.9, 1.0, 20)
    nonmembers = np.linspace(0.1, 0.5, 20)
    target = np.array([0.99, 0.95, 0.2, 0.92, 0.3])  # two low ones → predicted non-member
    assert svc_mia_efficacy(members, nonmembers, target) == 0.4
    assert direct_svc(members, nonmembers, target) == 0.4
    assert svc_mia_efficacy(members, nonmembers, np.array([0.97])) == 0.0
    assert svc_mia_efficacy(members, nonmembers, np.array([0.15])) == 1.0


def test_svc_matches_direct_fit_on_overlapping_confidences():
    rng = np.random.default_rng(3)
    # float32 like SalUn's torch softmax; confidences overlap so the boundary is nontrivial.
    members = rng.beta(8, 1, 300).astype(np.float32)
    nonmembers = rng.beta(4, 1.5, 300).astype(np.float32)
    target = rng.beta(6, 1.2, 100).astype(np.float32)
    got = svc_mia_efficacy(members, nonmembers, target)
    assert got == direct_svc(members, nonmembers, target)
    assert 0.0 < got < 1.0


def test_svc_empty_target_is_nan():
    assert math.isnan(svc_mia_efficacy(np.array([0.9, 0.95]), np.array([0.1, 0.2]), np.array([])))


# threshold_free_attack

def sklearn_reference(members, nonmembers, member_higher):
    y = np.concatenate([np.ones(len(members)), np.zeros(len(nonmembers))])
    s = np.concatenate([members, nonmembers]) * (1 if member_higher else -1)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return {"auc": roc_auc_score(y, s),
            "tpr_at_1pct_fpr": tpr[fpr <= 0.01].max(),
            "tpr_at_01pct_fpr": tpr[fpr <= 0.001].max()}


@pytest.mark.parametrize("member_higher", [True, False])
@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: heavy ties within and across the two sets
def test_point_estimates_match_sklearn(member_higher, decimals):
    rng = np.random.default_rng(0)
    shift = 0.6 if member_higher else -0.6
    members, nonmembers = rng.normal(shift, 1, 1500), rng.normal(0, 1, 3000)
    if decimals is not None:
        members, nonmembers = members.round(decimals), nonmembers.round(decimals)
    got = threshold_free_attack(members, nonmembers, member_higher=member_higher, n_bootstrap=10)
    want = sklearn_reference(members, nonmembers, member_higher)
    assert got["auc"] == pytest.approx(want["auc"], abs=1e-12)
    assert got["auc"] > 0.6
    for k in METRICS[1:]:
        assert got[k] == want[k]


def test_hand_made_rocs():
    # Separated the wrong way round for the stated direction: AUC 0; the right way: AUC 1, every member
    # caught before the first false positive.
    sep = threshold_free_attack(np.array([500.0, 600]), np.arange(200.0), member_higher=False, n_bootstrap=5)
    assert (sep["auc"], sep["tpr_at_1pct_fpr"], sep["tpr_at_01pct_fpr"]) == (0.0, 0.0, 0.0)
    sep = threshold_free_attack(np.array([500.0, 600]), np.arange(200.0), member_higher=True, n_bootstrap=5)
    assert (sep["auc"], sep["tpr_at_1pct_fpr"], sep["tpr_at_01pct_fpr"]) == (1.0, 1.0, 1.0)
    # Same 200 distinct values in both sets: every threshold adds one member and one non-member, so the ROC
    # is the diagonal through (k/200, k/200). FPR ≤ 1% allows k = 2; FPR ≤ 0.1% only k = 0. (sklearn's
    # default drop_intermediate=True drops the collinear points and would give 0.005 at 1%.)
    diag = threshold_free_attack(np.arange(200.0), np.arange(200.0), member_higher=True, n_bootstrap=5)
    assert (diag["auc"], diag["tpr_at_1pct_fpr"], diag["tpr_at_01pct_fpr"]) == (0.5, 0.01, 0.0)


def test_intervals_contain_point_and_shrink_with_more_data():
    rng = np.random.default_rng(1)
    small = threshold_free_attack(rng.normal(1, 1, 500), rng.normal(0, 1, 1000), member_higher=True)
    large = threshold_free_attack(rng.normal(1, 1, 5000), rng.normal(0, 1, 10000), member_higher=True)
    for r in (small, large):
        for k in METRICS:
            assert r[f"{k}_low"] <= r[k] <= r[f"{k}_high"], k
    # 10× the data: widths should shrink ≈ √10 ≈ 3.2 asymptotically. Ask for 2 on the AUC, and only 1.5 on
    # the TPR at 1% FPR: in the small set that threshold rests on the top 10 of 1,000 non-members, far from
    # the asymptotic regime (observed ratio 1.85 here).
    for k, factor in [("auc", 2.0), ("tpr_at_1pct_fpr", 1.5)]:
        width = {name: r[f"{k}_high"] - r[f"{k}_low"] for name, r in [("small", small), ("large", large)]}
        assert width["large"] < width["small"] / factor, k


def test_auc_interval_width_matches_delong():
    """The 95% bootstrap width ≈ 2·1.96·SE with the DeLong (nonparametric) SE of the AUC.

    Both estimate the same sampling variance. With 1000 resamples the 2.5/97.5% quantiles each carry ~5%
    relative noise on the width, and the percentile interval is slightly asymmetric here; 15% covers both
    (ratios over seeds 0–5: 0.95–1.01).
    """
    rng = np.random.default_rng(2)
    m, n = rng.normal(0.8, 1, 800), rng.normal(0, 1, 1200)
    got = threshold_free_attack(m, n, member_higher=True, n_bootstrap=1000, seed=5)
    wins = (m[:, None] > n[None, :]) + 0.5 * (m[:, None] == n[None, :])  # [n_m, n_n] Mann–Whitney kernel
    v10, v01 = wins.mean(axis=1), wins.mean(axis=0)
    se = math.sqrt(v10.var(ddof=1) / len(m) + v01.var(ddof=1) / len(n))
    assert got["auc"] == pytest.approx(v10.mean(), abs=1e-12)
    assert (got["auc_high"] - got["auc_low"]) == pytest.approx(2 * 1.959964 * se, rel=0.15)


def test_bootstrap_seeded():
    rng = np.random.default_rng(4)
    m, n = rng.normal(0.5, 1, 300), rng.normal(0, 1, 600)
    a = threshold_free_attack(m, n, member_higher=True, seed=7)
    assert a == threshold_free_attack(m, n, member_higher=True, seed=7)
    b = threshold_free_attack(m, n, member_higher=True, seed=8)
    assert a["auc"] == b["auc"] and a["auc_low"] != b["auc_low"]


def test_empty_sets_and_no_bootstrap():
    keys = {f"{k}{s}" for k in METRICS for s in ("", "_low", "_high")}
    empty = threshold_free_attack(np.array([]), np.array([0.1, 0.2]), member_higher=True)
    assert set(empty) == keys and all(math.isnan(v) for v in empty.values())
    r = threshold_free_attack(np.array([1.0, 2]), np.array([0.0, 0.5]), member_higher=True, n_bootstrap=0)
    assert set(r) == keys and r["auc"] == 1.0 and math.isnan(r["auc_low"]) and math.isnan(r["auc_high"])


# attack_suite

def test_attack_suite_keys_and_values():
    rng = np.random.default_rng(6)
    member_logits = rng.normal(0, 2, (400, 10))
    member_labels = rng.integers(0, 10, 400)
    member_logits[np.arange(400), member_labels] += 2.0  # members: more confident on their label
    nonmember_logits = rng.normal(0, 2, (700, 10))
    nonmember_labels = rng.integers(0, 10, 700)
    got = attack_suite(member_logits, member_labels, nonmember_logits, nonmember_labels, n_bootstrap=20)

    scores = ["loss", "confidence", "logit_confidence"]
    assert set(got) == {f"mia_{s}_{k}{b}" for s in scores for k in METRICS for b in ("", "_low", "_high")}

    def p_y(logits, labels):
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        return p[np.arange(len(labels)), labels]

    pm, pn = p_y(member_logits, member_labels), p_y(nonmember_logits, nonmember_labels)
    y = np.concatenate([np.ones(400), np.zeros(700)])
    # confidence, loss and φ are monotone in p_y, so all three attacks rank identically.
    auc = roc_auc_score(y, np.concatenate([pm, pn]))
    for s in scores:
        assert got[f"mia_{s}_auc"] == pytest.approx(auc, abs=1e-12), s
    assert got["mia_loss_auc"] > 0.6
    want = sklearn_reference(-np.log(pm), -np.log(pn), member_higher=False)
    assert got["mia_loss_tpr_at_1pct_fpr"] == want["tpr_at_1pct_fpr"]
    # Same resamples for every score → identical intervals for rank-equivalent scores.
    assert got["mia_loss_auc_low"] == pytest.approx(got["mia_logit_confidence_auc_low"], abs=1e-12)
