"""Divergences, agreement and weight distances against closed forms on hand-made distributions and scipy.

Tolerance 1e-12 (relative or absolute at O(1) values): every reference is a handful of float64 logs of
exactly representable or O(1) numbers, accurate to ~1e-16 each. scipy (a scikit-learn dependency) is an
independent implementation of the entropies.
"""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import entropy

from jaxunlearn.evaluation.divergence import (
    Q_FLOOR,
    js_divergence,
    kl_divergence,
    prediction_agreement,
    tree_l2_distance,
    tree_l2_norm,
)

LN2 = math.log(2)


def test_kl_closed_forms():
    p = np.array([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0], [0.2, 0.8]])
    q = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.2, 0.8]])
    want = [
        0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1),  # = ln(5/3)
        0.9 * math.log(1.8) + 0.1 * math.log(0.2),  # the reverse direction differs
        LN2,  # 0·log 0 = 0
        0.0,  # identical rows
    ]
    got = kl_divergence(p, q)
    assert got.shape == (4,) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    assert got[0] == pytest.approx(math.log(5 / 3), rel=1e-12)


def test_kl_floor_keeps_it_finite():
    got = kl_divergence(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]]))
    assert got[0] == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / Q_FLOOR), rel=1e-12)


def test_kl_and_js_match_scipy_on_random_rows():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(10), 50), rng.dirichlet(np.full(10, 0.5), 50)
    assert q.min() > 1e3 * Q_FLOOR  # the floor does not act here
    np.testing.assert_allclose(kl_divergence(p, q), entropy(p, q, axis=1), rtol=1e-12)
    m = (p + q) / 2
    js = js_divergence(p, q)
    np.testing.assert_allclose(js, entropy(m, axis=1) - (entropy(p, axis=1) + entropy(q, axis=1)) / 2,
                               rtol=1e-12)  # H(m) − mean H: entropies ~2 vs JS ≳ 0.1, ~20× cancellation
    np.testing.assert_array_equal(js, js_divergence(q, p))  # symmetric
    assert np.all((js > 0) & (js < LN2))


def test_js_closed_forms():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    # Disjoint one-hots: ln 2, the maximum. [.5, .5] vs [1, 0]: m = [.75, .25], JS = ¾ ln(4/3). Identical: 0.
    np.testing.assert_allclose(js_divergence(p, q), [LN2, 0.75 * math.log(4 / 3), 0.0], rtol=1e-12, atol=1e-15)


def test_float32_softmax_inputs():
    # A float32 softmax rounds tiny probabilities to exactly 0; KL stays finite via the floor, JS is exact.
    p = np.array([[1.0, 0.0]], np.float32)
    q = np.array([[0.0, 1.0]], np.float32)
    assert kl_divergence(p, q)[0] == pytest.approx(-math.log(Q_FLOOR), rel=1e-12)
    assert js_divergence(p, q)[0] == pytest.approx(LN2, rel=1e-12)


def test_prediction_agreement():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.5, 0.0]])
    q = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.9, 0.1, 0.0]])
    assert prediction_agreement(p, q) == 0.75  # row 1 differs; row 3's tie resolves to class 0
    assert prediction_agreement(p, p) == 1.0
    assert math.isnan(prediction_agreement(np.zeros((0, 3)), np.zeros((0, 3))))


def test_tree_l2():
    a = {"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.array([0.0, 0.0])}
    b = {"w": np.array([[1.0, 2.0], [3.0, 0.0]], np.float32), "b": np.array([3.0, 0.0])}
    assert tree_l2_distance(a, b) == 5.0  # √(4² + 3²)
    assert tree_l2_distance(a, a) == 0.0
    assert tree_l2_norm(a) == pytest.approx(math.sqrt(30), rel=1e-12)
    # jax leaves and nested containers.
    nested = {"layer": [jnp.array([3.0]), (jnp.array([[4.0]]),)]}
    assert tree_l2_norm(nested) == 5.0


def test_tree_l2_float64_accumulation():
    # Squares of these float32 leaves under- and overflow in float32 (1e-60, 1e60); not in float64.
    tiny, huge = float(np.float32(1e-30)), float(np.float32(1e30))
    assert tree_l2_norm({"x": np.full(4, tiny, np.float32)}) == pytest.approx(2 * tiny, rel=1e-12)
    a, b = {"x": np.full(4, huge, np.float32)}, {"x": np.zeros(4, np.float32)}
    assert tree_l2_distance(a, b) == pytest.approx(2 * huge, rel=1e-12)


def test_tree_l2_mismatch_raises():
    with pytest.raises(ValueError, match="structures"):
        tree_l2_distance({"a": np.zeros(2)}, {"b": np.zeros(2)})
    with pytest.raises(ValueError, match="shapes"):
        tree_l2_distance({"a": np.zeros(2)}, {"a": np.zeros(3)})
