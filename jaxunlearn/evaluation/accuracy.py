"""Accuracy and confidence of a model on the parts of a split, in eval mode (BatchNorm running statistics)."""

from collections.abc import Callable
from functools import partial
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn.data.device import DeviceData, normalise
from jaxunlearn.data.splits import Split

CHUNK = 512
"""Images per forward pass in evaluation; sets are padded to a multiple of it."""

Predictor = Callable[[nnx.State, nnx.State, jax.Array, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""(params, batch_stats, images uint8 [N, H, W, C] on device, indices int [n])
→ (predicted class [n], max-softmax confidence [n])."""


@partial(jax.jit, static_argnames=("graphdef", "mean", "std"))
def _predict_padded(params, batch_stats, images, indices, *, graphdef, mean, std):
    """indices int32 [k·CHUNK] → (predicted class, max-softmax confidence), each [k·CHUNK]."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)

    def chunk(idx):
        logits, _ = model(normalise(images[idx], mean, std), train=False)
        return jnp.argmax(logits, axis=-1), jax.nn.softmax(logits.astype(jnp.float32)).max(axis=-1)

    predicted, confidence = jax.lax.map(chunk, indices.reshape(-1, CHUNK))
    return predicted.reshape(-1), confidence.reshape(-1)


def make_predictor(graphdef: nnx.GraphDef, mean: tuple[float, ...], std: tuple[float, ...]) -> Predictor:
    """Eval-mode predictions of the model `graphdef`; compiled once per model and padded set size."""

    def predict(params: nnx.State, batch_stats: nnx.State, images: jax.Array,
                indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(indices)
        padded = np.zeros(-(-max(n, 1) // CHUNK) * CHUNK, np.int32)
        padded[:n] = indices
        predicted, confidence = jax.device_get(_predict_padded(
            params, batch_stats, images, padded, graphdef=graphdef, mean=tuple(mean), std=tuple(std)))
        return predicted[:n], confidence[:n]

    return predict


def accuracy_and_confidence(predict: Predictor, params: nnx.State, batch_stats: nnx.State,
                            images: jax.Array, labels: np.ndarray, indices: np.ndarray) -> tuple[float, float]:
    """Top-1 accuracy and mean max-softmax confidence on rows `indices`; (nan, nan) for an empty set."""
    if len(indices) == 0:
        return float("nan"), float("nan")
    predicted, confidence = predict(params, batch_stats, images, indices)
    return float(np.mean(predicted == labels[indices])), float(np.mean(confidence))


def split_parts(split: Split, test_labels: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """The evaluated parts of a split: name → ("train" | "test", indices).

    forget_train, retain_train: the split itself. In class mode forget_test holds the test images of the
    forgotten classes and test the others (remain-test); in sample mode test is the whole test set.
    """
    forget_test = split.forget_test_mask(test_labels)
    parts = {"forget_train": ("train", split.forget), "retain_train": ("train", split.retain)}
    if split.spec.mode == "class":
        parts["forget_test"] = ("test", np.flatnonzero(forget_test))
    parts["test"] = ("test", np.flatnonzero(~forget_test))
    return parts


def evaluate_parts(predict: Predictor, params: nnx.State, batch_stats: nnx.State, data: DeviceData,
                   labels: dict[str, np.ndarray], parts: dict[str, tuple[str, np.ndarray]]) -> dict[str, float]:
    """`<part>_acc` and `<part>_conf` for each part; `labels` maps "train"/"test" to host label arrays."""
    images = {"train": data.train_images, "test": data.test_images}
    metrics = {}
    for name, (where, indices) in parts.items():
        acc, conf = accuracy_and_confidence(predict, params, batch_stats, images[where], labels[where], indices)
        metrics[f"{name}_acc"], metrics[f"{name}_conf"] = acc, conf
    return metrics
