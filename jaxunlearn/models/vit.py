"""SupConViT: a Vision Transformer for CIFAR-size images + the SupConResNet head and classifier.

ViT-small (Contrastive Unlearning's ViT experiments): patches of 4x4 pixels embedded by a conv with
kernel = stride = patch size, learned position embeddings, a class token (pool "cls") or the mean of the
patch tokens (pool "mean"), 12 pre-norm blocks x + MHSA(LN(x)), x + MLP(LN(x)) with GELU, and a final
LayerNorm. The pooled token goes through the same MLP head, feat = ReLU(l2_normalise(head)) and linear
classifier as `SupConResNet`. Images are NHWC.

Linear and conv layers get PyTorch's default init and LayerNorm PyTorch's eps 1e-5; the class token and
position embeddings are truncated-normal with std 0.02 (cut at 2σ), as in timm and DINO. There is no
dropout and no batch statistic, so all state is nnx.Param, and `train` and `mask` do not change the output.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.errors import UserError
from jaxunlearn.models.resnet import (
    LINEAR_KERNEL_INIT, DType, SupConHead, _linear, check_classifier, uniform_bias_init,
)

VIT_SMALL = {"dim": 384, "depth": 12, "heads": 6, "mlp_dim": 1536, "patch_size": 4}
"""ViT-small at width 1: token width, blocks, attention heads, MLP hidden width, patch side in pixels."""

LN_EPSILON = 1e-5
POOLS = ("cls", "mean")
EMBEDDING_INIT = jax.nn.initializers.truncated_normal(0.02)


def vit_widths(width: float) -> tuple[int, int]:
    """(dim, mlp_dim): 384 and 1536 times `width`; dim rounded to a multiple of the heads (at least one head)."""
    heads = VIT_SMALL["heads"]
    dim = heads * max(1, round(VIT_SMALL["dim"] * width / heads))
    return dim, max(1, round(VIT_SMALL["mlp_dim"] * width))


def _check_config(num_classes: int, in_channels: int, image_size: tuple[int, int], width: float, depth: int,
                  pool: str, feature_dim: int, patch_size: int) -> None:
    """Raise UserError (one line) for a configuration the model cannot be built with."""
    if not width > 0:
        raise UserError(f"width must be > 0 (1.0 = ViT-small, dim 384), got {width}")
    if depth < 1:
        raise UserError(f"depth must be >= 1 (ViT-small has 12 blocks), got {depth}")
    if pool not in POOLS:
        raise UserError(f"unknown pool {pool!r}; choose one of: {', '.join(POOLS)}")
    check_classifier(num_classes, in_channels, feature_dim)
    if patch_size < 1:
        raise UserError(f"patch_size must be >= 1, got {patch_size}")
    if len(image_size) != 2 or any(side < 1 or side % patch_size for side in image_size):
        raise UserError(f"`image_size` {tuple(image_size)} must be (H, W) with H and W multiples of the patch size"
                        f" {patch_size}")


def _layer_norm(dim: int, dtype: DType, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis; Flax computes its statistics and normalisation in float32 at any dtype."""
    return nnx.LayerNorm(dim, epsilon=LN_EPSILON, dtype=dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention, fused qkv projection. [B, T, dim] -> [B, T, dim].

    The softmax runs in float32 at any compute dtype (`jax.nn.dot_product_attention`).
    """

    def __init__(self, dim: int, heads: int, dtype: DType, *, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = _linear(dim, 3 * dim, rngs, dtype)
        self.out = _linear(dim, dim, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])
        return self.out(y.reshape(batch, tokens, dim))


class EncoderBlock(nnx.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)) with GELU. [B, T, dim] -> same.

    GELU is the tanh approximation (within 1e-3 of the exact erf form): jax 0.12 lowers erf through a
    polynomial primitive that `jax.shard_map`'s varying-axes check rejects inside the data-parallel step.
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int, dtype: DType, *, rngs: nnx.Rngs):
        self.attention_norm = _layer_norm(dim, dtype, rngs)
        self.attention = SelfAttention(dim, heads, dtype, rngs=rngs)
        self.mlp_norm = _layer_norm(dim, dtype, rngs)
        self.mlp_hidden = _linear(dim, mlp_dim, rngs, dtype)
        self.mlp_out = _linear(mlp_dim, dim, rngs, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp_out(nnx.gelu(self.mlp_hidden(self.mlp_norm(x)), approximate=True))


class ViTEncoder(nnx.Module):
    """Patch embedding + position embeddings + blocks + LayerNorm + pooling. [B, H, W, C] -> h [B, output_dim]."""

    def __init__(self, *, in_channels: int, image_size: tuple[int, int], width: float, depth: int, pool: str,
                 patch_size: int, dtype: DType, rngs: nnx.Rngs):
        dim, mlp_dim = vit_widths(width)
        fan_in = patch_size * patch_size * in_channels
        self.patch_embedding = nnx.Conv(
            in_channels, dim, (patch_size, patch_size), strides=patch_size, padding="VALID",
            kernel_init=LINEAR_KERNEL_INIT, bias_init=uniform_bias_init(fan_in), dtype=dtype, rngs=rngs,
        )
        self.pool = pool
        num_tokens = (image_size[0] // patch_size) * (image_size[1] // patch_size) + (pool == "cls")
        self.class_token = nnx.Param(EMBEDDING_INIT(rngs.params(), (1, 1, dim))) if pool == "cls" else None
        self.position_embedding = nnx.Param(EMBEDDING_INIT(rngs.params(), (1, num_tokens, dim)))
        self.blocks = nnx.List(
            [EncoderBlock(dim, VIT_SMALL["heads"], mlp_dim, dtype, rngs=rngs) for _ in range(depth)])
        self.norm = _layer_norm(dim, dtype, rngs)
        self.output_dim = dim

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.patch_embedding(x)
        y = y.reshape(y.shape[0], -1, y.shape[-1])
        if self.class_token is not None:
            class_token = jnp.broadcast_to(self.class_token[...].astype(y.dtype), (y.shape[0], 1, y.shape[-1]))
            y = jnp.concatenate([class_token, y], axis=1)
        y = y + self.position_embedding[...].astype(y.dtype)
        for block in self.blocks:
            y = block(y)
        y = self.norm(y)
        return y[:, 0] if self.pool == "cls" else jnp.mean(y, axis=1)


class SupConViT(SupConHead):
    """ViT encoder -> MLP head -> feat = ReLU(L2-normalise) -> linear classifier on feat.

    All state is nnx.Param. dtype is the compute dtype of the encoder and the MLP head (jnp.bfloat16 for
    mixed precision); parameters, LayerNorm statistics, the attention softmax, feat and the classifier stay
    float32. width scales dim 384 and MLP width 1536; depth None means 12 blocks.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int,
        image_size: tuple[int, int],
        width: float = 1.0,
        depth: int | None = None,
        pool: str = "cls",
        feature_dim: int = 128,
        patch_size: int = VIT_SMALL["patch_size"],
        dtype: DType = jnp.float32,
        rngs: nnx.Rngs,
    ):
        depth = VIT_SMALL["depth"] if depth is None else depth
        _check_config(num_classes, in_channels, image_size, width, depth, pool, feature_dim, patch_size)
        self.encoder = ViTEncoder(in_channels=in_channels, image_size=image_size, width=width, depth=depth,
                                  pool=pool, patch_size=patch_size, dtype=dtype, rngs=rngs)
        self._init_head(self.encoder.output_dim, feature_dim, num_classes, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None, keys: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """x: float [B, H, W, C] (already normalised, (H, W) = image_size) -> (logits [B, num_classes] float32,
        feat [B, feature_dim] float32).

        mask ([B], 1 real, 0 padding) is accepted for the model interface and ignored: without batch
        statistics, padding slots affect no sample. keys: [B] PRNG keys for the head's dropout (training mode).
        """
        del mask
        return self._head(self.encoder(x), train, keys)
