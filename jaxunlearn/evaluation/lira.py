"""U-LiRA (Hayes et al., arXiv 2403.01218): a per-example likelihood-ratio test that tells an unlearned
example from one the model never saw (docs/evaluation.md §5), in numpy.

Shadow models are trained on halves of the training set, so each audited example is held by half of them;
the method unlearns it in those, and every shadow is also retrained from scratch on what it retains, so the
retrained shadows never saw it. For each example, Gaussians of its logit-scaled confidence φ are fitted over
the fitting shadows: "unlearned" (the shadows that held it, after unlearning) and "never seen" (the
retrained shadows). On held-out target shadows that held it, the attack is shown the unlearned and the
retrained model's φ and calls each unlearned when its likelihood ratio is above 1; its balanced accuracy is
50% when unlearning is indistinguishable from never having seen the example. Both sides are trained on the
same data with the same recipe, so a method that is retraining scores 50% (the control).
"""

import numpy as np

SIGMA_FLOOR = 1e-4
"""Smallest standard deviation of a fitted Gaussian: keeps the ratio finite if every shadow gives one φ."""


def _gaussian_log_density(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std)


def _fit(values: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example mean and standard deviation (ddof 1, floored) of values [S, T] over the shadows where
    chosen [S, T] is True."""
    count = chosen.sum(axis=0)
    if np.any(count < 2):
        raise ValueError("every audited example needs at least 2 fitting shadows on each side")
    mean = np.where(chosen, values, 0).sum(axis=0) / count
    variance = np.where(chosen, (values - mean) ** 2, 0).sum(axis=0) / (count - 1)
    return mean, np.maximum(np.sqrt(variance), SIGMA_FLOOR)


def _balanced_accuracy(predicted: np.ndarray, truth: np.ndarray, scored: np.ndarray, weights: np.ndarray
                       ) -> tuple[float, float, float]:
    """(balanced accuracy, TPR, TNR) over the scored observations [R, T], examples weighted [T]."""
    positives = ((scored & truth) * weights).sum()
    negatives = ((scored & ~truth) * weights).sum()
    tpr = float(((scored & predicted & truth) * weights).sum() / positives) if positives else float("nan")
    tnr = float(((scored & ~predicted & ~truth) * weights).sum() / negatives) if negatives else float("nan")
    return (tpr + tnr) / 2, tpr, tnr


def ulira(unlearned: np.ndarray, never_seen: np.ndarray, held_in: np.ndarray, fitting: np.ndarray, *,
          n_bootstrap: int = 200, seed: int = 0) -> dict[str, float]:
    """The U-LiRA attack's balanced accuracy on the target shadows, with a bootstrap interval over examples.

    unlearned [S, T]: φ of each audited example under each shadow's unlearned model (used where held_in);
    never_seen [S, T]: φ under each shadow's retrained model, which never saw any audited example;
    held_in bool [S, T]: whether shadow s held example t (and so unlearned it);
    fitting bool [S]: the shadows the Gaussians are fitted on (the "never seen" one over all of them); the
      others are the targets, each showing the attack, for every example it held, its unlearned and its
      retrained φ.
    Returns balanced_accuracy, tpr (unlearned called unlearned), tnr (retrained called never seen),
    balanced_accuracy_low / _high (2.5% and 97.5% over n_bootstrap resamples of the examples) and targets
    (observations scored, half of each kind).
    """
    unlearned, never_seen = np.asarray(unlearned, np.float64), np.asarray(never_seen, np.float64)
    held_in, fitting = np.asarray(held_in, bool), np.asarray(fitting, bool)
    if not (unlearned.shape == never_seen.shape == held_in.shape) or fitting.shape != unlearned.shape[:1]:
        raise ValueError(f"expected [S, T] arrays and fitting [S], got {unlearned.shape}, {never_seen.shape}, "
                         f"{held_in.shape}, {fitting.shape}")
    if fitting.all() or not fitting.any():
        raise ValueError("U-LiRA needs fitting shadows and held-out target shadows")
    mean_u, std_u = _fit(unlearned, held_in & fitting[:, None])
    mean_n, std_n = _fit(never_seen, np.broadcast_to(fitting[:, None], held_in.shape))
    shown = held_in & ~fitting[:, None]
    observed = np.concatenate([unlearned, never_seen])
    truth = np.concatenate([np.ones_like(held_in), np.zeros_like(held_in)])
    scored = np.concatenate([shown, shown])
    predicted = (_gaussian_log_density(observed, mean_u, std_u)
                 > _gaussian_log_density(observed, mean_n, std_n))
    predicted, truth = np.where(scored, predicted, False), np.where(scored, truth, False)
    examples = unlearned.shape[1]
    accuracy, tpr, tnr = _balanced_accuracy(predicted, truth, scored, np.ones(examples))
    rng = np.random.default_rng(seed)
    boot = [_balanced_accuracy(predicted, truth, scored, np.bincount(rng.integers(0, examples, examples),
                                                                     minlength=examples).astype(np.float64))[0]
            for _ in range(n_bootstrap)]
    low, high = np.quantile(boot, [0.025, 0.975]) if n_bootstrap else (np.nan, np.nan)
    return {"balanced_accuracy": accuracy, "balanced_accuracy_low": float(low),
            "balanced_accuracy_high": float(high), "tpr": tpr, "tnr": tnr, "targets": int(scored.sum())}


def balanced_shadow_halves(pool_size: int, audited: np.ndarray, shadows: int, seed: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Training subsets of `shadows` shadow models over train indices 0..pool_size−1, and which audited
    examples each holds.

    Shadows come in pairs with complementary halves: shadow 2j holds a random half of the audited examples
    and of the others, shadow 2j+1 the rest. So every audited example is held by exactly half of the shadows,
    and every shadow holds len(audited)/2 audited examples and as many images as every other (one image
    of the non-audited pool is left out when their count is odd). Returns (subsets int64 [S, n] sorted,
    held_in bool [S, T] over `audited` in its order).
    """
    audited = np.asarray(audited, np.int64)
    if shadows < 2 or shadows % 2:
        raise ValueError(f"shadows come in complementary pairs: an even count >= 2, got {shadows}")
    if len(audited) % 2:
        raise ValueError(f"the audited examples are split in halves: an even count, got {len(audited)}")
    others = np.setdiff1d(np.arange(pool_size), audited)
    rng = np.random.default_rng(seed)
    subsets, held = [], []
    half_audited, half_others = len(audited) // 2, len(others) // 2
    for _ in range(shadows // 2):
        order, rest = rng.permutation(len(audited)), rng.permutation(others)
        first = np.zeros(len(audited), bool)
        first[order[:half_audited]] = True
        for holds, pool in ((first, rest[:half_others]), (~first, rest[half_others:2 * half_others])):
            subsets.append(np.sort(np.concatenate([audited[holds], pool])))
            held.append(holds)
    return np.stack(subsets), np.stack(held)
