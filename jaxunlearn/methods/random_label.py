"""Random Label (RL) unlearning, as OPTML-Group/Unlearn-Saliency `Classification/unlearn/RL.py` runs it for
CIFAR-10/SVHN.

Each epoch makes two passes, each batch its own optimizer step (sequential updates, not a summed loss):
1. the forget set, shuffled, every batch with fresh labels drawn uniformly from {0, …, C−1} (pre-drawn in
   the plan as the column `random_label`, deterministic per (seed, epoch)); step on CE(f(x_f), ỹ);
2. the retain set, shuffled, with its true labels.
Train-mode BatchNorm, PyTorch SGD with momentum and coupled weight decay at a constant rate; last partial
batches kept. docs/baselines.md §2.5. The paper draws ỹ ≠ y, the code can draw the true label:
`exclude_true_label` (default False = the code). The framework feeds un-augmented images.
"""

import dataclasses

import jax
import numpy as np
from flax import nnx

from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import Batch, StepContext
from jaxunlearn.methods.base import Context, Method, SGDHparams, register, shuffled_blocks

RANDOM_LABEL = "random_label"
"""The plan column of the forget pass holding each sample's random label."""


@dataclasses.dataclass(frozen=True)
class RandomLabelHparams(SGDHparams):
    """Reference defaults (SalUn `RL.py` / `main_random.py`): 10 epochs, SGD momentum 0.9, weight decay
    5e-4, batch 256. The reference leaves the learning rate to tuning (range [1e-4, 1e-1]); 0.013 is the
    value SalUn's README uses for its masked RL."""

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.013
    momentum: float = 0.9
    weight_decay: float = 5e-4
    exclude_true_label: bool = False


def random_labels(true_labels: np.ndarray, num_classes: int, exclude_true_label: bool,
                  rng: np.random.Generator) -> np.ndarray:
    """int32 labels of the shape of `true_labels`: uniform over all C classes, or over the C−1 others."""
    if exclude_true_label:
        offsets = rng.integers(1, num_classes, size=true_labels.shape)
        return ((true_labels + offsets) % num_classes).astype(np.int32)
    return rng.integers(0, num_classes, size=true_labels.shape).astype(np.int32)


def random_label_plan(context: Context, batch_size: int, exclude_true_label: bool, epoch: int) -> list[Block]:
    """The forget pass with a random label per sample, then the retain pass; both freshly shuffled."""
    rng = context.rng(epoch)
    forget_pass = [
        {**block, RANDOM_LABEL: random_labels(context.train_labels[block["forget"]], context.num_classes,
                                              exclude_true_label, rng)}
        for block in shuffled_blocks(context.split.forget, batch_size, rng, "forget")
    ]
    return forget_pass + shuffled_blocks(context.split.retain, batch_size, rng, "retain")


def random_label_loss(model: nnx.Module, batch: Batch, step: StepContext) -> tuple[jax.Array, dict]:
    """CE in train mode: of a forget batch against its random labels, or of a retain batch against its own."""
    if "forget" in batch:
        images, _ = batch["forget"]
        labels = step.columns[RANDOM_LABEL]
    else:
        images, labels = batch["retain"]
    return step.cross_entropy(model, images, labels), {}


@register
class RandomLabel(Method):
    name = "random_label"
    hparams_type = RandomLabelHparams

    def plan(self, hparams: RandomLabelHparams, context: Context, epoch: int) -> list[Block]:
        return random_label_plan(context, hparams.batch_size, hparams.exclude_true_label, epoch)

    def loss_fn(self, hparams: RandomLabelHparams, context: Context):
        return random_label_loss
