"""Boundary Unlearning (Chen et al., CVPR 2023): Boundary Shrink and Boundary Expanding.

Reference: the official code (TY-LEE-KR/Boundary-Unlearning-Code @86c2f1f, `boundary_unlearning.py`,
`adv_generator.py`, `models.py`); docs/baselines.md §2.8–2.9. Both train on the forget set only.

Boundary Shrink: for each forget batch the FROZEN original model (eval mode) finds a neighbour
x′ = Q(clip_[0,1](x + ε·sign ∇_x CE(f_o(x), y))) in [0,1] pixel space (Q rounds to multiples of 1/255); its
label ỹ = argmax f_o(x′) (ỹ = y when the attack fails) becomes the target of CE(f_θ(x), ỹ) on the CLEAN x.
`attack="pgd"` runs the official code's commented-out L∞-PGD instead (step 8/255, 5 iterations, no random
start); FGSM is the same projection with one step of size ε.

Boundary Expanding: a shadow class is appended to the classifier (on `feat`); all parameters and the shadow
row train on CE(logits′, C), every forget sample labelled as the shadow class. The shadow row lives in the
method's extra parameters, which the harness drops at the end: that is the official pruning back to C
outputs. (SalUn's port, `unlearn/boundary_ex.py`, never prunes and evaluates the (C+1)-way model.)

Deviations: batches arrive normalised by the dataset's true statistics and the attack converts them to pixel
space exactly (the official code normalises with mean = std = 0.5 but inverts CIFAR statistics with a
blue-mean typo, so its ε and clipping are not in true pixel units); Boundary Expanding runs the model in
train mode from its first step (the official code's first forward comes before `widen_model.train()`).
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import optax

from jaxunlearn.engine.epoch import Block
from jaxunlearn.engine.step import StepContext
from jaxunlearn.losses import sample_cross_entropy
from jaxunlearn.methods.base import Context, Method, SGDHparams, StartingModel, register, shuffled_blocks


@dataclasses.dataclass(frozen=True)
class BoundaryShrinkHparams(SGDHparams):
    """Official defaults (`boundary_shrink`): SGD lr 1e-5, momentum 0.9, no weight decay, 10 epochs over the
    forget set, batch 64; FGSM with bound ε = 0.1 in [0,1] pixel units. PGD (official, commented out):
    step 8/255, 5 iterations within the same bound."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 0.0
    bound: float = 0.1
    attack: Literal["fgsm", "pgd"] = "fgsm"
    pgd_step: float = 8 / 255
    pgd_iterations: int = 5


@dataclasses.dataclass(frozen=True)
class BoundaryExpandHparams(SGDHparams):
    """Official defaults (`boundary_expanding`): SGD lr 1e-5, momentum 0.9, no weight decay, 10 epochs over
    the forget set, batch 64."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 0.0


def project_to_pixels(pixels: jax.Array, natural: jax.Array, bound: float) -> jax.Array:
    """The official `clamper`: clip pixels [B,H,W,C] to the L∞ ball of radius `bound` around `natural`,
    then to [0, 1], then round to the 1/255 grid."""
    inside = natural + jnp.clip(pixels - natural, -bound, bound)
    return jnp.round(jnp.clip(inside, 0.0, 1.0) * 255.0) / 255.0


def linf_neighbours(logits_of: Callable[[jax.Array], jax.Array], images: jax.Array, labels: jax.Array,
                    mean: Sequence[float], std: Sequence[float], *, bound: float, step: float,
                    iterations: int) -> jax.Array:
    """Untargeted L∞ sign-gradient attack (FGSM: iterations=1, step=bound) on normalised images.

    logits_of: normalised images [B,H,W,C] → logits [B,C] (the frozen model). images: normalised [B,H,W,C];
    labels: int [B]. Returns the normalised neighbours [B,H,W,C], whose pixels lie on the 1/255 grid of
    [0, 1] within `bound` of the natural pixels. The summed CE has the sign of the official batch mean's
    gradient without its 1/B underflow.
    """
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    natural = images * std + mean

    def summed_ce(pixels):
        logits = logits_of((pixels - mean) / std)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum()

    def ascend(_, pixels):
        return project_to_pixels(pixels + step * jnp.sign(jax.grad(summed_ce)(pixels)), natural, bound)

    return (jax.lax.fori_loop(0, iterations, ascend, natural) - mean) / std


def _frozen_logits(step: StepContext, images: jax.Array) -> jax.Array:
    """Eval-mode logits of the frozen original held in `step.aux` = (params, batch_stats)."""
    params, batch_stats = step.aux
    return step.forward(params, batch_stats, images)[0]


def _forget_plan(batch_size: int, context: Context, epoch: int) -> list[Block]:
    """One shuffled pass over the forget set in `forget` batches (the official loader's inf_generator)."""
    return shuffled_blocks(context.split.forget, batch_size, context.rng(epoch), "forget")


@register
class BoundaryShrink(Method):
    name = "boundary_shrink"
    hparams_type = BoundaryShrinkHparams

    def plan(self, hparams: BoundaryShrinkHparams, context: Context, epoch: int):
        return _forget_plan(hparams.batch_size, context, epoch)

    def prepare(self, hparams: BoundaryShrinkHparams, context: Context, start: StartingModel):
        """The frozen original: (params, batch_stats)."""
        return start.params, start.batch_stats

    def loss_fn(self, hparams: BoundaryShrinkHparams, context: Context):
        if hparams.attack == "pgd":
            step_size, iterations = hparams.pgd_step, hparams.pgd_iterations
        else:
            step_size, iterations = hparams.bound, 1

        def loss(model, batch, step):
            images, labels = batch["forget"]
            frozen = lambda x: _frozen_logits(step, x)
            neighbours = jax.lax.stop_gradient(linf_neighbours(
                frozen, images, labels, context.mean, context.std,
                bound=hparams.bound, step=step_size, iterations=iterations))
            neighbour_labels = jnp.argmax(jax.lax.stop_gradient(frozen(neighbours)), axis=1)
            return step.cross_entropy(model, images, neighbour_labels), {
                "attack_success": step.mean((neighbour_labels != labels).astype(jnp.float32))}

        return loss


def shadow_init(key: jax.Array, feature_dim: int, num_classes: int) -> dict[str, jax.Array]:
    """The shadow class's row of a fresh Xavier-normal Linear(feature_dim, C+1) (official `init_params`):
    weight [feature_dim] ~ N(0, 2/(feature_dim + C + 1)), bias [] = 0."""
    std = (2.0 / (feature_dim + num_classes + 1)) ** 0.5
    return {"weight": std * jax.random.normal(key, (feature_dim,), jnp.float32), "bias": jnp.zeros((), jnp.float32)}


def widened_logits(logits: jax.Array, feat: jax.Array, shadow: dict[str, jax.Array]) -> jax.Array:
    """logits [B, C] and feat [B, D] of the model, shadow row {weight [D], bias []} → logits′ [B, C+1]."""
    return jnp.concatenate([logits, (feat @ shadow["weight"] + shadow["bias"])[:, None]], axis=1)


@register
class BoundaryExpand(Method):
    name = "boundary_expand"
    hparams_type = BoundaryExpandHparams

    def plan(self, hparams: BoundaryExpandHparams, context: Context, epoch: int):
        return _forget_plan(hparams.batch_size, context, epoch)

    def init_extra(self, hparams: BoundaryExpandHparams, context: Context, start: StartingModel):
        one_image = jax.ShapeDtypeStruct((1, *context.image_shape), jnp.float32)
        feature_dim = jax.eval_shape(start.forward, start.params, start.batch_stats, one_image)[1].shape[-1]
        return shadow_init(jax.random.key(context.seed), feature_dim, context.num_classes)

    def loss_fn(self, hparams: BoundaryExpandHparams, context: Context):
        shadow_class = context.num_classes

        def loss(model, batch, step):
            images, _ = batch["forget"]
            logits, feat = step.apply(model, images)
            wide = widened_logits(logits, feat, step.extra)
            shadow_rate = step.mean((jnp.argmax(wide, axis=1) == shadow_class).astype(jnp.float32))
            return step.mean(sample_cross_entropy(wide, jnp.full(images.shape[:1], shadow_class))), {
                "shadow_rate": shadow_rate}

        return loss
