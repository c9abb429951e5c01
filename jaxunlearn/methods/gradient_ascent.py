"""Gradient Ascent (GA, "NegGrad"): minimise −CE on the forget set only, starting from the original model.

Reference: OPTML-Group/Unlearn-Sparse (README) and OPTML-Group/Unlearn-Saliency `Classification/unlearn/GA.py`:
train-mode BatchNorm (its running statistics are re-estimated on forget batches only), PyTorch SGD with
momentum and coupled weight decay at a constant rate, the forget set reshuffled every epoch with its last
partial batch kept. docs/baselines.md §2.3. The objective is unbounded: no early stopping, as in
the reference. The framework feeds un-augmented images.
"""

import dataclasses

import jax
from flax import nnx

from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import Batch, StepContext
from jaxunlearn.methods.base import Context, Method, SGDHparams, register, shuffled_blocks


@dataclasses.dataclass(frozen=True)
class GradientAscentHparams(SGDHparams):
    """Reference defaults (Sparse README, SalUn `GA.py`): SGD lr 1e-4, momentum 0.9, weight decay 5e-4,
    batch 256, 5 epochs. The maintainers advise 5e-4–1e-3 when the forget accuracy does not drop
    (Unlearn-Saliency issue #8)."""

    epochs: int = 5
    batch_size: int = 256
    learning_rate: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4


def negative_forget_cross_entropy(model: nnx.Module, batch: Batch, step: StepContext
                                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """−CE of the model in train mode on the forget batch; the part `cross_entropy` is +CE."""
    ce = step.cross_entropy(model, *batch["forget"])
    return -ce, {"cross_entropy": ce}


@register
class GradientAscent(Method):
    name = "gradient_ascent"
    hparams_type = GradientAscentHparams

    def plan(self, hparams: GradientAscentHparams, context: Context, epoch: int) -> list[Block]:
        return shuffled_blocks(context.split.forget, hparams.batch_size, context.rng(epoch), "forget")

    def loss_fn(self, hparams: GradientAscentHparams, context: Context):
        return negative_forget_cross_entropy
