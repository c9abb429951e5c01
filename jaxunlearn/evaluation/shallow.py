"""Shallow-forgetting checks: is the forgotten information gone from the weights, or only hidden?

Accuracies can show a class forgotten while what the model knew about it survives:
- in the BatchNorm running statistics: statistics pulled off by the unlearning steps make the forget set
  misclassified, and recomputing them on retain data, without changing one weight, can bring it back;
- in the embedding: the classifier head no longer names the class, but a linear probe on the frozen
  embeddings still tells it apart.
A model retrained without the forget set has nothing to bring back, so each check is read beside the
retrained model's value (docs/evaluation.md §6).
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxunlearn.data.device import DeviceData, normalise
from jaxunlearn.data.placement import StreamedData, resident_rows
from jaxunlearn.engine.parallel import DATA_AXIS

RECOMPUTE_BATCH = 256
"""Images per train-mode forward pass when BatchNorm statistics are recomputed."""


def _without_momentum(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State) -> nnx.GraphDef:
    """The graph of the model with every BatchNorm's momentum 0: a train-mode forward then leaves exactly
    the statistics of its batch as the running statistics."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    for _, module in nnx.iter_graph(model):
        if isinstance(module, nnx.BatchNorm):
            module.momentum = 0.0
    return nnx.split(model, nnx.Param, nnx.BatchStat)[0]


@partial(jax.jit, static_argnames=("graphdef", "mean", "std"))
def _mean_batch_statistics(params, batch_stats, images, blocks, *, graphdef, mean, std):
    """blocks int32 [n, B] → the running statistics averaged over the n batches' train-mode statistics."""
    def add_batch(total, indices):
        def forward(batch):  # under vmap over one slice, so BatchNorm's mean over `DATA_AXIS` has its axis
            model = nnx.merge(graphdef, params, batch_stats, copy=True)
            model(batch, train=True)
            return nnx.state(model, nnx.BatchStat)
        stats = jax.vmap(forward, axis_name=DATA_AXIS)(normalise(images[indices], mean, std)[None])
        return jax.tree.map(lambda t, s: t + s[0], total, stats), None

    total, _ = jax.lax.scan(add_batch, jax.tree.map(jnp.zeros_like, batch_stats), blocks)
    return jax.tree.map(lambda t: t / blocks.shape[0], total)


def recompute_batch_stats(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State,
                          data: "DeviceData | StreamedData",
                          indices: np.ndarray, batch_size: int = RECOMPUTE_BATCH) -> nnx.State:
    """BatchNorm running statistics recomputed on the train images `indices` (the retain set), weights
    unchanged: every layer's batch mean and (biased) variance, forwarded in train mode over the full
    batches of `indices` in order, averaged over the batches (PyTorch's cumulative `momentum=None`
    recalibration). Fewer indices than a batch make one batch of all of them."""
    data, indices = resident_rows(data, "train", indices)
    width = min(batch_size, len(indices))
    count = len(indices) // width
    blocks = np.asarray(indices[:count * width], np.int32).reshape(count, width)
    return _mean_batch_statistics(params, batch_stats, data.train_images, blocks,
                                  graphdef=_without_momentum(graphdef, params, batch_stats),
                                  mean=tuple(data.mean), std=tuple(data.std))


def held_out_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the indices of `labels` [n], stratified by class (every class split in two,
    the odd one out going to the second half), from `seed`."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def probe_accuracies(test_feat: np.ndarray, test_labels: np.ndarray, forget_feat: np.ndarray,
                     forget_labels: np.ndarray, forgotten_classes: tuple[int, ...], seed: int = 0) -> dict[str, float]:
    """A linear probe (standardised multinomial logistic regression) fitted on the frozen embeddings of one
    stratified half of the test set, every class included, and scored on held-out images.

    test_feat [n, D], test_labels [n]: embeddings and labels of the whole test set; forget_feat [f, D],
    forget_labels [f]: those of the forget set (training images). Keys:
    - "probe_test_acc": on the other half of the test set, retained classes only;
    - "probe_forget_acc": class forgetting, on the other half's images of the forgotten classes (can the
      class still be read off the embedding?); sample forgetting, on the forget set itself.
    """
    from sklearn.linear_model import LogisticRegression  # here, not at import: see attacks.svc_mia_efficacy
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fit_half, score_half = held_out_halves(test_labels, seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(np.asarray(test_feat, np.float64)[fit_half], test_labels[fit_half])
    predicted = probe.predict(np.asarray(test_feat, np.float64)[score_half])
    forgotten = np.isin(test_labels[score_half], forgotten_classes)
    correct = predicted == test_labels[score_half]
    if forgotten_classes:
        forget_acc = float(np.mean(correct[forgotten]))
    else:
        forget_acc = float(np.mean(probe.predict(np.asarray(forget_feat, np.float64)) == forget_labels))
    return {"probe_forget_acc": forget_acc, "probe_test_acc": float(np.mean(correct[~forgotten]))}
