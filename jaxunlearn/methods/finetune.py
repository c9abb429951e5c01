"""Fine-tuning (FT): keep training the original model with cross-entropy on the retain set only.

Reference: OPTML-Group/Unlearn-Sparse (README) and OPTML-Group/Unlearn-Saliency
`Classification/unlearn/FT.py` (`FT_iter`): train-mode BatchNorm, PyTorch SGD (momentum, coupled weight
decay), a constant learning rate (the reference's MultiStepLR never fires within 10 epochs), the retain set
reshuffled every epoch with its last partial batch kept (no drop_last). docs/baselines.md §2.2.
The framework feeds un-augmented images, where the reference keeps its training augmentation.
"""

import dataclasses

from flax import nnx

from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import Batch, StepContext
from jaxunlearn.methods.base import Context, Method, SGDHparams, register, shuffled_blocks


@dataclasses.dataclass(frozen=True)
class FinetuneHparams(SGDHparams):
    """Reference defaults (Sparse README, SalUn `FT.py`): SGD lr 0.01, momentum 0.9, weight decay 5e-4,
    batch 256, 10 epochs."""

    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4


def retain_pass(context: Context, batch_size: int, epoch: int) -> list[Block]:
    """One pass over the retain set in a fresh order per (seed, epoch): full batches, then the rest."""
    return shuffled_blocks(context.split.retain, batch_size, context.rng(epoch), "retain")


def retain_cross_entropy(model: nnx.Module, batch: Batch, step: StepContext):
    """Cross-entropy of the model in train mode on the retain batch; no named parts."""
    return step.cross_entropy(model, *batch["retain"]), {}


@register
class Finetune(Method):
    name = "finetune"
    hparams_type = FinetuneHparams

    def plan(self, hparams: FinetuneHparams, context: Context, epoch: int) -> list[Block]:
        return retain_pass(context, hparams.batch_size, epoch)

    def loss_fn(self, hparams: FinetuneHparams, context: Context):
        return retain_cross_entropy
