"""Relearn time: fine-tuning steps on the forget set until its accuracy is back at the original's level."""

from dataclasses import dataclass

import jax
import numpy as np
import optax
from flax import nnx

from jaxunlearn.data.device import DeviceData
from jaxunlearn.data.placement import StreamedData, resident_rows
from jaxunlearn.engine.epoch import make_epoch_fn, place_blocks
from jaxunlearn.engine.parallel import local_mesh, replicate
from jaxunlearn.engine.state import create_state
from jaxunlearn.evaluation.accuracy import make_predictor
from jaxunlearn.methods.supervised import supervised_loss


@dataclass(frozen=True)
class RelearnSettings:
    """SGD on forget batches drawn with replacement; accuracy is checked every `check_every` steps."""

    learning_rate: float = 0.01
    momentum: float = 0.9
    batch_size: int = 64
    check_every: int = 5
    max_steps: int = 200


def relearn_steps(graphdef: nnx.GraphDef, params: nnx.State, batch_stats: nnx.State,
                  data: "DeviceData | StreamedData",
                  forget: np.ndarray, target_accuracy: float, settings: RelearnSettings = RelearnSettings(),
                  seed: int = 0) -> tuple[int, bool]:
    """(steps until the forget-set accuracy is ≥ target_accuracy, whether the cap was hit first).

    The model (params, batch_stats) is not modified; the count is a multiple of `settings.check_every`.
    """
    data, forget = resident_rows(data, "train", forget)
    labels = np.asarray(data.train_labels)[forget]
    predict = make_predictor(graphdef, data.mean, data.std)

    def accuracy(state) -> float:
        logits, _ = predict(state.params, state.batch_stats, data.train_images, forget)
        return float(np.mean(logits.argmax(axis=1) == labels))

    tx = optax.sgd(settings.learning_rate, momentum=settings.momentum)
    mesh = local_mesh()
    copies = jax.tree.map(lambda x: x.copy(), (params, batch_stats))  # the epoch donates its state
    state = replicate(create_state(*copies, tx), mesh)
    images, train_labels = replicate((data.train_images, data.train_labels), mesh)
    if accuracy(state) >= target_accuracy:
        return 0, False
    epoch_fn = make_epoch_fn(graphdef, tx, supervised_loss, data.mean, data.std, mesh)
    rng = np.random.default_rng(seed)
    batch = min(settings.batch_size, len(forget))
    steps = 0
    while steps < settings.max_steps:
        block = {"train": rng.choice(forget, size=(settings.check_every, batch)).astype(np.int32)}
        state, _ = epoch_fn(state, images, train_labels, None, place_blocks([block], mesh, "shard_map"), 0)
        steps += settings.check_every
        if accuracy(state) >= target_accuracy:
            return steps, False
    return steps, True
