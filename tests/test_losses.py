"""contrastive_unlearning_loss against the spec's float64 vectors and an independent numpy derivation.

Tolerances: the spec's vectors are checked at the spec's own tolerances (1e-12 relative on the loss, 1e-11
absolute on gradients) in float64. The numpy closed form (contrastive-unlearning.md §3.3) differs from the
official arithmetic only by the 1e-20 added inside the exponentials, so float64 agrees to 1e-10. float32
results are compared with the float64 reference at 2e-5 absolute: embeddings have norm ≤ 1 and τ = 0.7, so
logits lie in [0, 1.43] and the loss is a sum of O(B) terms of that size each rounded at ~6e-8.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxunlearn.losses import contrastive_unlearning_loss, cross_entropy

TAU = 0.7
U = [[1.0, 0.0], [0.6, 0.8]]
R = [[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]]


def loss_and_grads(u, r, yu, yr, mode, dtype=jnp.float64):
    fn = lambda u, r: contrastive_unlearning_loss(
        u, r, jnp.asarray(yu), jnp.asarray(yr), temperature=TAU, mode=mode
    )
    loss, (gu, gr) = jax.value_and_grad(fn, argnums=(0, 1))(
        jnp.asarray(u, dtype), jnp.asarray(r, dtype)
    )
    return float(loss), np.asarray(gu, np.float64), np.asarray(gr, np.float64)


def test_spec_vector_sample_mode():
    with jax.enable_x64(True):
        loss, gu, gr = loss_and_grads(U, R, [0, 1], [0, 1, 1], "sample")
    assert loss == pytest.approx(1.563781153024489, rel=1e-12)
    np.testing.assert_allclose(
        gu, [[0.785714285714, -0.571428571429], [0.240392054037, 1.665518258696]], atol=1e-11
    )
    np.testing.assert_allclose(
        gr,
        [[0.642857142857, -0.571428571429], [0.212563102329, 0.759607945963],
         [0.358865469099, 0.954677768323]],
        atol=1e-11,
    )


def test_spec_vector_class_mode():
    with jax.enable_x64(True):
        loss, gu, gr = loss_and_grads(U, R, [5, 5], [0, 1, 2], "class")
    assert loss == pytest.approx(0.409523809524, rel=1e-12)
    np.testing.assert_allclose(gu, [[-0.428571428571, -0.380952380952]] * 2, atol=1e-11)
    np.testing.assert_allclose(gr, [[-0.380952380952, -0.190476190476]] * 3, atol=1e-11)


def test_spec_cross_entropy():
    with jax.enable_x64(True):
        ce = cross_entropy(jnp.array([[2, 0.5], [0.1, 1], [0.3, 0.2]]), jnp.array([0, 1, 1]))
    assert float(ce) == pytest.approx(0.4289879375961371, rel=1e-12)


def closed_form(u, r, yu, yr, tau, mode):
    """Loss and gradients from the closed forms of contrastive-unlearning.md §3.3, in numpy."""
    bu, br = len(u), len(r)
    s = u @ r.T / tau
    g_s = np.zeros_like(s)
    total = 0.0
    for i in range(bu):
        same, diff = yr == yu[i], yr != yu[i]
        n_same, n_diff = same.sum(), diff.sum()
        if n_diff == 0 or (mode == "sample" and n_same == 0):
            continue  # degenerate anchor: contributes nothing
        m = s[i].max()
        if n_same:
            lse = np.log(np.exp(s[i, same] - m).sum()) + m
            total += -s[i, diff].sum() / n_diff + br / n_diff * lse - n_same / n_diff * m
            softmax = np.exp(s[i, same] - lse)
            g_s[i, same] = br / (bu * n_diff) * softmax
        else:  # class mode, no same-class retain sample: log P_i = log 1 = 0
            total += -(s[i] - m).sum() / n_diff
        g_s[i, diff] = -1.0 / (bu * n_diff)
    g_s /= tau
    return total / bu, g_s @ r, g_s.T @ u


def random_embeddings(rng, n, d):
    """ReLU(L2-normalised) vectors, like the model's `feat`."""
    g = rng.normal(size=(n, d))
    return np.maximum(g / np.linalg.norm(g, axis=1, keepdims=True), 0.0)


@pytest.mark.parametrize("mode", ["class", "sample"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_numpy_closed_form_float64_and_float32(mode, seed):
    rng = np.random.default_rng(seed)
    bu, br, d, classes = 12, 20, 16, 4
    u, r = random_embeddings(rng, bu, d), random_embeddings(rng, br, d)
    yr = rng.integers(0, classes, br)
    yu = np.full(bu, 9) if mode == "class" else rng.integers(0, classes, bu)
    ref_loss, ref_gu, ref_gr = closed_form(u, r, yu, yr, TAU, mode)
    assert abs(ref_loss) > 0.05  # a real value, not a degenerate zero

    with jax.enable_x64(True):
        loss, gu, gr = loss_and_grads(u, r, yu, yr, mode)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    np.testing.assert_allclose(gu, ref_gu, atol=1e-10)
    np.testing.assert_allclose(gr, ref_gr, atol=1e-10)

    loss32, gu32, gr32 = loss_and_grads(u, r, yu, yr, mode, dtype=jnp.float32)
    assert loss32 == pytest.approx(ref_loss, abs=2e-5)
    np.testing.assert_allclose(gu32, ref_gu, atol=2e-5)
    np.testing.assert_allclose(gr32, ref_gr, atol=2e-5)


def test_sample_mode_anchor_without_same_class_is_left_out_not_nan():
    """The official arithmetic gives −inf here; we drop that anchor and keep 1/B_u for the others."""
    u = jnp.array([[1.0, 0.0], [0.6, 0.8]])
    r = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    yu, yr = jnp.array([0, 7]), jnp.array([0, 1, 1])  # anchor 1 has no class-7 retain sample
    loss, grads = jax.value_and_grad(
        lambda u, r: contrastive_unlearning_loss(u, r, yu, yr, temperature=TAU, mode="sample"),
        argnums=(0, 1),
    )(u, r)
    ref_loss, ref_gu, ref_gr = closed_form(
        np.asarray(u, np.float64), np.asarray(r, np.float64), np.asarray(yu), np.asarray(yr),
        TAU, "sample",
    )
    assert np.isfinite(float(loss)) and all(np.isfinite(g).all() for g in grads)
    assert float(loss) == pytest.approx(ref_loss, abs=1e-6)
    np.testing.assert_allclose(grads[0][1], [0.0, 0.0])  # the dropped anchor gets no gradient
    np.testing.assert_allclose(grads[0], ref_gu, atol=1e-6)
    np.testing.assert_allclose(grads[1], ref_gr, atol=1e-6)


@pytest.mark.parametrize("mode", ["class", "sample"])
def test_anchor_whose_class_fills_the_retain_batch_gives_zero_not_nan(mode):
    u, r = jnp.array([[1.0, 0.0]]), jnp.array([[1.0, 0.0], [0.0, 1.0]])
    loss, grads = jax.value_and_grad(
        lambda u, r: contrastive_unlearning_loss(
            u, r, jnp.array([3]), jnp.array([3, 3]), temperature=TAU, mode=mode
        ),
        argnums=(0, 1),
    )(u, r)
    assert float(loss) == 0.0
    assert all(float(jnp.abs(g).sum()) == 0.0 for g in grads)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode"):
        contrastive_unlearning_loss(
            jnp.ones((1, 2)), jnp.ones((1, 2)), jnp.zeros(1), jnp.zeros(1), temperature=TAU,
            mode="both",
        )
