"""SCRUB (Kurmanji et al., NeurIPS 2023), as the official code runs it.

Reference: meghdadk/SCRUB @98ffb11, `large_scale_unlearning.ipynb` (defaults),
`thirdparty/repdistiller/helper/loops.py: train_distill`, `distiller_zoo/KD.py: DistillKL`,
`helper/util.py: adjust_learning_rate`; docs/baselines.md §2.10.

The student starts at the original model and trains in train mode; the teacher is the frozen original in
eval mode. Epoch e = 1…E runs at lr_e = lr₀·r^{#{d ∈ decay_epochs : e > d}}; if e ≤ msteps it first makes a
max pass over the forget set on −KL_T(teacher‖student), then a min pass over the retain set on
γ·CE + α·KL_T. One SGD optimizer (momentum, coupled weight decay) serves both passes, so they share the
momentum buffer. The `kd` distillation has β = 0, so its third term is omitted.

Not implemented: SCRUB+R rewinding (choosing the epoch whose forget error is closest to held-out error);
this runs plain SCRUB.
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn.config import Hparams
from jaxunlearn.errors import UserError
from jaxunlearn.losses import sample_cross_entropy
from jaxunlearn.methods.base import Context, Method, Schedule, StartingModel, register, shuffled_blocks, torch_sgd


@dataclasses.dataclass(frozen=True)
class ScrubHparams(Hparams):
    """Defaults of the CIFAR-10 large-scale notebook: γ 0.99, α 0.001, T 4, msteps 2, 3 epochs, SGD lr 5e-4,
    momentum 0.9, weight decay 5e-4, lr ×0.1 after epochs 3, 5, 9 (never fires in 3 epochs), batch 256
    (retain) / 512 (forget).

    lr_decay_epochs: comma-separated epoch numbers, e.g. "3,5,9" ("" for none).
    """

    epochs: int = 3
    batch_size: int = 256
    forget_batch_size: int = 512
    learning_rate: float = 5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.99
    alpha: float = 0.001
    temperature: float = 4.0
    msteps: int = 2
    lr_decay_epochs: str = "3,5,9"
    lr_decay_rate: float = 0.1

    def validate(self) -> None:
        super().validate()
        parse_epochs(self.lr_decay_epochs)
        if self.forget_batch_size < 1:
            raise UserError(f"forget_batch_size must be at least 1, got {self.forget_batch_size}")

    @property
    def decay_epochs(self) -> tuple[int, ...]:
        return parse_epochs(self.lr_decay_epochs)


def parse_epochs(text: str) -> tuple[int, ...]:
    """"3,5,9" → (3, 5, 9); "" → (); anything else raises UserError."""
    try:
        epochs = tuple(int(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise UserError(f"lr_decay_epochs must be comma-separated integers, got {text!r}") from None
    if any(epoch < 0 for epoch in epochs):
        raise UserError(f"lr_decay_epochs must be epochs >= 0, got {text!r}")
    return epochs


def sample_distill_kl(teacher_logits: jax.Array, student_logits: jax.Array, temperature: float) -> jax.Array:
    """Σ_c p_T(z_t)_ic·[log p_T(z_t)_ic − log p_T(z_s)_ic] of each sample: teacher_logits, student_logits
    [B, C] → [B]. RepDistiller's DistillKL is T² times its batch mean."""
    log_teacher = jax.nn.log_softmax(teacher_logits / temperature, axis=1)
    log_student = jax.nn.log_softmax(student_logits / temperature, axis=1)
    return jnp.sum(jnp.exp(log_teacher) * (log_teacher - log_student), axis=1)


def runs_max_pass(epoch: int, msteps: int) -> bool:
    """Whether 1-based `epoch` starts with a max pass over the forget set (e ≤ msteps)."""
    return epoch <= msteps


def epoch_learning_rate(hparams: ScrubHparams, epoch: int) -> float:
    """lr of 1-based `epoch`: lr₀·r^{#{d : epoch > d}} (adjust_learning_rate's strict '>')."""
    decays = sum(epoch > milestone for milestone in hparams.decay_epochs)
    return hparams.learning_rate * hparams.lr_decay_rate**decays


def scrub_schedule(hparams: ScrubHparams, steps_per_epoch: Sequence[int]) -> Schedule:
    """optimizer step (0-based, int array) → lr of its epoch; epochs have different lengths (max passes)."""
    epoch_ends = np.cumsum(steps_per_epoch)
    rates = np.array([epoch_learning_rate(hparams, e + 1) for e in range(len(steps_per_epoch))], np.float32)

    def schedule(step):
        epoch = jnp.minimum(jnp.searchsorted(epoch_ends, step, side="right"), len(rates) - 1)
        return jnp.asarray(rates)[epoch]

    return schedule


@register
class Scrub(Method):
    name = "scrub"
    hparams_type = ScrubHparams

    def optimizer(self, hparams: ScrubHparams, steps_per_epoch, aux):
        schedule = scrub_schedule(hparams, steps_per_epoch)
        return torch_sgd(schedule, hparams.momentum, hparams.weight_decay), schedule

    def plan(self, hparams: ScrubHparams, context: Context, epoch: int):
        """Epoch `epoch` (0-based): a shuffled max pass over the forget set if epoch + 1 ≤ msteps, then a
        shuffled min pass over the retain set."""
        rng = context.rng(epoch)
        blocks = []
        if runs_max_pass(epoch + 1, hparams.msteps):
            blocks += shuffled_blocks(context.split.forget, hparams.forget_batch_size, rng, "forget")
        return blocks + shuffled_blocks(context.split.retain, hparams.batch_size, rng, "retain")

    def prepare(self, hparams: ScrubHparams, context: Context, start: StartingModel):
        """The teacher: the frozen original (params, batch_stats)."""
        return start.params, start.batch_stats

    def loss_fn(self, hparams: ScrubHparams, context: Context):
        """Max step: −KL_T on a forget batch; min step: γ·CE + α·KL_T on a retain batch.

        Parts (every step): kl (KL_T of the step's batch), cross_entropy (the student's CE on the batch's
        labels; monitored only on max steps), max_step (1 on max steps, 0 on min steps).
        """
        def loss(model, batch, step):
            is_max_step = "forget" in batch
            images, labels = batch["forget" if is_max_step else "retain"]
            logits, _ = step.apply(model, images)
            teacher_params, teacher_stats = step.aux
            teacher_logits = jax.lax.stop_gradient(step.forward(teacher_params, teacher_stats, images)[0])
            kl = hparams.temperature**2 * step.mean(sample_distill_kl(teacher_logits, logits, hparams.temperature))
            ce = step.mean(sample_cross_entropy(logits, labels))
            total = -kl if is_max_step else hparams.gamma * ce + hparams.alpha * kl
            return total, {"kl": kl, "cross_entropy": ce, "max_step": jnp.float32(is_max_step)}

        return loss
