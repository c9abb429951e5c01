"""The metric registry: what every number an evaluation writes means, its unit and how to read it.

The evaluation suite writes these names into metrics.json; the report tables and figures, the experiment
reports and the demo read their units, descriptions, table columns and SalUn's average gap from here, so a
new metric is one entry. Every metric is read against the retrained model's value ("match_retrain",
docs/evaluation.md); a few are costs, where lower is better.
"""

from dataclasses import dataclass
from typing import Literal

Unit = Literal["fraction", "seconds", "count", "nats", "distance"]
Direction = Literal["match_retrain", "lower_better"]


@dataclass(frozen=True)
class Metric:
    """name: the key in metrics.json; unit: "fraction" (shown in percent), "seconds", "count", "nats" or
    "distance" (a weight-space L2 norm); computed_by: the evaluator that computes it (`jaxunlearn.evaluation.evaluators`), or the function
    that writes it; average_gap: part of
    SalUn's Avg. Gap; table: a column of the report tables; figures: the report figures that draw it
    ("accuracy", "mia", "curves": its value after every epoch)."""

    name: str
    unit: Unit
    description: str
    computed_by: str
    direction: Direction = "match_retrain"
    average_gap: bool = False
    table: bool = False
    figures: tuple[str, ...] = ()


_SUITE = "jaxunlearn.evaluation.evaluators.accuracy"
_MEMBERSHIP = "jaxunlearn.evaluation.evaluators.membership"
_REFERENCE = "jaxunlearn.evaluation.evaluators.against_reference"
_SHALLOW_BN = "jaxunlearn.evaluation.evaluators.bn_recomputed"
_SHALLOW_PROBE = "jaxunlearn.evaluation.evaluators.probe"
_ORIGINAL = "jaxunlearn.evaluation.evaluators.against_original"

REGISTRY: tuple[Metric, ...] = (
    Metric("forget_train_acc", "fraction", "accuracy on the forget set (training images to be forgotten)", _SUITE,
           average_gap=True, table=True, figures=("accuracy", "curves")),
    Metric("forget_test_acc", "fraction",
           "accuracy on the test images of the forgotten class(es) (class forgetting only)", _SUITE, table=True,
           figures=("accuracy", "curves")),
    Metric("retain_train_acc", "fraction", "accuracy on the retained training images", _SUITE,
           average_gap=True, table=True, figures=("accuracy",)),
    Metric("test_acc", "fraction",
           "accuracy on the test set (for class forgetting: the test images of the other classes)", _SUITE,
           average_gap=True, table=True, figures=("accuracy", "curves")),
    Metric("forget_train_conf", "fraction", "mean max-softmax confidence on the forget set", _SUITE),
    Metric("forget_test_conf", "fraction", "mean max-softmax confidence on the forgotten classes' test images", _SUITE),
    Metric("retain_train_conf", "fraction", "mean max-softmax confidence on the retained training images", _SUITE),
    Metric("test_conf", "fraction", "mean max-softmax confidence on the test set", _SUITE),
    Metric("mia_efficacy", "fraction",
           "MIA-efficacy (SalUn): share of the forget set an SVC confidence attack predicts as non-members",
           _MEMBERSHIP, average_gap=True, table=True, figures=("mia",)),
    Metric("mia_loss_auc", "fraction",
           "ROC AUC of a threshold attack on the per-example loss, forget set (members) vs. held-out test images",
           _MEMBERSHIP, table=True, figures=("mia",)),
    Metric("mia_confidence_auc", "fraction", "the same attack on the true-class confidence p_y", _MEMBERSHIP, table=True,
           figures=("mia",)),
    Metric("mia_logit_confidence_auc", "fraction",
           "the same attack on the logit-scaled confidence log p_y − log Σ_{k≠y} p_k (LiRA's statistic)",
           _MEMBERSHIP, table=True, figures=("mia",)),
    *(Metric(f"mia_{score}_tpr_at_{level}_fpr", "fraction",
             f"true-positive rate of the {score.replace('_', '-')} attack at {rate} false positives", _MEMBERSHIP)
      for score in ("loss", "confidence", "logit_confidence") for level, rate in (("1pct", "1%"), ("01pct", "0.1%"))),
    Metric("js_forget", "nats",
           "Jensen–Shannon divergence from the reference's predictions on the forget set (nats, 0 to ln 2)",
           _REFERENCE, table=True),
    Metric("js_test", "nats", "the same on the test set", _REFERENCE),
    Metric("kl_forget", "nats", "KL(reference ‖ model) of the predictions on the forget set", _REFERENCE),
    Metric("kl_test", "nats", "the same on the test set", _REFERENCE),
    Metric("agreement_forget", "fraction", "share of forget images on which the model predicts the reference's class",
           _REFERENCE, table=True),
    Metric("agreement_test", "fraction", "the same on the test set", _REFERENCE),
    Metric("l2_to_original", "distance", "L2 distance of all parameters to the original model's", _ORIGINAL),
    Metric("l2_to_reference", "distance", "L2 distance of all parameters to the reference's", _REFERENCE),
    Metric("bn_recomputed_forget_train_acc", "fraction",
           "forget-set accuracy after the BatchNorm statistics are recomputed on retain data, weights unchanged "
           "(forgetting that lived in the statistics comes back)", _SHALLOW_BN, table=True),
    Metric("bn_recomputed_forget_test_acc", "fraction",
           "the same on the forgotten classes' test images (class forgetting only)", _SHALLOW_BN, table=True),
    Metric("bn_recomputed_test_acc", "fraction", "test accuracy after the same recomputation", _SHALLOW_BN),
    Metric("probe_forget_acc", "fraction",
           "a linear probe on the frozen embeddings, fitted on half of the test set: its accuracy on the other "
           "half's forgotten-class images (class forgetting) or on the forget set (sample forgetting)",
           _SHALLOW_PROBE, table=True),
    Metric("probe_test_acc", "fraction", "the same probe's accuracy on the other half's retained classes",
           _SHALLOW_PROBE),
    Metric("relearn_steps", "count", "fine-tuning steps on the forget set until its accuracy is back at the original's",
           _ORIGINAL, table=True),
    Metric("relearn_target_acc", "fraction", "the original's forget-set accuracy, the relearn target", _ORIGINAL),
    Metric("seconds", "seconds", "wall-clock time of the run", "jaxunlearn.engine.loop.Trainer", direction="lower_better",
           table=True),
    Metric("compile_seconds", "seconds", "of the run's seconds, those JAX spent tracing and compiling its programs",
           "jaxunlearn.engine.compile_time.compile_clock", direction="lower_better"),
    Metric("steps", "count", "optimizer steps of the run", "jaxunlearn.engine.loop.Trainer", direction="lower_better",
           table=True),
    Metric("epochs", "count", "epochs of the run", "jaxunlearn.engine.loop.Trainer", direction="lower_better"),
)

METRICS: dict[str, Metric] = {metric.name: metric for metric in REGISTRY}


def metric(name: str) -> Metric | None:
    """The registered metric `name`; a bootstrap bound "<metric>_low" / "_high" shares its metric's unit.
    None for a name the registry does not know."""
    if name in METRICS:
        return METRICS[name]
    base = name.removesuffix("_low").removesuffix("_high")
    return METRICS.get(base) if base != name else None


TABLE_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.table)
"""The report tables' columns, in registry order."""

AVERAGE_GAP_METRICS: tuple[str, ...] = tuple(m.name for m in REGISTRY if m.average_gap)
"""SalUn's Avg. Gap: forget, retain and test accuracy and MIA-efficacy."""


def figure_metrics(figure: str) -> tuple[str, ...]:
    """The metrics a report figure ("accuracy", "mia", "curves") draws, in registry order."""
    return tuple(m.name for m in REGISTRY if figure in m.figures)
