"""Bad Teacher (Chundawat et al., AAAI 2023): distil from a competent and an incompetent teacher.

Reference: vikram2000b/bad-teaching-unlearning @f1aa988, `unlearn.py: UnlearnerLoss`,
`dataset.py: UnLearningData`, defaults of `CIFARSuper20_Rocket_Unlearn.ipynb`;
docs/baselines.md §2.12.

The student starts at the original model (train mode). The competent teacher is the original, the
incompetent one a random initialisation of the same architecture; both frozen, in eval mode. One epoch is a
shuffled pass over the forget set (flag 1) and a random `retain_fraction` of the retain set (flag 0, drawn
once per run, as the notebook does). Each sample's target is the incompetent teacher's softmax(·/τ) if
flagged, else the competent one's; the loss is PyTorch's `kl_div(log_softmax(student/τ), target)` with its
default 'mean' reduction: the double sum divided by B·C, with no τ² factor.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxunlearn.config import Hparams
from jaxunlearn.errors import UserError
from jaxunlearn.methods.base import Context, Method, StartingModel, mixed_blocks, register


@dataclasses.dataclass(frozen=True)
class BadTeacherHparams(Hparams):
    """Notebook defaults: Adam lr 1e-4 (PyTorch betas and eps), 1 epoch, τ = 1, batch 256, a random 30 % of
    the retain set."""

    epochs: int = 1
    batch_size: int = 256
    learning_rate: float = 1e-4
    temperature: float = 1.0
    retain_fraction: float = 0.3

    def validate(self) -> None:
        super().validate()
        if not 0.0 <= self.retain_fraction <= 1.0:
            raise UserError(f"retain_fraction must be in [0, 1], got {self.retain_fraction}")


def bad_teacher_terms(student_logits: jax.Array, competent_logits: jax.Array, incompetent_logits: jax.Array,
                      forget_flag: jax.Array, temperature: float) -> jax.Array:
    """The terms p_ic·[log p_ic − log softmax(z_s,i/τ)_c] [B, C], p_i = softmax(T_i/τ) if flag_i else
    softmax(T_c/τ); their mean over B and C is the official loss (KLDivLoss, reduction "mean").

    student_logits, competent_logits, incompetent_logits: [B, C]; forget_flag: int [B] (1 = forget sample).
    0·log 0 counts as 0, as in PyTorch.
    """
    target = jnp.where(forget_flag[:, None] == 1, jax.nn.softmax(incompetent_logits / temperature, axis=1),
                       jax.nn.softmax(competent_logits / temperature, axis=1))
    log_student = jax.nn.log_softmax(student_logits / temperature, axis=1)
    return jax.scipy.special.xlogy(target, target) - target * log_student


def retain_sample(retain: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """The ⌊fraction·|retain|⌋ retain indices of the run, drawn without replacement once per seed."""
    return np.random.default_rng([seed]).choice(retain, size=int(fraction * len(retain)), replace=False)


@register
class BadTeacher(Method):
    name = "bad_teacher"
    hparams_type = BadTeacherHparams

    def optimizer(self, hparams: BadTeacherHparams, steps_per_epoch, aux):
        return optax.adam(hparams.learning_rate), optax.constant_schedule(hparams.learning_rate)

    def plan(self, hparams: BadTeacherHparams, context: Context, epoch: int):
        """Columns "train" (indices) and "forget_flag" (1 forget, 0 retain), shuffled together."""
        forget = context.split.forget
        retain = retain_sample(context.split.retain, hparams.retain_fraction, context.seed)
        columns = {"train": np.concatenate([forget, retain]),
                   "forget_flag": np.concatenate([np.ones(len(forget), np.int32), np.zeros(len(retain), np.int32)])}
        return mixed_blocks(columns, hparams.batch_size, context.rng(epoch))

    def prepare(self, hparams: BadTeacherHparams, context: Context, start: StartingModel):
        """The competent (original) and incompetent (random) teachers' (params, batch_stats)."""
        return {"competent": (start.params, start.batch_stats), "incompetent": start.fresh()}

    def loss_fn(self, hparams: BadTeacherHparams, context: Context):
        def loss(model, batch, step):
            images, _ = batch["train"]
            flag = step.columns["forget_flag"]
            competent = step.forward(*step.aux["competent"], images)[0]
            incompetent = step.forward(*step.aux["incompetent"], images)[0]
            logits, _ = step.apply(model, images)
            terms = bad_teacher_terms(logits, jax.lax.stop_gradient(competent), jax.lax.stop_gradient(incompetent),
                                      flag, hparams.temperature)
            return step.mean(terms), {"forget_fraction": step.mean(flag.astype(jnp.float32))}

        return loss
