"""UNSIR (Tarun et al., TNNLS 2023): error-maximising noise, then impair and repair. Class forgetting only.

Reference: the official notebook, vikram2000b/Fast-Machine-Unlearning @fc217ce `Machine Unlearning.ipynb`;
docs/baselines.md §2.11.

1. Noise (`prepare`): for each forget class c, N_c ∈ R^{B_noise×H×W×C} in normalised input space, drawn
   from N(0, 1) and never clipped, minimises −CE(f_o(N_c), c) + λ·mean_i ‖N_c,i‖² by Adam (lr 0.1, 40 steps).
2. Impair (the first `impair_epochs` epochs): a shuffled pass over K copies of every N_c labelled c mixed
   with the retain subset (the first `retain_per_class` training images of each retained class), CE, train
   mode, Adam lr 0.02.
3. Repair (the remaining epochs): shuffled passes over the retain subset, Adam lr 0.01 with a fresh state.

The plan encodes noise rows with a "noise" column (flat index into the noise, −1 for a real image) beside
the "retain" column; the loss swaps those rows for the noise and their labels for c.

Deviations from the notebook:
- the noise is learned with the original model in eval mode; the notebook's freshly built model is in
  train mode, so its noise batches also overwrite the BatchNorm running statistics;
- noise of class c is labelled c; the notebook labels every class's noise with a constant `class_num = 0`;
- each copy adds the whole noise batch (K·B_noise samples per class, 5,120 by default, as the paper and
  baselines.md describe); the notebook's inner loop runs over `batch[0].size(0)` (the 3 channels), so it
  adds only the first 3 noise images per copy.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn.config import Hparams
from jaxunlearn.errors import UserError
from jaxunlearn.losses import cross_entropy
from jaxunlearn.methods.base import Context, Method, Schedule, StartingModel, mixed_blocks, register, shuffled_blocks


@dataclasses.dataclass(frozen=True)
class UnsirHparams(Hparams):
    """Notebook defaults: noise batch 256, Adam lr 0.1 for 40 (5 × 8) steps, λ 0.1; K = 20 copies; 1,000
    retain images per class; impair 1 epoch at Adam lr 0.02 (`learning_rate`), repair 1 epoch at Adam lr
    0.01; batch 256. epochs counts impair and repair epochs together."""

    epochs: int = 2
    batch_size: int = 256
    impair_epochs: int = 1
    learning_rate: float = 0.02
    repair_learning_rate: float = 0.01
    noise_batch: int = 256
    noise_copies: int = 20
    noise_steps: int = 40
    noise_learning_rate: float = 0.1
    noise_l2: float = 0.1
    retain_per_class: int = 1000

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.impair_epochs <= self.epochs:
            raise UserError(f"impair_epochs must be between 1 and epochs ({self.epochs}), got {self.impair_epochs}")
        for name in ("noise_batch", "noise_copies", "retain_per_class"):
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be at least 1, got {getattr(self, name)}")


def learn_noise(logits_of: Callable[[jax.Array], jax.Array], key: jax.Array, shape: tuple[int, ...],
                label: jax.Array, *, steps: int, learning_rate: float, l2: float) -> jax.Array:
    """Error-maximising noise [B, H, W, C] for class `label` (int []): from N(0, 1), `steps` Adam steps on
    −CE(logits_of(N), label) + l2·mean_i ‖N_i‖². logits_of: images [B, H, W, C] → logits [B, classes]."""
    adam = optax.adam(learning_rate)
    labels = jnp.full(shape[:1], label)

    def objective(noise):
        penalty = jnp.mean(jnp.sum(jnp.square(noise), axis=tuple(range(1, noise.ndim))))
        return -cross_entropy(logits_of(noise), labels) + l2 * penalty

    def adam_step(carry, _):
        noise, state = carry
        updates, state = adam.update(jax.grad(objective)(noise), state)
        return (optax.apply_updates(noise, updates), state), None

    noise = jax.random.normal(key, shape, jnp.float32)
    (noise, _), _ = jax.lax.scan(adam_step, (noise, adam.init(noise)), length=steps)
    return noise


def retain_subset(context: Context, per_class: int) -> np.ndarray:
    """The first `per_class` retain indices (in index order) of every class that is not forgotten."""
    retain = context.split.retain
    labels = context.train_labels[retain]
    kept = [retain[labels == c][:per_class] for c in range(context.num_classes) if c not in context.split.spec.classes]
    return np.concatenate(kept)


def impair_columns(hparams: UnsirHparams, context: Context) -> dict[str, np.ndarray]:
    """Rows of the impair epoch: K copies of every noise image (column "noise" = flat noise index, "retain" a
    placeholder) and the retain subset (column "noise" = −1)."""
    subset = retain_subset(context, hparams.retain_per_class)
    noise = np.tile(np.arange(len(context.split.spec.classes) * hparams.noise_batch), hparams.noise_copies)
    return {"retain": np.concatenate([subset, np.full(len(noise), subset[0])]),
            "noise": np.concatenate([np.full(len(subset), -1), noise])}


class RestartState(NamedTuple):
    """State of `restart_at`: updates taken so far (int32 []) and the inner transformation's state."""

    count: jax.Array
    inner: optax.OptState


def restart_at(inner: optax.GradientTransformation, step: int) -> optax.GradientTransformation:
    """`inner` whose state is re-initialised just before update number `step` (0-based), as if a new
    optimizer were created there (the repair phase's fresh Adam)."""
    def init(params):
        return RestartState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        fresh = inner.init(updates if params is None else params)
        restart = state.count == step
        inner_state = jax.tree.map(lambda new, old: jnp.where(restart, new, old), fresh, state.inner)
        updates, inner_state = inner.update(updates, inner_state, params)
        return updates, RestartState(state.count + 1, inner_state)

    return optax.GradientTransformation(init, update)


def unsir_optimizer(hparams: UnsirHparams, steps_per_epoch: Sequence[int]
                    ) -> tuple[optax.GradientTransformation, Schedule]:
    """PyTorch Adam (betas 0.9/0.999, eps 1e-8) at `learning_rate` for the impair steps, then a fresh Adam at
    `repair_learning_rate` (the notebook builds a new optimizer for the repair)."""
    repair_start = int(sum(steps_per_epoch[:hparams.impair_epochs]))

    def schedule(step):
        return jnp.where(step < repair_start, hparams.learning_rate, hparams.repair_learning_rate)

    adam = restart_at(optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8), repair_start)
    return optax.chain(adam, optax.scale_by_learning_rate(schedule)), schedule


@register
class Unsir(Method):
    name = "unsir"
    hparams_type = UnsirHparams
    modes = ("class",)


    def optimizer(self, hparams: UnsirHparams, steps_per_epoch, aux):
        return unsir_optimizer(hparams, steps_per_epoch)

    def plan(self, hparams: UnsirHparams, context: Context, epoch: int):
        rng = context.rng(epoch)
        if epoch < hparams.impair_epochs:
            return mixed_blocks(impair_columns(hparams, context), hparams.batch_size, rng)
        return shuffled_blocks(retain_subset(context, hparams.retain_per_class), hparams.batch_size, rng, "retain")

    def prepare(self, hparams: UnsirHparams, context: Context, start: StartingModel):
        """The learned noise of every forget class: {"images": [n·B_noise, H, W, C], "labels": [n·B_noise]}."""
        classes = jnp.asarray(context.split.spec.classes, jnp.int32)
        shape = (hparams.noise_batch, *context.image_shape)
        keys = jax.vmap(lambda c: jax.random.fold_in(jax.random.key(context.seed), c))(classes)

        @jax.jit
        def all_noise(params, batch_stats, keys, classes):
            def one_class(key, label):
                return learn_noise(lambda x: start.forward(params, batch_stats, x)[0], key, shape, label,
                                   steps=hparams.noise_steps, learning_rate=hparams.noise_learning_rate,
                                   l2=hparams.noise_l2)
            return jax.vmap(one_class)(keys, classes)

        noise = all_noise(start.params, start.batch_stats, keys, classes)
        return {"images": noise.reshape(-1, *context.image_shape),
                "labels": jnp.repeat(classes, hparams.noise_batch)}

    def loss_fn(self, hparams: UnsirHparams, context: Context):
        def loss(model, batch, step):
            images, labels = batch["retain"]
            noise_fraction = jnp.float32(0.0)
            if "noise" in step.columns:  # an impair block: swap the noise rows in
                index = step.columns["noise"]
                is_noise = index >= 0
                safe = jnp.maximum(index, 0)
                images = jnp.where(is_noise[:, None, None, None], step.aux["images"][safe], images)
                labels = jnp.where(is_noise, step.aux["labels"][safe], labels)
                noise_fraction = step.mean(is_noise.astype(jnp.float32))
            return step.cross_entropy(model, images, labels), {"noise_fraction": noise_fraction}

        return loss
