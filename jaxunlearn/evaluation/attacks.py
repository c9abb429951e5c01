"""Membership-inference attacks on a model's outputs (evaluation.md §2–§3), on the host in numpy/scikit-learn.

Two families:
- `svc_mia_efficacy`: the SalUn / Unlearn-Sparse "MIA-efficacy", a single operating point of an RBF SVC on
  true-class confidence, ported exactly as coded;
- `threshold_free_attack` / `attack_suite`: ROC AUC and TPR at low FPR of one per-example score, with
  bootstrap intervals. Targets are Retrain's values, not 0.5.
"""

import numpy as np

SCORES_MEMBER_HIGHER = {"loss": False, "confidence": True, "logit_confidence": True}
"""The per-example scores of `per_example_scores`, and whether members are expected to score higher."""

FPR_LEVELS = {"1pct": 0.01, "01pct": 0.001}
"""Key infix → false-positive rate at which `threshold_free_attack` reports the TPR."""


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """[N, C] → [N] log Σ_k exp x_k over the last axis, stable; entries of −inf contribute nothing."""
    m = x.max(axis=-1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))[:, 0]


def per_example_scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example attack scores, float64 [N] each, from logits float [N, C] and labels int [N].

    "loss" = −log p_y; "confidence" = p_y; "logit_confidence" = φ = log p_y − log Σ_{k≠y} p_k, computed as
    z_y − logsumexp_{k≠y} z_k so that it stays finite when p_y rounds to 0 or 1.
    """
    z = np.asarray(logits, np.float64)
    rows = np.arange(len(z))
    labels = np.asarray(labels)
    z_y = z[rows, labels]
    loss = _logsumexp(z) - z_y
    others = z.copy()
    others[rows, labels] = -np.inf
    return {"loss": loss, "confidence": np.exp(-loss), "logit_confidence": z_y - _logsumexp(others)}


def svc_mia_efficacy(member_conf: np.ndarray, nonmember_conf: np.ndarray, target_conf: np.ndarray) -> float:
    """SalUn / Unlearn-Sparse `SVC_MIA_forget_efficacy['confidence']`, exactly as coded (evaluation.md §2).

    member_conf [n_m] (shadow members: the first len(test) retain examples), nonmember_conf [n_n] (the test
    set) and target_conf [n_t] (the forget set) are true-class probabilities p_y. An
    `SVC(C=3, gamma="auto", kernel="rbf")` is fit, unscaled, on [members; non-members] → [1; 0] as [n, 1]
    features; the result is 1 − mean(predict(target)), the fraction of the target predicted non-member, in
    [0, 1] (×100 is the paper's "MIA-efficacy"). nan for an empty target.
    """
    if len(target_conf) == 0:
        return float("nan")
    features = np.concatenate([member_conf, nonmember_conf]).astype(np.float64).reshape(-1, 1)
    membership = np.concatenate([np.ones(len(member_conf)), np.zeros(len(nonmember_conf))])
    from sklearn.svm import SVC  # here, not at import: scikit-learn takes most of a second to import

    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(features, membership)
    return float(1 - clf.predict(np.asarray(target_conf, np.float64).reshape(-1, 1)).mean())


def _roc_statistics(scores: np.ndarray, is_member: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """ROC AUC and TPR at each of FPR_LEVELS for B weightings of one pool of scores.

    scores float [n], higher = more member-like; is_member bool [n]; counts int [B, n], how many times each
    example is drawn. → {"auc": [B], "tpr_at_<level>_fpr": [B]}.

    The ROC curve has one point per distinct score s (predict member iff score ≥ s) plus (0, 0), as sklearn's
    `roc_curve(..., drop_intermediate=False)`; AUC is its trapezoidal area, which equals the Mann–Whitney
    P(member > non-member) + ½ P(tie). TPR at FPR f is the largest TPR among points with FPR ≤ f.
    """
    order = np.argsort(-scores, kind="stable")
    ends = np.flatnonzero(np.append(np.diff(scores[order]) != 0, True))
    drawn = counts[:, order]
    tp = np.cumsum(np.where(is_member[order], drawn, 0), axis=1)[:, ends]
    fp = np.cumsum(drawn, axis=1)[:, ends] - tp
    n_pos, n_neg = tp[:, -1:], fp[:, -1:]
    tp = np.concatenate([np.zeros_like(n_pos), tp], axis=1)
    fp = np.concatenate([np.zeros_like(n_neg), fp], axis=1)
    area = (np.diff(fp, axis=1) * (tp[:, 1:] + tp[:, :-1])).sum(axis=1)
    stats = {"auc": area / (2 * n_pos[:, 0] * n_neg[:, 0])}
    tpr, fpr = tp / n_pos, fp / n_neg
    for level, f in FPR_LEVELS.items():
        stats[f"tpr_at_{level}_fpr"] = np.where(fpr <= f, tpr, 0.0).max(axis=1)
    return stats


def _bootstrap_counts(rng: np.random.Generator, n: int, n_bootstrap: int) -> np.ndarray:
    """int [n_bootstrap, n]: how often each of n items is drawn in each resample of size n with replacement."""
    draws = rng.integers(0, n, (n_bootstrap, n)) + n * np.arange(n_bootstrap)[:, None]
    return np.bincount(draws.ravel(), minlength=n_bootstrap * n).reshape(n_bootstrap, n)


def threshold_free_attack(member_scores: np.ndarray, nonmember_scores: np.ndarray, *, member_higher: bool,
                          n_bootstrap: int = 200, seed: int = 0) -> dict[str, float]:
    """How well one score tells members [n_m] from non-members [n_n], at every threshold.

    Keys: "auc", "tpr_at_1pct_fpr" (FPR = 1%), "tpr_at_01pct_fpr" (FPR = 0.1%), each with "_low" and "_high":
    the 2.5% and 97.5% percentiles over n_bootstrap resamples in which members and non-members are redrawn
    independently with replacement (numpy Generator `seed`). The point estimates use the data as given.
    The ROC follows sklearn's `roc_curve(drop_intermediate=False)`: TPR at FPR f is the largest TPR of a
    threshold whose FPR is ≤ f. member_higher=False flips the score (e.g. loss: lower = member).
    All nan if either set is empty; nan intervals if n_bootstrap = 0.
    """
    keys = ["auc", *(f"tpr_at_{level}_fpr" for level in FPR_LEVELS)]
    n_m, n_n = len(member_scores), len(nonmember_scores)
    if n_m == 0 or n_n == 0:
        return {f"{k}{s}": float("nan") for k in keys for s in ("", "_low", "_high")}
    sign = 1.0 if member_higher else -1.0
    scores = sign * np.concatenate([member_scores, nonmember_scores]).astype(np.float64)
    is_member = np.arange(n_m + n_n) < n_m
    rng = np.random.default_rng(seed)
    counts = np.concatenate([_bootstrap_counts(rng, n, n_bootstrap) for n in (n_m, n_n)], axis=1)
    point = _roc_statistics(scores, is_member, np.ones((1, n_m + n_n), np.int64))
    boot = _roc_statistics(scores, is_member, counts)
    result = {}
    for k in keys:
        low, high = np.quantile(boot[k], [0.025, 0.975]) if n_bootstrap else (np.nan, np.nan)
        result.update({k: float(point[k][0]), f"{k}_low": float(low), f"{k}_high": float(high)})
    return result


def attack_suite(member_logits: np.ndarray, member_labels: np.ndarray, nonmember_logits: np.ndarray,
                 nonmember_labels: np.ndarray, *, n_bootstrap: int = 200, seed: int = 0) -> dict[str, float]:
    """`threshold_free_attack` on each score of `per_example_scores`, as flat keys "mia_<score>_<key>".

    Members (logits [n_m, C], labels [n_m]) are the forget set, which the model may still remember;
    non-members ([n_n, C], [n_n]) are held-out test images chosen by the caller. 27 keys, e.g. "mia_loss_auc",
    "mia_confidence_tpr_at_1pct_fpr_high", "mia_logit_confidence_tpr_at_01pct_fpr". Every score uses the
    same bootstrap resamples (same seed and set sizes).
    """
    members = per_example_scores(member_logits, member_labels)
    nonmembers = per_example_scores(nonmember_logits, nonmember_labels)
    result = {}
    for score, higher in SCORES_MEMBER_HIGHER.items():
        attack = threshold_free_attack(members[score], nonmembers[score], member_higher=higher,
                                       n_bootstrap=n_bootstrap, seed=seed)
        result.update({f"mia_{score}_{k}": v for k, v in attack.items()})
    return result
