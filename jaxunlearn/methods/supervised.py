"""Supervised training pieces shared by pretraining (`jaxunlearn train`) and the retrain reference."""

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxunlearn.config import SupervisedHparams
from jaxunlearn.data.augment import random_crop_flip
from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import Batch, LossFn, StepContext
from jaxunlearn.errors import UserError
from jaxunlearn.methods.base import Schedule


def supervised_optimizer(hparams: SupervisedHparams, steps_per_epoch: int) -> tuple[optax.GradientTransformation, Schedule]:
    """SGD + momentum + coupled weight decay, cosine over epochs with T_max = epochs + 1."""
    def schedule(step):
        epoch = step // steps_per_epoch
        return 0.5 * hparams.learning_rate * (1 + jnp.cos(jnp.pi * epoch / (hparams.epochs + 1)))

    tx = optax.chain(
        optax.add_decayed_weights(hparams.weight_decay),
        optax.sgd(schedule, momentum=hparams.momentum),
    )
    return tx, schedule


def supervised_plan(indices: np.ndarray, batch_size: int, rng: np.random.Generator, *,
                    keep_partial: bool = False) -> list[Block]:
    """One epoch over `indices` in a fresh random order: full batches, then (keep_partial) the
    len(indices) % batch_size samples left over as one last, smaller batch, as the official code's PyTorch
    loader does. Without it those samples, a different random few each epoch, are dropped: an epoch is then
    one compiled program (the partial batch compiles a second one).
    """
    if len(indices) < batch_size:
        raise UserError(f"batch size {batch_size} exceeds the {len(indices)} training samples")
    order = rng.permutation(indices).astype(np.int32)
    usable = len(indices) // batch_size * batch_size
    plan = [{"train": order[:usable].reshape(-1, batch_size)}]
    if keep_partial and usable < len(order):
        plan.append({"train": order[usable:][None]})
    return plan


def supervised_loss(model: nnx.Module, batch: Batch, context: StepContext):
    """Cross-entropy of the model in train mode on batch["train"]."""
    return context.cross_entropy(model, *batch["train"]), {}


def augmented_supervised_loss(model: nnx.Module, batch: Batch, context: StepContext):
    """`supervised_loss` on batch["train"] randomly cropped and flipped (`random_crop_flip`), each image's
    draw from its key in `context.example_keys`."""
    images, labels = batch["train"]
    images = random_crop_flip(images, context.example_keys(images.shape[0]))
    return supervised_loss(model, {"train": (images, labels)}, context)


def supervised_objective(hparams: SupervisedHparams) -> LossFn:
    """The recipe's loss: `augmented_supervised_loss` when `hparams.augment`, else `supervised_loss`."""
    return augmented_supervised_loss if hparams.augment else supervised_loss
