"""ℓ1-sparse unlearning (Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023).

Fine-tuning on the retain set (`finetune`) with the loss CE + γ_e·‖θ‖₁, where ‖θ‖₁ is the unnormalised sum
of |θ| over ALL trainable parameters (convolutions, BatchNorm scale and bias, the classifier and the
projection head), and γ_e decays linearly per 0-based epoch e: γ·(1 − e/(E − E₀)) while e < E − E₀, then 0
(E₀ = `no_l1_epochs`). Reference: OPTML-Group/Unlearn-Sparse `unlearn/FT.py` (`FT_iter`, `with_l1`,
`l1_regularization`); docs/baselines.md §2.7. The penalty's gradient is γ·sign(θ), 0 at θ = 0
as PyTorch's, where `jax.grad(jnp.abs)(0.)` would be 1. Weight decay stays on and stacks with the penalty.
"""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.methods.base import Context, register
from jaxunlearn.methods.finetune import Finetune, FinetuneHparams


@dataclasses.dataclass(frozen=True)
class L1SparseHparams(FinetuneHparams):
    """FT's defaults (Sparse README: 10 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4 kept on,
    batch 256) plus γ = 1e-4, the value third-party run scripts of this code use: the README leaves γ unset
    and the parser default 0.2 is unusable (‖θ‖₁ of a trained ResNet-18 is ~1e4–1e5, so the penalty
    would dwarf CE). no_l1_epochs E₀ = 0 (parser default)."""

    gamma: float = 1e-4
    no_l1_epochs: int = 0


def l1_coefficient(gamma: float, epochs: int, no_l1_epochs: int, epoch: jax.Array) -> jax.Array:
    """γ_e for 0-based epoch(s) `epoch` (int array): γ·(1 − e/(E − E₀)) while e < E − E₀, else 0."""
    l1_epochs = epochs - no_l1_epochs
    return jnp.where(epoch < l1_epochs, gamma * (1 - epoch / max(l1_epochs, 1)), 0.0)


def l1_norm(params: nnx.State) -> jax.Array:
    """Σ|θ| over every leaf, written Σ θ·stop_gradient(sign θ) so its gradient is sign(θ): 0 at θ = 0."""
    return sum(jnp.sum(p * jax.lax.stop_gradient(jnp.sign(p))) for p in jax.tree.leaves(params))


@register
class L1Sparse(Finetune):
    name = "l1_sparse"
    hparams_type = L1SparseHparams

    def loss_fn(self, hparams: L1SparseHparams, context: Context):
        def loss(model, batch, step):
            ce = step.cross_entropy(model, *batch["retain"])
            coefficient = l1_coefficient(hparams.gamma, hparams.epochs, hparams.no_l1_epochs, step.epoch)
            norm = l1_norm(nnx.state(model, nnx.Param))
            return ce + coefficient * norm, {"cross_entropy": ce, "l1_norm": norm, "l1_coefficient": coefficient}

        return loss
