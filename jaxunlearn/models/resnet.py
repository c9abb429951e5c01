"""SupConResNet: the CIFAR ResNet + projection head + classifier of Contrastive Unlearning.

Layout and initialisation follow the official code (spec §2): a CIFAR stem (3x3 conv, no
max-pool), four stages of 64/128/256/512 planes (times `width`) with strides 1/2/2/2, global
average pooling, an MLP head to `feature_dim`, and `feat = ReLU(l2_normalise(head))`, on which
the linear classifier sits. Images are NHWC.

Train/eval mode is the call argument `train` (never module attributes), so the model works when
re-merged from `nnx.split(model, nnx.Param, nnx.BatchStat)` inside pure functions.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.errors import UserError
from jaxunlearn.models.batch_norm import MaskedBatchNorm
from jaxunlearn.models.conv import ResNetConv

DType = type[jnp.floating] | jnp.dtype | None
"""A compute dtype (jnp.bfloat16); None computes in the dtype of the inputs and parameters."""

# PyTorch kaiming_normal_(mode="fan_out", nonlinearity="relu"): untruncated N(0, 2 / (k*k*out)).
CONV_KERNEL_INIT = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch nn.Linear default weight: U(±1/sqrt(fan_in)).
LINEAR_KERNEL_INIT = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# PyTorch BN momentum 0.1 == flax momentum 0.9.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
STAGE_PLANES = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


def accumulation_dtype(dtype: DType) -> DType:
    """float32 accumulation for the products of a 16-bit compute dtype (a sum of B·H·W bfloat16 terms kept in
    bfloat16 loses most of a filter gradient); None (the inputs' dtype) otherwise."""
    return jnp.float32 if dtype is not None and jnp.dtype(dtype).itemsize < 4 else None


def uniform_bias_init(fan_in: int) -> jax.nn.initializers.Initializer:
    """PyTorch nn.Linear default bias: U(±1/sqrt(fan_in))."""
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int, dtype: DType, rngs: nnx.Rngs
          ) -> ResNetConv:
    """Bias-free conv padded like PyTorch (k // 2 on every side: pad 1 for 3x3, 0 for 1x1).

    Not "SAME": with stride 2 on even sizes, SAME pads only the bottom/right, which shifts the
    sampling grid by one pixel relative to PyTorch and to the 1x1 shortcut.
    """
    pad = kernel_size // 2
    return ResNetConv(
        in_channels,
        out_channels,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=CONV_KERNEL_INIT,
        dtype=dtype,
        preferred_element_type=accumulation_dtype(dtype),
        rngs=rngs,
    )


def _batch_norm(channels: int, axis_name: str | None, dtype: DType, rngs: nnx.Rngs) -> MaskedBatchNorm:
    return MaskedBatchNorm(channels, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, axis_name=axis_name, dtype=dtype,
                           rngs=rngs)


def _linear(in_features: int, out_features: int, rngs: nnx.Rngs, dtype: DType = None) -> nnx.Linear:
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=LINEAR_KERNEL_INIT,
        bias_init=uniform_bias_init(in_features),
        dtype=dtype,
        preferred_element_type=accumulation_dtype(dtype),
        rngs=rngs,
    )


class Shortcut(nnx.Module):
    """Projection shortcut: 1x1 conv (stride s) + BN. [B, H, W, C_in] -> [B, H/s, W/s, C_out]."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, bn_axis_name: str | None, dtype: DType, *,
                 rngs: nnx.Rngs):
        self.conv = _conv(in_channels, out_channels, 1, stride, dtype, rngs)
        self.bn = _batch_norm(out_channels, bn_axis_name, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        return self.bn(self.conv(x), use_running_average=not train, mask=mask)


def _shortcut(in_channels: int, out_channels: int, stride: int, bn_axis_name: str | None,
              dtype: DType, rngs: nnx.Rngs) -> "Shortcut | None":
    """A block's projection shortcut where the block changes the shape, else None (the identity)."""
    if stride == 1 and in_channels == out_channels:
        return None
    return Shortcut(in_channels, out_channels, stride, bn_axis_name, dtype, rngs=rngs)


class BasicBlock(nnx.Module):
    """3x3 -> 3x3 residual block. [B, H, W, C_in] -> [B, H/s, W/s, planes]."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int, bn_axis_name: str | None, dtype: DType, *,
                 rngs: nnx.Rngs):
        out_channels = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 3, stride, dtype, rngs)
        self.bn1 = _batch_norm(planes, bn_axis_name, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, 1, dtype, rngs)
        self.bn2 = _batch_norm(planes, bn_axis_name, dtype, rngs)
        self.shortcut = _shortcut(in_channels, out_channels, stride, bn_axis_name, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train, mask=mask))
        y = self.bn2(self.conv2(y), use_running_average=not train, mask=mask)
        residual = x if self.shortcut is None else self.shortcut(x, train=train, mask=mask)
        return nnx.relu(y + residual)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 (stride s) -> 1x1·4 residual block. [B, H, W, C_in] -> [B, H/s, W/s, 4·planes]."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, bn_axis_name: str | None, dtype: DType, *,
                 rngs: nnx.Rngs):
        out_channels = planes * self.expansion
        self.conv1 = _conv(in_channels, planes, 1, 1, dtype, rngs)
        self.bn1 = _batch_norm(planes, bn_axis_name, dtype, rngs)
        self.conv2 = _conv(planes, planes, 3, stride, dtype, rngs)
        self.bn2 = _batch_norm(planes, bn_axis_name, dtype, rngs)
        self.conv3 = _conv(planes, out_channels, 1, 1, dtype, rngs)
        self.bn3 = _batch_norm(out_channels, bn_axis_name, dtype, rngs)
        self.shortcut = _shortcut(in_channels, out_channels, stride, bn_axis_name, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x), use_running_average=not train, mask=mask))
        y = nnx.relu(self.bn2(self.conv2(y), use_running_average=not train, mask=mask))
        y = self.bn3(self.conv3(y), use_running_average=not train, mask=mask)
        residual = x if self.shortcut is None else self.shortcut(x, train=train, mask=mask)
        return nnx.relu(y + residual)


Block = type[BasicBlock] | type[Bottleneck]

ARCHITECTURES: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def stage_planes(width: float) -> tuple[int, ...]:
    """Planes of the four stages, 64/128/256/512 times `width`, rounded to int."""
    return tuple(int(round(planes * width)) for planes in STAGE_PLANES)


def check_classifier(num_classes: int, in_channels: int, feature_dim: int) -> None:
    """UserError (one line) for class, channel and embedding counts no SupCon model can be built with."""
    if num_classes < 2:
        raise UserError(f"num_classes must be >= 2, got {num_classes}")
    if in_channels < 1:
        raise UserError(f"in_channels must be >= 1 (1 = grayscale, 3 = RGB), got {in_channels}")
    if feature_dim < 1:
        raise UserError(f"feature_dim must be >= 1, got {feature_dim}")


def _check_config(architecture: str, num_classes: int, in_channels: int, width: float, feature_dim: int) -> None:
    """Raise UserError (one line) for a configuration the model cannot be built with."""
    if architecture not in ARCHITECTURES:
        raise UserError(f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}")
    if not width > 0:
        raise UserError(f"width must be > 0 (1.0 = standard ResNet channels), got {width}")
    if min(stage_planes(width)) < 1:
        raise UserError(
            f"width {width} gives stage channels {list(stage_planes(width))}; every stage needs >= 1 channel,"
            f" so use width > {0.5 / STAGE_PLANES[0]:g} (e.g. 0.125, 0.25, 0.5, 1.0)"
        )
    check_classifier(num_classes, in_channels, feature_dim)


class ResNetEncoder(nnx.Module):
    """CIFAR ResNet without fc. [B, H, W, in_channels] -> h [B, output_dim], pooled globally.

    Spatial size shrinks by 8 over the stages (8x8 -> 8/8/4/2/1; 32x32 -> 32/32/16/8/4).
    """

    def __init__(self, architecture: str, *, in_channels: int, width: float, bn_axis_name: str | None,
                 dtype: DType = None, rngs: nnx.Rngs):
        block, stage_sizes = ARCHITECTURES[architecture]
        planes_per_stage = stage_planes(width)
        channels = planes_per_stage[0]
        self.stem_conv = _conv(in_channels, channels, 3, 1, dtype, rngs)
        self.stem_bn = _batch_norm(channels, bn_axis_name, dtype, rngs)
        blocks = []
        for planes, num_blocks, first_stride in zip(planes_per_stage, stage_sizes, STAGE_STRIDES, strict=True):
            for stride in (first_stride,) + (1,) * (num_blocks - 1):
                blocks.append(block(channels, planes, stride, bn_axis_name, dtype, rngs=rngs))
                channels = planes * block.expansion
        self.blocks = nnx.List(blocks)
        self.output_dim = channels

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None) -> jax.Array:
        y = nnx.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train, mask=mask))
        for block in self.blocks:
            y = block(y, train=train, mask=mask)
        return jnp.mean(y, axis=(1, 2))


def relu_l2_normalise(g: jax.Array) -> jax.Array:
    """ReLU(g / max(||g||, 1e-12)) row-wise; [B, D] -> [B, D], rows of norm <= 1.

    Uses rsqrt(max(sum g², 1e-24)) so the gradient stays finite at g = 0.
    """
    squared_norm = jnp.sum(jnp.square(g), axis=-1, keepdims=True)
    return nnx.relu(g * jax.lax.rsqrt(jnp.maximum(squared_norm, 1e-24)))


def example_dropout(x: jax.Array, rate: float, keys: jax.Array) -> jax.Array:
    """Inverted dropout of x [B, ...], example b's mask drawn from keys[b] alone ([B] PRNG keys), so an example
    is masked the same however the batch is split over devices."""
    keep = jax.vmap(lambda key: jax.random.bernoulli(key, 1.0 - rate, x.shape[1:]))(keys)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class SupConHead(nnx.Module):
    """The head every SupCon model here ends in: h [B, hidden] → dropout (rate `dropout`, 0 by default) → MLP →
    g [B, feature_dim] → feat = ReLU(l2_normalise(g)) in float32 → linear classifier on feat → logits
    [B, num_classes] float32. Dropout acts in training mode when the call brings per-example keys
    (`StepContext.apply` does); without keys the model is deterministic."""

    dropout: float = 0.0

    def _init_head(self, hidden_dim: int, feature_dim: int, num_classes: int, dtype: DType, rngs: nnx.Rngs):
        self.head_hidden = _linear(hidden_dim, hidden_dim, rngs, dtype)
        self.head_out = _linear(hidden_dim, feature_dim, rngs, dtype)
        self.classifier = _linear(feature_dim, num_classes, rngs)

    def _head(self, h: jax.Array, train: bool = False, keys: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array]:
        if train and keys is not None and self.dropout > 0:
            h = example_dropout(h, self.dropout, keys)
        g = self.head_out(nnx.relu(self.head_hidden(h)))
        feat = relu_l2_normalise(g.astype(jnp.promote_types(g.dtype, jnp.float32)))
        return self.classifier(feat), feat


class SupConResNet(SupConHead):
    """encoder -> MLP head -> feat = ReLU(L2-normalise) -> linear classifier on feat.

    All state is nnx.Param or nnx.BatchStat, so `nnx.split(model, nnx.Param, nnx.BatchStat)`
    covers the whole model. dtype is the compute dtype of the convolutions, BatchNorm outputs and the MLP head
    (jnp.bfloat16 for mixed precision); parameters, BatchNorm statistics, feat and the classifier stay float32.
    """

    def __init__(
        self,
        architecture: str,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: float = 1.0,
        feature_dim: int = 128,
        bn_axis_name: str | None = None,
        dtype: DType = None,
        rngs: nnx.Rngs,
    ):
        _check_config(architecture, num_classes, in_channels, width, feature_dim)
        self.encoder = ResNetEncoder(
            architecture, in_channels=in_channels, width=width, bn_axis_name=bn_axis_name, dtype=dtype, rngs=rngs
        )
        self._init_head(self.encoder.output_dim, feature_dim, num_classes, dtype, rngs)

    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None, keys: jax.Array | None = None
                 ) -> tuple[jax.Array, jax.Array]:
        """x: float [B, H, W, C] (already normalised) -> (logits [B, num_classes], feat [B, feature_dim]).

        mask: [B], 1 for a real sample and 0 for a padding slot, or None: in training mode the BatchNorm
        statistics count only the real samples (`MaskedBatchNorm`). keys: [B] PRNG keys for dropout.
        """
        return self._head(self.encoder(x, train=train, mask=mask), train, keys)


def count_params(params: nnx.State) -> int:
    """Number of scalars in the nnx.Param entries of `params` (BatchStat entries are ignored).

    Works on concrete and on abstract (`nnx.eval_shape`) states.
    """
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.filter_state(params, nnx.Param)))

