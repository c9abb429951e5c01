"""Loss functions: pure array functions, no models and no data.

`contrastive_unlearning_loss` is the contrastive term of Contrastive Unlearning (Lee et al., IJCAI 2025)
with the arithmetic of the official code's `Loss_v1`; docs/contrastive-unlearning.md §3 derives it.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import optax

Mode = Literal["class", "sample"]


def contrastive_unlearning_rows(
    u_feat: jax.Array,
    r_feat: jax.Array,
    u_labels: jax.Array,
    r_labels: jax.Array,
    *,
    temperature: float,
    mode: Mode,
    r_mask: jax.Array | None = None,
) -> jax.Array:
    """Per-anchor contrastive unlearning loss, official `Loss_v1` arithmetic.

    Args:
      u_feat: [B_u, D] embeddings of the forget (unlearning) samples, the anchors.
      r_feat: [B_r, D] embeddings of ALL retain samples the anchors are contrasted with.
      u_labels: [B_u] int labels of the anchors.
      r_labels: [B_r] int labels of the retain samples.
      temperature: τ (the official base temperature equals τ, so the τ/τ_b factor is 1).
      mode: "class" adds the official `single_class` +1 to the same-class denominator of an anchor
        that has no same-class retain sample; "sample" (`random_sample`) does not.
      r_mask: [B_r], 1 for a real retain sample and 0 for a padding slot, or None (all real). Padding
        columns are left out of S_i, D_i, the row maximum and the count B_r of the official weighting.

    Returns:
      [B_u] loss of each anchor: −Σ_j logprob_ij / |D_i| with
      logprob_ij = l_ij·[j ∈ D_i] − log Σ_{k ∈ S_i} exp(l_ik), l = s/τ − stop_grad(max_k s_ik/τ),
      where S_i (D_i) are the retain samples with the same (a different) label.

    Degenerate anchors contribute 0 and no gradient, where the official code gives −inf or NaN:
      - sample mode, S_i empty (nothing of its class to push away from): the official log P_i is log 0;
      - either mode, D_i empty (every retain sample shares its label): the official division by |D_i| = 0.
    The caller still averages over all B_u anchors, so every other anchor keeps its official weight.
    """
    if mode not in ("class", "sample"):
        raise ValueError(f"mode must be 'class' or 'sample', got {mode!r}")
    logits = u_feat @ r_feat.T / temperature
    if r_mask is None:
        real = jnp.ones(r_labels.shape, bool)
        row_max = logits.max(axis=1, keepdims=True)
    else:
        real = r_mask > 0
        row_max = jnp.max(jnp.where(real[None, :], logits, -jnp.inf), axis=1, keepdims=True)
    logits = logits - jax.lax.stop_gradient(row_max)
    exp_logits = jnp.exp(logits) + 1e-20
    same = (u_labels[:, None] == r_labels[None, :]) & real[None, :]
    num_same = same.sum(axis=1)
    num_diff = real.sum() - num_same
    same_mass = jnp.sum(exp_logits * same, axis=1)
    if mode == "class":
        same_mass = same_mass + (num_same == 0)
        valid = num_diff > 0
    else:
        valid = (num_same > 0) & (num_diff > 0)
    log_same_mass = jnp.log(jnp.where(valid, same_mass, 1.0))
    if r_mask is None:
        log_prob = jnp.where(same, 0.0, logits) - log_same_mass[:, None]
    else:
        log_prob = jnp.where(same | ~real[None, :], 0.0, logits - log_same_mass[:, None])
        log_prob = log_prob - jnp.where(same, log_same_mass[:, None], 0.0)
    rows = -jnp.sum(log_prob, axis=1) / jnp.maximum(num_diff, 1)
    return jnp.where(valid, rows, 0.0)


def contrastive_unlearning_loss(
    u_feat: jax.Array,
    r_feat: jax.Array,
    u_labels: jax.Array,
    r_labels: jax.Array,
    *,
    temperature: float,
    mode: Mode,
) -> jax.Array:
    """Contrastive unlearning loss L_CT: the mean over anchors of `contrastive_unlearning_rows`.

    Shapes: u_feat [B_u, D], r_feat [B_r, D], u_labels [B_u], r_labels [B_r] → scalar.
    Gradients flow into both embeddings, as in the official code.
    """
    rows = contrastive_unlearning_rows(
        u_feat, r_feat, u_labels, r_labels, temperature=temperature, mode=mode
    )
    return rows.mean()


def sample_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy of each sample. logits [B, C], labels [B] int → [B]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy. logits [B, C], labels [B] int → scalar."""
    return sample_cross_entropy(logits, labels).mean()
