"""The NeurIPS 2023 Machine Unlearning Challenge score: per-example ε, forget quality F and the final score.

Pure numpy over logit-scaled confidences φ [N models, M examples] of the forget set under N unlearned and N
retrained models. docs/evaluation.md §4 describes the protocol; this module reproduces the published scorer
(google-deepmind/unlearning_evaluation, metric.py) decision for decision, including its float32 rates and its
float32 single-threshold grid, with two departures that change no well-defined result:
- its `assert thr_eps` raises for any array of more than one element; its intent, a non-empty check, is
  what `challenge_epsilons` does (ValueError when no decision rule gives a finite or infinite ε), except
  for an example whose two sides are one and the same point mass, where every rule has FPR·FNR = 0 and the
  published scorer fails: that example gets ε = 0, since nothing can tell the sides apart;
- the rates of its ~10⁵–10⁶ interval rules per example are counted with sorted searches instead of a
  [models × rules] comparison matrix (the same counts, so the same rates).

Two identical procedures do not score F = 1 at finite N: the maximum over hundreds of thresholds inflates ε.
Measure the retrain-against-retrain floor at the same N and report every F beside it (docs/evaluation.md §4).
"""

import math

import numpy as np

DELTA = 1e-5
"""δ of the (ε, δ) bound every decision rule's error rates are turned into."""

EPSILON_CAP = 50.0
"""Per-example ε is clipped to [0, EPSILON_CAP]; perfect separation (∞) and a collapsed spread give the cap."""

THRESHOLDS_PER_UNIT = 100
"""Grid density of both rule families, thresholds per unit of φ."""

_BUFFER = 2.0
"""How far (in φ) the interval rules' thresholds reach beyond the peakier distribution."""

_LEFT_THRESHOLDS = int(math.ceil(2 * _BUFFER * THRESHOLDS_PER_UNIT))
"""Left ends tried per right end of an interval rule (400)."""

_SPREAD_RATIO_FLOOR = 0.01
"""A distribution whose spread (max − min) is below 1% of the other's gets ε = cap outright."""


def logit_scaled_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """φ = log(p_y + 1e-45) − log(Σ_{k≠y} p_k + 1e-45) [n], as the challenge computes it from logits [n, C].

    The softmax is taken after subtracting the row maximum, exponentiated in the logits' own dtype and
    normalised in float64 (the challenge's `compute_logit_scaled_confidence`). For well-behaved logits this is
    `attacks.per_example_scores(...)["logit_confidence"]`; it differs where a probability underflows, which
    the 1e-45 floor turns into a bounded value instead of the exact one.
    """
    shifted = logits - np.max(logits, axis=1, keepdims=True)
    probs = np.asarray(np.exp(shifted), dtype=np.float64)
    probs /= np.sum(probs, axis=1, keepdims=True)
    rows = np.arange(len(probs))
    correct = probs[rows, labels].copy()
    probs[rows, labels] = 0
    wrong = np.sum(probs, axis=1)
    return np.log(correct + 1e-45) - np.log(wrong + 1e-45)


def _rates(predicted_positive_pos: np.ndarray, predicted_positive_neg: np.ndarray, n: int):
    """(tpr, fnr, fpr, tnr) float32 [R] from counts of predicted positives among n positives / n negatives,
    each the float32 mean of 0/1 indicators as the published scorer takes it."""
    count = np.float32(n)
    tpr = predicted_positive_pos.astype(np.float32) / count
    fpr = predicted_positive_neg.astype(np.float32) / count
    fnr = (n - predicted_positive_pos).astype(np.float32) / count
    tnr = (n - predicted_positive_neg).astype(np.float32) / count
    return tpr, fnr, fpr, tnr


def _interval_rule_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted-positive counts [R] of the double-threshold rules ("inside [left, right] is positive").

    The peakier distribution (the smaller spread; the negatives on a tie) is the positive one. Right ends
    run on a grid from its minimum + spread − 2 to its maximum + 2; for each, 400 left ends from
    right − spread − 2 to right − spread + 2. Returns (count among positives, count among negatives) with
    that assignment.
    """
    pos_spread, neg_spread = pos.max() - pos.min(), neg.max() - neg.min()
    width = neg_spread if pos_spread > neg_spread else pos_spread
    if pos_spread >= neg_spread:
        pos, neg = neg, pos
    low = pos.min() + width - _BUFFER
    high = pos.max() + _BUFFER
    right = np.linspace(low, high, num=int(np.ceil((high - low) * THRESHOLDS_PER_UNIT)))
    left = np.linspace(right - width - _BUFFER, right - width + _BUFFER, num=_LEFT_THRESHOLDS, axis=1).ravel()
    right = np.repeat(right, _LEFT_THRESHOLDS)
    counts = []
    for values in (np.sort(pos), np.sort(neg)):
        inside = np.searchsorted(values, right, side="right") - np.searchsorted(values, left, side="left")
        counts.append(np.maximum(inside, 0))
    return counts[0], counts[1]


def _float32_linspace(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps)` at torch's default float32, by its CUDA kernel's formula (the
    published scorer runs on CUDA): step = (end − start)/(steps − 1) and every point in float32, point i =
    start + step·i for i < steps // 2 and end − step·(steps − 1 − i) after. Points may differ from another
    device's by one float32 rounding (a fused multiply-add), which moves a count only for a φ within
    ~1e-7 of a grid point."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32])
    step = (end32 - start32) / np.float32(steps - 1)
    index = np.arange(steps)
    up = start32 + step * index.astype(np.float32)
    down = end32 - step * (steps - index - 1).astype(np.float32)
    return np.where(index < steps // 2, up, down).astype(np.float32)


def _single_rule_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted-positive counts [R] of the single-threshold rules ("φ ≥ t is positive") over a float32 grid
    from the smallest to the largest φ of both sets."""
    everything = np.concatenate([pos, neg])
    low, high = everything.min(), everything.max()
    thresholds = _float32_linspace(low, high, int(np.ceil((high - low) * THRESHOLDS_PER_UNIT))).astype(np.float64)
    return tuple(len(values) - np.searchsorted(np.sort(values), thresholds, side="left") for values in (pos, neg))


def _example_epsilon(pos: np.ndarray, neg: np.ndarray, delta: float) -> float:
    """ε of one example: the largest over both rule families of the (ε, δ) bound of its error rates."""
    pos_spread, neg_spread = pos.max() - pos.min(), neg.max() - neg.min()
    largest, smallest = max(pos_spread, neg_spread), min(pos_spread, neg_spread)
    with np.errstate(invalid="ignore", divide="ignore"):
        if smallest / largest < _SPREAD_RATIO_FLOOR:  # 0/0 (both collapsed) is nan: not this case
            return EPSILON_CAP
    n = len(pos)
    tpr, fnr, fpr, tnr = (np.concatenate(parts) for parts in zip(
        _rates(*_interval_rule_counts(pos, neg), n), _rates(*_single_rule_counts(pos, neg), n)))
    perfect = (fpr + fnr == 0) & (tpr + tnr == 2)
    one_sided = ~perfect & (fpr * fnr == 0)  # too few samples to bound ε: the rule is dropped
    with np.errstate(invalid="ignore", divide="ignore"):  # fmax: the larger bound, nan only if both are
        bound = np.fmax(np.log(np.float32(1 - delta) - fpr) - np.log(fnr),
                        np.log(np.float32(1 - delta) - fnr) - np.log(fpr))
    epsilons = np.where(perfect, np.inf, np.clip(bound, 0, None))
    kept = epsilons[~one_sided & ~np.isnan(epsilons)]
    if kept.size == 0:
        if largest == 0 and pos[0] == neg[0]:  # one and the same point mass: nothing tells the sides apart
            return 0.0
        raise ValueError("no decision rule gave a usable ε for an example (every rule has FPR·FNR = 0)")
    return float(min(kept.max(), EPSILON_CAP))


def _check_confidences(unlearned: np.ndarray, retrained: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    unlearned, retrained = np.asarray(unlearned, np.float64), np.asarray(retrained, np.float64)
    if unlearned.ndim != 2 or unlearned.shape != retrained.shape:
        raise ValueError(f"expected two [N models, M examples] arrays of one shape, got {unlearned.shape} "
                         f"and {retrained.shape}")
    if unlearned.shape[0] < 2:
        raise ValueError(f"the challenge score needs at least 2 models per side, got {unlearned.shape[0]}")
    if unlearned.shape[1] == 0:
        raise ValueError("the challenge score needs at least one forget example, got [N, 0] confidences")
    if not (np.all(np.isfinite(unlearned)) and np.all(np.isfinite(retrained))):
        raise ValueError("logit-scaled confidences must be finite")
    return unlearned, retrained


def challenge_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA) -> np.ndarray:
    """Per-example ε [M] in [0, EPSILON_CAP] from φ under N unlearned and N retrained models, both [N, M].

    For each example the side with the larger median φ is "positive" (the unlearned one on a tie). Every rule
    of two families is tried: single thresholds on a grid of 100 per unit over both sides' range, and
    intervals around the peakier side (`_interval_rule_counts`). A rule with rates (FPR, FNR) gives
    ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), clipped at 0; FPR = FNR = 0 gives ∞;
    a rule with FPR·FNR = 0 otherwise is dropped. ε is the largest over the rules, capped; an example whose
    one side spreads less than 1% of the other's gets the cap; one whose sides are the same point mass
    gets 0. ValueError when an example has no usable rule otherwise (the published scorer's failed check).
    """
    unlearned, retrained = _check_confidences(unlearned, retrained)
    retrain_positive = np.median(retrained, axis=0) > np.median(unlearned, axis=0)
    pos = np.where(retrain_positive, retrained, unlearned)
    neg = np.where(retrain_positive, unlearned, retrained)
    return np.array([_example_epsilon(pos[:, i], neg[:, i], delta) for i in range(pos.shape[1])])


def epsilon_points(epsilons: np.ndarray, n_models: int) -> np.ndarray:
    """Each example's share of the forget quality [M]: bins of width ½ from 0 score 1, ½, ¼, …; ε at or
    beyond ⌈ln(N − 1)⌉ (7 for 512 models) scores 0."""
    max_epsilon = math.ceil(math.log(n_models - 1)) if n_models > 1 else 0
    bins = int(2 * max_epsilon)
    index = np.floor(np.asarray(epsilons, np.float64) / 0.5).astype(np.int64)
    return np.where(index < bins, 0.5 ** index.clip(0, None), 0.0)


def forget_quality(unlearned: np.ndarray, retrained: np.ndarray) -> float:
    """F in [0, 1]: the mean over the forget examples of `epsilon_points` of their `challenge_epsilons`.

    unlearned, retrained: logit-scaled confidences [N models, M examples], N ≥ 2.
    """
    return float(np.mean(epsilon_points(challenge_epsilons(unlearned, retrained), np.shape(unlearned)[0])))


def final_score(quality: float, retain_unlearned: np.ndarray, retain_retrained: np.ndarray,
                test_unlearned: np.ndarray, test_retrained: np.ndarray) -> float:
    """F · (mean RA unlearned / mean RA retrained) · (mean TA unlearned / mean TA retrained), the challenge's
    utility-adjusted score; each accuracy array holds one value per model."""
    return float(quality * (np.mean(retain_unlearned) / np.mean(retain_retrained))
                 * (np.mean(test_unlearned) / np.mean(test_retrained)))
