"""Contrastive Unlearning (Lee et al., IJCAI 2025), as the official code runs it.

Each forget batch is used for ω consecutive steps, each with another retain batch of the same size, in one
joint forward (BatchNorm in train mode over both). The loss is λ_UL·L_CT + λ_CE·CE(retain), with L_CT from
`jaxunlearn.losses.contrastive_unlearning_loss`. docs/contrastive-unlearning.md §4 has the procedure.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn.config import Hparams, TrainConfig
from jaxunlearn.engine.parallel import DATA_AXIS
from jaxunlearn.engine.step import LossFn
from jaxunlearn.errors import UserError
from jaxunlearn.losses import contrastive_unlearning_rows, sample_cross_entropy
from jaxunlearn.methods.base import Context, Method, batch_blocks, register


@dataclasses.dataclass(frozen=True)
class ContrastiveHparams(Hparams):
    """Official defaults. batch_size is B_u = B_r (64 for class, 128 for sample forgetting).

    epochs caps the run; it normally ends earlier by the termination rule.
    """

    batch_size: int
    temperature: float = 0.7
    lambda_ul: float = 3.0
    lambda_ce: float = 1.0
    retain_per_forget: int = 4
    learning_rate: float = 1e-3
    momentum: float = 0.9
    epochs: int = 30


@register
class Contrastive(Method):
    name = "contrastive"
    hparams_type = ContrastiveHparams
    stops_early = True

    def default_hparams(self, mode: str, original: TrainConfig) -> ContrastiveHparams:
        return ContrastiveHparams(batch_size=64 if mode == "class" else 128)

    def optimizer(self, hparams: ContrastiveHparams, steps_per_epoch, aux):
        return optax.sgd(hparams.learning_rate, momentum=hparams.momentum), optax.constant_schedule(
            hparams.learning_rate
        )

    def plan(self, hparams: ContrastiveHparams, context: Context, epoch: int):
        """Forget batches in index order, each repeated ω times beside a retain batch of its size.

        default pairing: retain samples drawn uniformly with replacement, fresh each step (the official
        code's intended sampler); official pairing: every forget batch meets the same first ω·B retain
        samples in order, truncated to its size (what the released code does).
        """
        omega, size = hparams.retain_per_forget, hparams.batch_size
        retain = context.split.retain
        if context.pairing == "official" and len(retain) < omega * size:
            raise UserError(
                f"the official pairing needs {omega * size} retain samples, the split has {len(retain)}"
            )
        rng = context.rng(epoch)
        blocks = []
        for forget_batches in batch_blocks(context.split.forget, size):
            count, width = forget_batches.shape
            if context.pairing == "official":
                fixed = retain[: omega * size].reshape(omega, size)[:, :width]
                retain_batches = np.tile(fixed, (count, 1))
            else:
                retain_batches = rng.choice(retain, size=(count * omega, width), replace=True)
            blocks.append({
                "forget": np.repeat(forget_batches, omega, axis=0),
                "retain": retain_batches.astype(np.int32),
            })
        return blocks

    def loss_fn(self, hparams: ContrastiveHparams, context: Context):
        return contrastive_objective(hparams, context.mode)

    def should_stop(self, evaluation: dict[str, float], context: Context) -> bool:
        """The official rule: class: forget-class test accuracy ≤ 1/C; sample: forget accuracy ≤ test accuracy.
        When the original holds out a validation set it reads that instead of the test set (the official code
        has no other held-out images), so that a run reads no test image before it is evaluated."""
        held_out = lambda part: evaluation.get(part.replace("test", "validation"), evaluation[part])
        if context.mode == "class":
            return held_out("forget_test_acc") <= 1.0 / context.num_classes
        return evaluation["forget_train_acc"] <= held_out("test_acc")


def contrastive_objective(hparams: ContrastiveHparams, mode: str) -> LossFn:
    """CU's step loss λ_UL·L_CT + λ_CE·CE(retain) on a batch {"forget": (x, y), "retain": (x, y)} of equal
    sizes, for "class" or "sample" forgetting: a `LossFn` for `jaxunlearn.engine.step.make_step`."""
    if mode not in ("class", "sample"):
        raise UserError(f"mode must be class or sample, got {mode!r}")

    def loss(model, batch, step):
        (forget_x, forget_y), (retain_x, retain_y) = batch["forget"], batch["retain"]
        # Forget and retain batches are padded alike: one mask for both halves of the joint forward.
        logits, feat = step.apply(model, jnp.concatenate([forget_x, retain_x]), repeat=2)
        n_forget = forget_x.shape[0]
        # Each device's anchors meet the retain samples of the whole global batch.
        gather = lambda x: jax.lax.all_gather(x, DATA_AXIS, tiled=True)
        rows = contrastive_unlearning_rows(
            feat[:n_forget], gather(feat[n_forget:]), forget_y, gather(retain_y),
            temperature=hparams.temperature, mode=mode,
            r_mask=None if step.mask is None else gather(step.mask),
        )
        contrastive = step.mean(rows)
        ce = step.mean(sample_cross_entropy(logits[n_forget:], retain_y))
        total = hparams.lambda_ul * contrastive + hparams.lambda_ce * ce
        return total, {"contrastive": contrastive, "cross_entropy": ce}

    return loss
