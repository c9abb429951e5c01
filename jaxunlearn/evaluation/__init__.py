"""Evaluation of unlearned models: accuracies, membership-inference attacks, divergences, relearn time, and the
many-model audits (the NeurIPS 2023 challenge score)."""

from jaxunlearn.evaluation.attacks import attack_suite, per_example_scores, svc_mia_efficacy, threshold_free_attack
from jaxunlearn.evaluation.challenge import challenge_epsilons, forget_quality
from jaxunlearn.evaluation.divergence import js_divergence, kl_divergence, prediction_agreement, tree_l2_distance
from jaxunlearn.evaluation.evaluators import (EVALUATORS, PROTOCOL, EvaluatedModel, evaluate_model, evaluator,
                                             run_protocol)

__all__ = [
    "EVALUATORS",
    "EvaluatedModel",
    "PROTOCOL",
    "evaluate_model",
    "evaluator",
    "run_protocol",
    "attack_suite",
    "challenge_epsilons",
    "forget_quality",
    "js_divergence",
    "kl_divergence",
    "per_example_scores",
    "prediction_agreement",
    "svc_mia_efficacy",
    "threshold_free_attack",
    "tree_l2_distance",
]
