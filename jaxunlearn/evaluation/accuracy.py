"""Model outputs on chosen rows of the dataset, and accuracy/confidence over the parts of a split.

Everything runs in eval mode (BatchNorm running statistics).
"""

from collections.abc import Callable
from functools import partial

import jax
import numpy as np
from flax import nnx

from jaxunlearn.data.device import DeviceData, normalise
from jaxunlearn.data.placement import StreamedData, resident_parts, sample_rows
from jaxunlearn.data.dataset import Dataset
from jaxunlearn.data.splits import Split

CHUNK = 512
"""Images per forward pass in evaluation; sets are padded to a multiple of it."""

Predictor = Callable[[nnx.State, nnx.State, jax.Array, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(params, batch_stats, images uint8 [N, H, W, C] on device, indices int [n])
→ (logits float32 [n, C], embeddings float32 [n, D])."""

Parts = dict[str, tuple[str, np.ndarray]]
"""part name → ("train" | "test" | "validation", indices into that set)."""


@partial(jax.jit, static_argnames=("graphdef", "mean", "std"))
def _predict_padded(params, batch_stats, images, indices, *, graphdef, mean, std):
    """indices int32 [k·CHUNK] → (logits [k·CHUNK, C], feat [k·CHUNK, D])."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)

    def chunk(idx):
        return model(normalise(images[idx], mean, std), train=False)

    logits, feat = jax.lax.map(chunk, indices.reshape(-1, CHUNK))
    return logits.reshape(-1, logits.shape[-1]), feat.reshape(-1, feat.shape[-1])


def make_predictor(graphdef: nnx.GraphDef, mean: tuple[float, ...], std: tuple[float, ...]) -> Predictor:
    """Eval-mode logits and embeddings of the model `graphdef`; compiled once per model and padded set size."""

    def predict(params: nnx.State, batch_stats: nnx.State, images: jax.Array,
                indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(indices)
        padded = np.zeros(-(-max(n, 1) // CHUNK) * CHUNK, np.int32)
        padded[:n] = indices
        logits, feat = jax.device_get(_predict_padded(
            params, batch_stats, images, padded, graphdef=graphdef, mean=tuple(mean), std=tuple(std)))
        return logits[:n], feat[:n]

    return predict


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of logits [n, C], in their dtype."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def accuracy_and_confidence(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean max-softmax confidence of logits [n, C]; (nan, nan) for n = 0."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    probs = softmax(logits)
    return float(np.mean(logits.argmax(axis=1) == labels)), float(np.mean(probs.max(axis=1)))


def split_parts(split: Split, test_labels: np.ndarray, validation_labels: np.ndarray | None = None,
                at_most: int | None = None) -> Parts:
    """The evaluated parts of a split.

    forget_train, retain_train: the split itself. In class mode forget_test holds the test images of the
    forgotten classes and test the others (remain-test); in sample mode test is the whole test set. With
    `validation_labels` (a held-out validation set), validation and forget_validation in the same way.
    at_most: evaluate each part on at most this many images (`sampled`), for data too large to evaluate whole.
    """
    parts = {"forget_train": ("train", split.forget), "retain_train": ("train", split.retain)}
    for where, labels in (("test", test_labels), ("validation", validation_labels)):
        if labels is None:
            continue
        forgotten = split.forget_test_mask(labels)
        if split.spec.mode == "class":
            parts[f"forget_{where}"] = (where, np.flatnonzero(forgotten))
        parts[where] = (where, np.flatnonzero(~forgotten))
    return sampled(parts, at_most)


def sampled(parts: Parts, at_most: int | None) -> Parts:
    """Each part reduced to at most `at_most` of its images (None: all): a fixed random choice (seed 0), kept
    in order, the same for every run evaluated on the same parts."""
    return {name: (where, sample_rows(indices, at_most)) for name, (where, indices) in parts.items()}


def host_labels(dataset: Dataset) -> dict[str, np.ndarray]:
    """"train", "test" and, when the dataset holds one out, "validation" → that set's labels [N]."""
    labels = {"train": dataset.train_labels, "test": dataset.test_labels}
    if dataset.validation_labels is not None:
        labels["validation"] = dataset.validation_labels
    return labels


def whole_sets(dataset: Dataset, at_most: int | None = None) -> Parts:
    """Every image of the test set and, when the dataset holds one out, of the validation set (at most
    `at_most` of each: `sampled`)."""
    return sampled({where: (where, np.arange(len(labels))) for where, labels in host_labels(dataset).items()
                    if where != "train"}, at_most)


def part_outputs(predict: Predictor, params: nnx.State, batch_stats: nnx.State, data: "DeviceData | StreamedData",
                 parts: Parts) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """part name → (logits [n, C], embeddings [n, D]) of the model (params, batch_stats); streamed data is
    read for just the parts' rows (`resident_parts`). The parts of one set go through one `predict` call (one
    program per set, not per part); eval mode makes each row's outputs independent of the others."""
    data, parts, _ = resident_parts(data, parts, {})
    images = {"train": data.train_images, "test": data.test_images, "validation": data.validation_images}
    outputs = {}
    for where in dict.fromkeys(where for where, _ in parts.values()):
        names = [name for name, (part_set, _) in parts.items() if part_set == where]
        logits, feat = predict(params, batch_stats, images[where], np.concatenate([parts[n][1] for n in names]))
        ends = np.cumsum([len(parts[n][1]) for n in names])
        for name, end in zip(names, ends):
            start = end - len(parts[name][1])
            outputs[name] = (logits[start:end], feat[start:end])
    return {name: outputs[name] for name in parts}


def evaluate_parts(predict: Predictor, params: nnx.State, batch_stats: nnx.State, data: "DeviceData | StreamedData",
                   labels: dict[str, np.ndarray], parts: Parts, known: dict[str, float] | None = None
                   ) -> dict[str, float]:
    """`<part>_acc` and `<part>_conf` for each part; `labels` maps each set to its host labels (`host_labels`).
    known: metrics already measured on this same model (the last epoch's evaluation of the final state): the
    parts they cover are taken from it, not evaluated again."""
    known = known or {}
    measured = {name: part for name, part in parts.items()
                if f"{name}_acc" not in known or f"{name}_conf" not in known}
    outputs = {}
    if measured:
        data, measured, labels = resident_parts(data, measured, labels)
        outputs = part_outputs(predict, params, batch_stats, data, measured)
    metrics = {}
    for name in parts:
        if name in measured:
            where, indices = measured[name]
            metrics[f"{name}_acc"], metrics[f"{name}_conf"] = accuracy_and_confidence(
                outputs[name][0], labels[where][indices])
        else:
            metrics[f"{name}_acc"], metrics[f"{name}_conf"] = known[f"{name}_acc"], known[f"{name}_conf"]
    return metrics
