"""SalUn (Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency", ICLR 2024).

1. Saliency mask (`prepare`; Unlearn-Saliency `Classification/generate_mask.py`): with the ORIGINAL model in
   eval mode, g = Σ over the forget batches (shuffled with the seed) of ∇θ of the batch-mean −CE; s = |g|;
   rank s globally over all trainable parameters (convolutions, BatchNorm scale and bias, classifier and
   projection head) and set m = 1 on exactly the ⌊N·r⌋ largest entries (ties: lower position in the
   flattened parameter tree first, a stable sort).
2. Random Label unlearning (`random_label`) restricted to the salient weights, with the mask applied after
   coupled weight decay and before momentum: chain(add_decayed_weights(λ), m, trace(μ), −lr). Coordinates
   with m = 0 get no decay, no momentum and no update, so they stay bit-identical to the original; this is
   the reference after its mask-leak fix (Unlearn-Saliency PR #33). BatchNorm running statistics are not
   masked (reference behaviour). The mask lives in the optimizer state: saved with the checkpoints, not
   compiled into the step.
docs/baselines.md §2.6. The framework feeds un-augmented images to the mask and to training, where
the reference uses its augmented training transform for both.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn.data.device import gather_batch
from jaxunlearn.data.placement import StreamedData, resident_rows
from jaxunlearn.errors import UserError
from jaxunlearn.losses import cross_entropy
from jaxunlearn.methods.base import Context, StartingModel, batch_blocks, register
from jaxunlearn.methods.random_label import RandomLabel, RandomLabelHparams

MASK_STREAM = 2**32 - 1
"""Second seed word of the forget-set order of the saliency pass; epochs (the plans' second word) never reach it."""


@dataclasses.dataclass(frozen=True)
class SalunHparams(RandomLabelHparams):
    """Reference defaults (Unlearn-Saliency README, random 10% forgetting): mask ratio r 0.5, 10 epochs,
    SGD lr 0.013, momentum 0.9, weight decay 5e-4, batch 256 (also the saliency pass's batch). The README
    gives no class-wise value: tune the learning rate there."""

    mask_ratio: float = 0.5

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.mask_ratio <= 1.0:
            raise UserError(f"mask_ratio must be in [0, 1], got {self.mask_ratio}")


class ElementMaskState(NamedTuple):
    """mask: bool tree of the updates' structure; True where updates pass."""

    mask: Any


def element_mask(mask: Any) -> optax.GradientTransformation:
    """Zero the updates element-wise where `mask` is False, as jnp.where (so a non-finite update cannot leak
    through 0·inf). `init` stores a copy of the mask in the state (the state is donated to the step, so it
    must not share buffers with `mask`); `update` reads it from there."""
    def init(params):
        return ElementMaskState(mask=jax.tree.map(jnp.copy, mask))

    def update(updates, state, params=None):
        return jax.tree.map(lambda u, m: jnp.where(m, u, jnp.zeros_like(u)), updates, state.mask), state

    return optax.GradientTransformation(init, update)


def masked_torch_sgd(mask: Any, learning_rate: float, momentum: float, weight_decay: float
                     ) -> optax.GradientTransformation:
    """PyTorch SGD (coupled decay, momentum b = μb + g, −lr·b) on the coordinates where `mask` is True;
    the others get zero decay, zero momentum and zero update."""
    return optax.chain(optax.add_decayed_weights(weight_decay), element_mask(mask), optax.trace(decay=momentum),
                       optax.scale_by_learning_rate(learning_rate))


def top_fraction_mask(scores: Any, ratio: float) -> Any:
    """bool tree like `scores`: True on exactly ⌊N·ratio⌋ entries, the largest over ALL leaves together.

    N is the total entry count; ties go to the entry earlier in the flattened tree (stable sort).
    """
    leaves, treedef = jax.tree.flatten(scores)
    flat = jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])
    count = math.floor(flat.size * ratio)
    chosen = jnp.argsort(-flat, stable=True)[:count]
    ones = jnp.zeros(flat.shape, bool).at[chosen].set(True)
    pieces = jnp.split(ones, np.cumsum([leaf.size for leaf in leaves])[:-1])
    return jax.tree.unflatten(treedef, [piece.reshape(leaf.shape) for piece, leaf in zip(pieces, leaves)])


def forget_gradient(start: StartingModel, blocks: Sequence[np.ndarray]) -> Any:
    """Σ over forget batches of ∇θ[−CE_batch] of the starting model in eval mode; a tree like its params.

    blocks: int32 [steps, B] index blocks (`batch_blocks`), each batch's mean loss differentiated on its own.
    """
    data = start.data
    if isinstance(data, StreamedData):  # a device copy of just the forget batches' rows, renumbered
        rows = np.unique(np.concatenate([block.ravel() for block in blocks]))
        data, _ = resident_rows(data, "train", rows)
        blocks = [np.searchsorted(rows, block).astype(np.int32) for block in blocks]

    @jax.jit
    def block_sum(params, batch_stats, train_images, train_labels, block):
        def add_batch(total, indices):
            images, labels = gather_batch(train_images, train_labels, indices, data.mean, data.std)
            grad = jax.grad(lambda p: -cross_entropy(start.forward(p, batch_stats, images)[0], labels))(params)
            return jax.tree.map(jnp.add, total, grad), None

        total, _ = jax.lax.scan(add_batch, jax.tree.map(jnp.zeros_like, params), block)
        return total

    sums = [block_sum(start.params, start.batch_stats, data.train_images, data.train_labels, block)
            for block in blocks]
    return jax.tree.map(lambda *parts: sum(parts), *sums)


@register
class Salun(RandomLabel):
    name = "salun"
    hparams_type = SalunHparams

    def prepare(self, hparams: SalunHparams, context: Context, start: StartingModel) -> Any:
        """The saliency mask: bool tree like the params, True on the ⌊N·r⌋ most salient entries."""
        order = np.random.default_rng([context.seed, MASK_STREAM]).permutation(context.split.forget)
        gradient = forget_gradient(start, batch_blocks(order, hparams.batch_size))
        return jax.jit(top_fraction_mask, static_argnums=1)(jax.tree.map(jnp.abs, gradient), hparams.mask_ratio)

    def optimizer(self, hparams: SalunHparams, steps_per_epoch: Sequence[int], aux):
        mask = (aux, {})  # the trainable pair (params, extra); SalUn has no extra parameters
        tx = masked_torch_sgd(mask, hparams.learning_rate, hparams.momentum, hparams.weight_decay)
        return tx, optax.constant_schedule(hparams.learning_rate)
