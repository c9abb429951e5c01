"""The evaluation as units (big_vision style): each group of metrics is an evaluator, a function of the
`EvaluatedModel` → {metric name: value}, registered by name in `EVALUATORS`. A protocol is a tuple of their
names (`PROTOCOL`, what `jaxunlearn.runs.evaluate` runs) and every entry of the metric registry names the
evaluator that computes it (`jaxunlearn.evaluation.metrics.Metric.computed_by`). docs/evaluation.md defines
every metric; everything is to be compared with the retrained reference, not maximised.

An evaluator returns nothing where it does not apply: without a split only `accuracy` has something to say;
`against_original` needs the original's weights, `against_reference` the reference's.
"""

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flax import nnx

from jaxunlearn.data.dataset import Dataset
from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData, sample_rows
from jaxunlearn.data.splits import Split
from jaxunlearn.evaluation.accuracy import (Parts, Predictor, accuracy_and_confidence, evaluate_parts, host_labels,
                                           make_predictor, part_outputs, sampled, softmax, split_parts, whole_sets)
from jaxunlearn.evaluation.attacks import attack_suite, svc_mia_efficacy
from jaxunlearn.evaluation.divergence import js_divergence, kl_divergence, prediction_agreement, tree_l2_distance
from jaxunlearn.evaluation.relearn import RelearnSettings, relearn_steps
from jaxunlearn.evaluation.shallow import probe_accuracies, recompute_batch_stats

Outputs = dict[str, tuple[np.ndarray, np.ndarray]]
"""part name → (logits [n, C], embeddings [n, D])."""

MIA_MEMBERS = 10_000
"""SalUn's shadow members: the first 10,000 retain examples in dataset order (fewer if the set is smaller)."""


@dataclass
class EvaluatedModel:
    """One model (from `nnx.split(model, nnx.Param, nnx.BatchStat)`) as the evaluators read it, with its data,
    its split (None: a model nothing was forgotten from), and the (params, batch_stats) of the models it is
    compared with. Its parts, their labels and the model's outputs on them are computed once, on first use.
    eval_sample: evaluate each part on at most this many images (a fixed sample, `accuracy.sampled`)."""

    graphdef: nnx.GraphDef
    params: nnx.State
    batch_stats: nnx.State
    dataset: Dataset
    data: "DeviceData | StreamedData"
    predict: Predictor
    split: Split | None = None
    eval_sample: int | None = None
    original: tuple[nnx.State, nnx.State] | None = None
    reference: tuple[nnx.State, nnx.State] | None = None
    relearn: RelearnSettings = RelearnSettings()

    @functools.cached_property
    def labels(self) -> dict[str, np.ndarray]:
        return host_labels(self.dataset)

    @functools.cached_property
    def parts(self) -> Parts:
        """The split's parts (`split_parts`), or without a split the training set and the held-out sets."""
        if self.split is None:
            return {**sampled({"train": ("train", np.arange(len(self.dataset.train_labels)))}, self.eval_sample),
                    **whole_sets(self.dataset, self.eval_sample)}
        return split_parts(self.split, self.dataset.test_labels, self.dataset.validation_labels, self.eval_sample)

    @functools.cached_property
    def part_labels(self) -> dict[str, np.ndarray]:
        """part name → true labels of its rows."""
        return {name: self.labels[where][indices] for name, (where, indices) in self.parts.items()}

    @functools.cached_property
    def outputs(self) -> Outputs:
        return part_outputs(self.predict, self.params, self.batch_stats, self.data, self.parts)


Evaluator = Callable[[EvaluatedModel], dict[str, Any]]
EVALUATORS: dict[str, Evaluator] = {}
"""name → evaluator, in the order a protocol usually runs them."""


def evaluator(fn: Evaluator) -> Evaluator:
    """Register `fn` under its name (a researcher's own evaluator too)."""
    EVALUATORS[fn.__name__] = fn
    return fn


@evaluator
def accuracy(model: EvaluatedModel) -> dict[str, float]:
    """`<part>_acc` and `<part>_conf` (top-1 accuracy and mean max-softmax confidence) of every part."""
    if model.split is None:
        return evaluate_parts(model.predict, model.params, model.batch_stats, model.data, model.labels, model.parts)
    metrics = {}
    for name, (logits, _) in model.outputs.items():
        metrics[f"{name}_acc"], metrics[f"{name}_conf"] = accuracy_and_confidence(logits, model.part_labels[name])
    return metrics


@evaluator
def membership(model: EvaluatedModel, *, n_bootstrap: int = 200, seed: int = 0) -> dict[str, float]:
    """SalUn's MIA-efficacy and the threshold-free attacks.

    MIA-efficacy: SVC on true-class confidence, members = the first 10,000 retain examples, non-members =
    the test part (without the forgotten classes in class mode), target = the forget set.
    Threshold-free attacks: the forget set (members) against unseen images of the same distribution:
    the forgotten classes' test images in class mode, the whole test set in sample mode.
    """
    if model.split is None:
        return {}
    outputs, labels = model.outputs, model.part_labels
    # SalUn feeds the SVC float32 softmax probabilities; float64 ones can flip decisions at its boundary.
    confidence = {name: softmax(logits.astype(np.float32))[np.arange(len(logits)), labels[name]]
                  for name, (logits, _) in outputs.items()}
    members = confidence["retain_train"][:MIA_MEMBERS]
    metrics = {"mia_efficacy": svc_mia_efficacy(members, confidence["test"], confidence["forget_train"])}
    unseen = "forget_test" if model.split.spec.mode == "class" else "test"
    metrics.update(attack_suite(outputs["forget_train"][0], labels["forget_train"], outputs[unseen][0],
                                labels[unseen], n_bootstrap=n_bootstrap, seed=seed))
    return metrics


@evaluator
def probe(model: EvaluatedModel) -> dict[str, float]:
    """`probe_accuracies` on the embeddings of the whole test set (in class mode the forgotten classes' test
    images and the others together) and of the forget set."""
    if model.split is None:
        return {}
    outputs, labels = model.outputs, model.part_labels
    test_parts = ("forget_test", "test") if model.split.spec.mode == "class" else ("test",)
    return probe_accuracies(np.concatenate([outputs[name][1] for name in test_parts]),
                            np.concatenate([labels[name] for name in test_parts]),
                            outputs["forget_train"][1], labels["forget_train"], model.split.spec.classes)


@evaluator
def bn_recomputed(model: EvaluatedModel) -> dict[str, float]:
    """`bn_recomputed_<part>_acc`: the accuracies after the BatchNorm statistics are recomputed on the retain
    set, no weight changed."""
    if model.split is None:
        return {}
    recomputed = recompute_batch_stats(model.graphdef, model.params, model.batch_stats, model.data,
                                       model.parts["retain_train"][1])
    evaluated = {name: part for name, part in model.parts.items() if name != "retain_train"}
    return {f"bn_recomputed_{name}": value for name, value in evaluate_parts(
        model.predict, model.params, recomputed, model.data, model.labels, evaluated).items() if name.endswith("_acc")}


@evaluator
def against_original(model: EvaluatedModel) -> dict[str, Any]:
    """`l2_to_original`, and the relearn time: fine-tuning steps on the forget set until its accuracy is back at
    the original's (`relearn_steps`, `relearn_capped`, `relearn_target_acc`)."""
    if model.split is None or model.original is None:
        return {}
    original_params, original_stats = model.original
    metrics: dict[str, Any] = {"l2_to_original": tree_l2_distance(model.params, original_params)}
    forget = sample_rows(model.split.forget, model.eval_sample)
    original_logits = part_outputs(model.predict, original_params, original_stats, model.data,
                                   {"forget": ("train", forget)})["forget"][0]
    target = float(np.mean(original_logits.argmax(axis=1) == model.dataset.train_labels[forget]))
    steps, capped = relearn_steps(model.graphdef, model.params, model.batch_stats, model.data, forget, target,
                                  model.relearn)
    return {**metrics, "relearn_steps": steps, "relearn_capped": capped, "relearn_target_acc": target}


@evaluator
def against_reference(model: EvaluatedModel, parts: tuple[str, ...] = ("forget_train", "test")) -> dict[str, float]:
    """Mean JS and KL(reference ‖ model) between the two models' predictions and their argmax agreement, on the
    forget set and the test part; `l2_to_reference`."""
    if model.split is None or model.reference is None:
        return {}
    reference_params, reference_stats = model.reference
    reference = part_outputs(model.predict, reference_params, reference_stats, model.data,
                             {name: model.parts[name] for name in parts})
    metrics: dict[str, float] = {}
    for name in parts:
        p_model, p_reference = softmax(model.outputs[name][0]), softmax(reference[name][0])
        short = name.removesuffix("_train")
        metrics[f"js_{short}"] = float(np.mean(js_divergence(p_model, p_reference)))
        metrics[f"kl_{short}"] = float(np.mean(kl_divergence(p_reference, p_model)))
        metrics[f"agreement_{short}"] = prediction_agreement(p_model, p_reference)
    metrics["l2_to_reference"] = tree_l2_distance(model.params, reference_params)
    return metrics


PROTOCOL: tuple[str, ...] = ("accuracy", "membership", "probe", "bn_recomputed", "against_original",
                             "against_reference")
"""What `jaxunlearn.runs.evaluate` runs, in this order."""


def run_protocol(model: EvaluatedModel, protocol: Sequence[str] = PROTOCOL) -> dict[str, Any]:
    """The metrics of every evaluator of `protocol` that applies to `model`, in order; with the evaluation
    sample they were computed on, when there is one."""
    metrics: dict[str, Any] = {}
    for name in protocol:
        metrics.update(EVALUATORS[name](model))
    return metrics if model.eval_sample is None else {**metrics, "eval_sample": model.eval_sample}


def evaluate_model(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State, dataset: Dataset,
                   split: Split | None = None, *, data: "DeviceData | StreamedData | None" = None,
                   predict: Predictor | None = None, eval_sample: int | None = None,
                   protocol: Sequence[str] = PROTOCOL) -> dict[str, float]:
    """Metrics of one model held in memory (graphdef, params, batch_stats) from `nnx.split(model, nnx.Param,
    nnx.BatchStat)`, by `protocol`'s evaluators (those that need no other model's weights).

    Without a split: `train_acc`, `test_acc` (and `validation_acc` when the dataset holds one out) and their
    mean confidences. With a split: per part (forget_train, retain_train, forget_test for class forgetting,
    test) accuracy and confidence, the membership-inference attacks, the linear probe of the forgotten
    class, and `bn_recomputed_<part>_acc` (docs/evaluation.md). `data` and `predict` may pass the dataset's
    placed data and the model's predictor when the caller already has them. eval_sample: evaluate each part
    on at most this many images, recorded as `eval_sample` in the metrics.
    """
    data = DeviceData.from_dataset(dataset) if data is None else data
    predict = make_predictor(graphdef, data.mean, data.std) if predict is None else predict
    return run_protocol(EvaluatedModel(graphdef, params, batch_stats, dataset, data, predict, split, eval_sample),
                        protocol)
