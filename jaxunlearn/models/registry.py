"""Models by name: the ResNets, ViT-small, and any model a user registers.

A model is an NNX module called as `model(images, *, train, mask=None) -> (logits, feat)`: images float
[B, H, W, C] (normalised), logits [B, num_classes], feat [B, D] the embedding Contrastive Unlearning
contrasts. `mask` ([B], 1 real, 0 padding) reaches it only for a batch padded to the device count; a model
without BatchNorm may ignore it, and a model without a `mask` argument runs wherever no batch needs padding.
Its state must be nnx.Param and nnx.BatchStat only.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxunlearn.errors import UserError
from jaxunlearn.models.conv import resolve_conv, use_convolution
from jaxunlearn.models.resnet import ARCHITECTURES, SupConResNet
from jaxunlearn.models.vit import SupConViT

ModelFactory = Callable[..., nnx.Module]
"""(num_classes, *, in_channels, image_size (H, W), width, depth, bn_axis_name, dtype, rngs) → model.
bn_axis_name is the data-parallel axis a BatchNorm must average its statistics over; dtype the compute dtype
(None: float32; jnp.bfloat16 under precision "bf16"). A factory raises UserError for settings it cannot
build."""

PRECISIONS: dict[str, Any] = {"f32": None, "bf16": jnp.bfloat16}
"""Precision name → the compute dtype handed to a model factory (None: the parameters' float32)."""

MODELS: dict[str, ModelFactory] = {}
"""Every registered model factory by name."""


def register_model(name: str, factory: ModelFactory) -> ModelFactory:
    """Make `factory` available as model `name` (in `TrainConfig.model` and `create_model`); returns it."""
    if name in MODELS:
        raise ValueError(f"a model named {name!r} is registered twice")
    MODELS[name] = factory
    return factory


def create_model(name: str, num_classes: int, *, in_channels: int, image_size: tuple[int, int] = (32, 32),
                 width: float = 1.0, depth: int | None = None, seed: int = 0, bn_axis_name: str | None = None,
                 precision: str = "f32", conv: str = "xla", dropout: float = 0.0) -> nnx.Module:
    """Build and initialise model `name` from `seed`; bad settings raise UserError. conv: the implementation of
    the ResNets' convolutions ("auto", "xla", "gemm"; `jaxunlearn.models.conv`), which other models ignore.
    dropout: the rate of the head's dropout in training mode (`SupConHead`; a model without a `dropout`
    attribute refuses a rate above 0)."""
    if not 0.0 <= dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {dropout}")
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    conv = resolve_conv(conv)
    model = MODELS[name](num_classes, in_channels=in_channels, image_size=tuple(image_size), width=width,
                         depth=depth, bn_axis_name=bn_axis_name, dtype=PRECISIONS[precision], rngs=nnx.Rngs(seed))
    if dropout > 0:
        if not hasattr(model, "dropout"):
            raise UserError(f"model {name!r} has no dropout (a `dropout` attribute its call applies)")
        model.dropout = float(dropout)
    return use_convolution(model, conv)


def _resnet(architecture: str) -> ModelFactory:
    def factory(num_classes: int, *, in_channels: int, image_size: tuple[int, int], width: float,
                depth: int | None, bn_axis_name: str | None, dtype: Any, rngs: nnx.Rngs) -> SupConResNet:
        if depth is not None:
            raise UserError(f"{architecture} has a fixed depth; `depth` is for vit_small")
        return SupConResNet(architecture, num_classes, in_channels=in_channels, width=width,
                            bn_axis_name=bn_axis_name, dtype=dtype, rngs=rngs)
    return factory


def _vit_small(num_classes: int, *, in_channels: int, image_size: tuple[int, int], width: float,
               depth: int | None, bn_axis_name: str | None, dtype: Any, rngs: nnx.Rngs) -> SupConViT:
    return SupConViT(num_classes, in_channels=in_channels, image_size=image_size, width=width, depth=depth,
                     dtype=jnp.float32 if dtype is None else dtype, rngs=rngs)


for _architecture in ARCHITECTURES:
    register_model(_architecture, _resnet(_architecture))
register_model("vit_small", _vit_small)
