"""The evaluation of one model held in memory: what `jaxunlearn.runs.evaluate` computes for a run
directory, for a model trained in the user's own loop."""

import numpy as np
from flax import nnx

from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData
from jaxunlearn.data.dataset import Dataset
from jaxunlearn.data.splits import Split
from jaxunlearn.evaluation.accuracy import (Predictor, evaluate_parts, host_labels, make_predictor, part_outputs,
                                           sampled, split_parts, whole_sets)
from jaxunlearn.evaluation.shallow import recompute_batch_stats
from jaxunlearn.evaluation.suite import Outputs, forgetting_metrics, part_labels, probe_metrics


def evaluate_model(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, dataset: Dataset,
                   split: Split | None = None, *, data: "DeviceData | StreamedData | None" = None,
                   predict: Predictor | None = None, eval_sample: int | None = None) -> dict[str, float]:
    """Metrics of the model (graphdef, params, batch_stats) from `nnx.split(model, nnx.Param, nnx.BatchStat)`.

    Without a split: `train_acc`, `test_acc` (and `validation_acc` when the dataset holds one out) and their
    mean confidences. With a split: per part
    (forget_train, retain_train, forget_test for class forgetting, test) accuracy and confidence, the
    membership-inference attacks, the linear probe of the forgotten class, and `bn_recomputed_<part>_acc`:
    the accuracies after the BatchNorm statistics are recomputed on the retain set, no weight changed
    (docs/evaluation.md). `data` and `predict` may pass the dataset's placed data and the model's predictor
    when the caller already has them. eval_sample: evaluate each part on at most this many images (a fixed
    sample, `accuracy.sampled`), recorded as `eval_sample` in the metrics.
    """
    return evaluate_model_outputs(graphdef, params, batch_stats, dataset, split, data=data, predict=predict,
                                  eval_sample=eval_sample)[0]


def evaluate_model_outputs(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, dataset: Dataset,
                           split: Split | None = None, *, data: "DeviceData | StreamedData | None" = None,
                           predict: Predictor | None = None, eval_sample: int | None = None
                           ) -> tuple[dict[str, float], Outputs | None]:
    """`evaluate_model`'s metrics and, with a split, the model's outputs on its parts (None without one), for
    a caller that compares them with another model's."""
    data = DeviceData.from_dataset(dataset) if data is None else data
    predict = make_predictor(graphdef, data.mean, data.std) if predict is None else predict
    labels = host_labels(dataset)
    if split is None:
        parts = {**sampled({"train": ("train", np.arange(len(dataset.train_labels)))}, eval_sample),
                 **whole_sets(dataset, eval_sample)}
        return _noting(evaluate_parts(predict, params, batch_stats, data, labels, parts), eval_sample), None
    parts = split_parts(split, dataset.test_labels, dataset.validation_labels, eval_sample)
    outputs = part_outputs(predict, params, batch_stats, data, parts)
    metrics = forgetting_metrics(outputs, part_labels(parts, labels), split)
    metrics.update(probe_metrics(outputs, part_labels(parts, labels), split))
    recomputed = recompute_batch_stats(graphdef, params, batch_stats, data, parts["retain_train"][1])
    evaluated = {name: part for name, part in parts.items() if name != "retain_train"}
    metrics.update({f"bn_recomputed_{name}": value for name, value in evaluate_parts(
        predict, params, recomputed, data, labels, evaluated).items() if name.endswith("_acc")})
    return _noting(metrics, eval_sample), outputs


def _noting(metrics: dict[str, float], eval_sample: int | None) -> dict[str, float]:
    """The metrics with the evaluation sample they were computed on, when there is one."""
    return metrics if eval_sample is None else {**metrics, "eval_sample": eval_sample}
