"""Distances between two models' predictions and between their weights (evaluation.md §6), in float64."""

from typing import Any

import jax
import numpy as np

Q_FLOOR = 1e-12
"""Lower bound on q in `kl_divergence`: keeps KL(p‖q) finite (≤ −log 1e-12 ≈ 27.6 per unit of p mass) when
q rounds to 0 where p does not, e.g. for a float32 softmax."""


def _relative_entropy(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[N, C], [N, C] → [N] Σ_k p_k (log p_k − log q_k), with 0·log 0 = 0; q must be > 0 where p > 0."""
    positive = p > 0
    terms = np.log(np.where(positive, p, 1.0)) - np.log(np.where(positive, q, 1.0))
    return np.sum(np.where(positive, p * terms, 0.0), axis=-1)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p‖q) in nats, [N] from probability rows p, q [N, C]; q is floored at Q_FLOOR, 0·log 0 = 0."""
    p = np.asarray(p, np.float64)
    return _relative_entropy(p, np.maximum(np.asarray(q, np.float64), Q_FLOOR))


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence ½KL(p‖m) + ½KL(q‖m), m = (p + q)/2, in nats, [N] from [N, C]; in [0, ln 2].

    Exact (no floor: m > 0 wherever p or q is); the result is clipped to [0, ln 2] against rounding only.
    """
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2
    return np.clip((_relative_entropy(p, m) + _relative_entropy(q, m)) / 2, 0.0, np.log(2))


def prediction_agreement(p: np.ndarray, q: np.ndarray) -> float:
    """Fraction of rows of p, q [N, C] (probabilities or logits) with the same argmax (ties: the first
    index); nan for N = 0."""
    if len(p) == 0:
        return float("nan")
    return float(np.mean(np.argmax(p, axis=-1) == np.argmax(q, axis=-1)))


def tree_l2_norm(a: Any) -> float:
    """‖a‖₂ over all leaves of a pytree of arrays (dicts, nnx.State, ...), accumulated in float64."""
    return float(np.sqrt(sum(np.sum(np.square(np.asarray(x, np.float64))) for x in jax.tree.leaves(a))))


def tree_l2_distance(a: Any, b: Any) -> float:
    """‖a − b‖₂ over all leaves of two pytrees of arrays with the same structure and leaf shapes, in float64.

    Raises ValueError if the tree structures or any leaf shapes differ.
    """
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError(f"tree structures differ: {jax.tree.structure(a)} vs {jax.tree.structure(b)}")

    def difference(x, y):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"leaf shapes differ: {x.shape} vs {y.shape}")
        return x - y

    return tree_l2_norm(jax.tree.map(difference, a, b))
