"""Evaluation of unlearned models: accuracies, membership-inference attacks, divergences, relearn time."""

from jaxunlearn.evaluation.attacks import attack_suite, per_example_scores, svc_mia_efficacy, threshold_free_attack
from jaxunlearn.evaluation.divergence import js_divergence, kl_divergence, prediction_agreement, tree_l2_distance

__all__ = [
    "attack_suite",
    "js_divergence",
    "kl_divergence",
    "per_example_scores",
    "prediction_agreement",
    "svc_mia_efficacy",
    "threshold_free_attack",
    "tree_l2_distance",
]
