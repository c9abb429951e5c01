"""NegGrad+ (Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023), DeepUnlearn's version.

An epoch is one pass over the retain set; each retain batch is paired with the next forget batch, the forget
batches of the epoch being cycled (`zip(retain_loader, itertools.cycle(forget_loader))`: the first pass's
batches replayed in the same order). One step per pair on L = β·CE(f(x_r), y_r) − (1−β)·CE(f(x_f), y_f),
retain and forget forwarded separately. Reference: xcadet/deepunlearn `munl/unlearning/neggradplus.py`
(SGD lr 0.01, momentum 0.9, weight decay 0, BatchNorm in eval mode, β 0.95, 10 epochs, batch 256);
docs/baselines.md §2.4 compares it with the SCRUB notebooks' versions.

Deviations:
- DU's L2-to-initialisation term is omitted: its weight is DU's class constant weight_decay = 0, so the
  term is always 0 there.
- Both loaders' last batches are partial. A plan block needs one width, so every batch is padded to the batch
  size by repeating its own samples and the padding is weighted 0 (columns `retain_weight`,
  `forget_weight`); each CE is the mean over the real samples of the global batch. In eval mode (default)
  this is exact. With `batchnorm=train` the padded duplicates also enter the batch statistics of a
  partial batch (at most two steps per epoch).
"""

import dataclasses
from collections.abc import Sequence
from typing import Literal

import numpy as np

from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import global_weighted_mean
from jaxunlearn.losses import sample_cross_entropy
from jaxunlearn.methods.base import Context, Method, SGDHparams, register


@dataclasses.dataclass(frozen=True)
class NegGradPlusHparams(SGDHparams):
    """DU defaults (`munl/unlearning/neggradplus.py`): β (DU's alpha) 0.95, 10 epochs, SGD lr 0.01,
    momentum 0.9, weight decay 0, batch 256 for both sets, BatchNorm in eval mode (running statistics used
    and kept). batchnorm="train" gives the train-mode variant of SCRUB's `MIA_experiments.ipynb`."""

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    beta: float = 0.95
    batchnorm: Literal["eval", "train"] = "eval"


def loader_batches(indices: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Consecutive batches of `indices`, the last one partial (a DataLoader without drop_last)."""
    return [indices[start:start + batch_size] for start in range(0, len(indices), batch_size)]


def padded(batches: Sequence[np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Batches as int32 [steps, width], each padded by repeating its own samples, and the int32 weights
    [steps, width]: 1 for a real sample, 0 for padding."""
    indices = np.stack([np.resize(batch, width) for batch in batches]).astype(np.int32)
    weights = np.stack([np.arange(width) < len(batch) for batch in batches]).astype(np.int32)
    return indices, weights


def paired_plan(retain: np.ndarray, forget: np.ndarray, batch_size: int, rng: np.random.Generator) -> Block:
    """One epoch: the shuffled retain batches, each beside forget batch (i mod k) of the shuffled forget set."""
    retain_batches = loader_batches(rng.permutation(retain), batch_size)
    forget_batches = loader_batches(rng.permutation(forget), batch_size)
    cycled = [forget_batches[i % len(forget_batches)] for i in range(len(retain_batches))]
    retain_columns, retain_weights = padded(retain_batches, batch_size)
    forget_columns, forget_weights = padded(cycled, batch_size)
    return {"retain": retain_columns, "retain_weight": retain_weights,
            "forget": forget_columns, "forget_weight": forget_weights}


@register
class NegGradPlus(Method):
    name = "neggrad_plus"
    hparams_type = NegGradPlusHparams

    def plan(self, hparams: NegGradPlusHparams, context: Context, epoch: int) -> list[Block]:
        return [paired_plan(context.split.retain, context.split.forget, hparams.batch_size, context.rng(epoch))]

    def loss_fn(self, hparams: NegGradPlusHparams, context: Context):
        train = hparams.batchnorm == "train"

        def mean_cross_entropy(model, batch, step, role):
            """The role's CE over its real samples: its own loader padding and the engine's both weigh 0
            (BatchNorm skips only the engine's, as one device does)."""
            images, labels = batch[role]
            logits, _ = step.apply(model, images, train=train)
            per_sample = sample_cross_entropy(logits, labels)
            weights = step.columns[f"{role}_weight"].astype(per_sample.dtype)
            if step.mask is not None:
                weights = weights * step.mask
            return global_weighted_mean(per_sample, weights)

        def loss(model, batch, step):
            retain_ce = mean_cross_entropy(model, batch, step, "retain")
            forget_ce = mean_cross_entropy(model, batch, step, "forget")
            total = hparams.beta * retain_ce - (1 - hparams.beta) * forget_ce
            return total, {"retain_cross_entropy": retain_ce, "forget_cross_entropy": forget_ce}

        return loss
