"""2-D convolution as matrix multiplication (im2col), a drop-in `conv_general_dilated` for `nnx.Conv`.

XLA:CPU runs `lax.conv_general_dilated` and its gradients through Eigen's spatial convolution, far below the
machine's GEMM peak. Here the input x [B, H, W, C] (NHWC) is padded and its kh·kw shifted strided windows are
concatenated along the channels, in (kh, kw, C) order, into patches [B, Ho, Wo, kh·kw·C]; the output is then
patches @ w.reshape(kh·kw·C, O) for the kernel w [kh, kw, C, O] (HWIO). A 1x1 kernel needs no copy beyond the
strided slice. The gradients are GEMMs too (a `jax.custom_vjp`): dw = patchesᵀ @ dy, and dx is the col2im of
dy @ wᵀ (each window's channel block of d(patches) added back at its strided offset in the padded input, then
the padding cropped).

Use: `nnx.Conv(..., conv_general_dilated=gemm_conv_general_dilated)`; the parameters are unchanged. The ResNets
build their convolutions as `ResNetConv`, whose implementation `use_convolution` sets after construction
(`create_model(conv=...)`, `--conv auto|xla|gemm`); ViT and user models keep `lax.conv_general_dilated`.
Supported: what the ResNets use, 2-D NHWC/HWIO, any kernel size, stride and padding (explicit (lo, hi) pairs,
or "SAME"/"VALID"), no dilation, one feature group and one batch group; anything else raises ValueError.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxunlearn.errors import UserError

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))
Pairs = tuple[tuple[int, int], tuple[int, int]]


def gemm_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                              padding: str | Sequence[tuple[int, int]],
                              lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                              dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
                              feature_group_count: int = 1, batch_group_count: int = 1,
                              precision: lax.PrecisionLike = None, preferred_element_type: jax.typing.DTypeLike = None,
                              out_sharding=None) -> jax.Array:
    """`lax.conv_general_dilated` for lhs [B, H, W, C] (NHWC) and rhs [kh, kw, C, O] (HWIO), as GEMMs.

    Returns [B, Ho, Wo, O] with Ho = (H + lo + hi − kh) // stride + 1 (likewise Wo), in preferred_element_type
    if given, else in the inputs' dtype. Raises ValueError for arguments outside the supported subset.
    """
    unsupported = []
    if lhs.ndim != 4 or rhs.ndim != 4:
        unsupported.append(f"lhs/rhs rank {lhs.ndim}/{rhs.ndim} (only 2-D convolutions)")
    elif lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC:
        unsupported.append(f"dimension_numbers={dimension_numbers!r} (only NHWC input, HWIO kernel, NHWC output)")
    if any(d != 1 for d in lhs_dilation or ()):
        unsupported.append(f"lhs_dilation={tuple(lhs_dilation)}")
    if any(d != 1 for d in rhs_dilation or ()):
        unsupported.append(f"rhs_dilation={tuple(rhs_dilation)}")
    if feature_group_count != 1:
        unsupported.append(f"feature_group_count={feature_group_count}")
    if batch_group_count != 1:
        unsupported.append(f"batch_group_count={batch_group_count}")
    if out_sharding is not None:
        unsupported.append(f"out_sharding={out_sharding!r}")
    if lhs.dtype != rhs.dtype:
        unsupported.append(f"lhs/rhs dtypes {lhs.dtype}/{rhs.dtype} (must be equal)")
    if unsupported:
        raise ValueError(f"gemm_conv_general_dilated does not support {'; '.join(unsupported)}")
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    if len(strides) != 2 or len(pads) != 2:
        raise ValueError(f"gemm_conv_general_dilated needs 2 strides and 2 padding pairs, got {strides}, {pads}")
    if any(n + lo + hi < k for n, (lo, hi), k in zip(lhs.shape[1:3], pads, rhs.shape[:2])):
        raise ValueError(f"gemm_conv_general_dilated: the padded input {lhs.shape[1:3]} + {pads} is smaller than "
                         f"the kernel {rhs.shape[:2]}")
    if isinstance(precision, list):
        precision = tuple(precision)  # static arguments must be hashable
    dtype = None if preferred_element_type is None else jnp.dtype(preferred_element_type)
    # Under shard_map, an operand invariant over a mesh axis along which the other varies is cast to varying
    # first, as lax's own ops do (the cast's transpose sums that operand's cotangent over the axis).
    varying = jax.typeof(lhs).mat.varying | jax.typeof(rhs).mat.varying
    lhs, rhs = (lax.pcast(a, tuple(varying - jax.typeof(a).mat.varying), to="varying") for a in (lhs, rhs))
    return _conv(lhs, rhs, strides, pads, precision, dtype)


def _pad(x: jax.Array, pads: Pairs) -> jax.Array:
    """Zero-pads (or, for negative pairs, crops) the spatial axes of x [B, H, W, C]."""
    return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))


def _out_size(size: int, kernel: int, stride: int) -> int:
    return (size - kernel) // stride + 1


def _patches(xp: jax.Array, kernel: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    """Padded input [B, Hp, Wp, C] -> patches [B, Ho, Wo, kh·kw·C], windows in (kh, kw, C) order."""
    (kh, kw), (sh, sw) = kernel, strides
    b, hp, wp, c = xp.shape
    ho, wo = _out_size(hp, kh, sh), _out_size(wp, kw, sw)
    windows = [lax.slice(xp, (0, i, j, 0), (b, i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, c), (1, sh, sw, 1))
               for i in range(kh) for j in range(kw)]
    return windows[0] if len(windows) == 1 else lax.concatenate(windows, 3)


def _col2im(dpatches: jax.Array, kernel: tuple[int, int], strides: tuple[int, int], padded: tuple[int, int]
            ) -> jax.Array:
    """The transpose of `_patches`: d(patches) [B, Ho, Wo, kh·kw·C] -> d(padded input) [B, Hp, Wp, C].

    Each window's channel block goes back to its strided offset by an interior-padded `lax.pad` (the transpose
    of the strided slice), and the blocks are summed; XLA fuses the pads and adds into one loop.
    """
    (kh, kw), (sh, sw), (hp, wp) = kernel, strides, padded
    _, ho, wo, kc = dpatches.shape
    c = kc // (kh * kw)
    zero = jnp.zeros((), dpatches.dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            block = lax.slice_in_dim(dpatches, (i * kw + j) * c, (i * kw + j + 1) * c, axis=3)
            placed = lax.pad(block, zero, ((0, 0, 0), (i, hp - i - (ho - 1) * sh - 1, sh - 1),
                                           (j, wp - j - (wo - 1) * sw - 1, sw - 1), (0, 0, 0)))
            total = placed if total is None else total + placed
    return total


def _matmul(a: jax.Array, b: jax.Array, contract: tuple[tuple[int, ...], tuple[int, ...]],
            precision: lax.PrecisionLike, dtype: jnp.dtype | None) -> jax.Array:
    return lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _conv(x: jax.Array, w: jax.Array, strides: tuple[int, int], pads: Pairs, precision: lax.PrecisionLike,
          dtype: jnp.dtype | None) -> jax.Array:
    kh, kw, c, o = w.shape
    patches = _patches(_pad(x, pads), (kh, kw), strides)
    return _matmul(patches, w.reshape(kh * kw * c, o), ((3,), (0,)), precision, dtype)


def _conv_fwd(x, w, strides, pads, precision, dtype):
    # The backward recomputes the patches from x: saved, they would hold kh·kw times each layer's input until its
    # backward (measured on ResNet-18's 3x3 convolutions at batch 128: 1.1 instead of 2.3 GB, and no slower).
    return _conv(x, w, strides, pads, precision, dtype), (x, w)


def _conv_bwd(strides, pads, precision, dtype, residuals, dy):
    x, w = residuals
    # The barrier ties the recomputation to dy, so XLA neither merges it with the forward's patches (CSE) nor
    # schedules it early, either of which would keep the patches alive as if they had been saved.
    x, dy = lax.optimization_barrier((x, dy))
    kh, kw, c, o = w.shape
    xp = _pad(x, pads)
    # As lax's transposes: the operands in the cotangent's dtype (float32 for bfloat16 inputs accumulated in
    # float32), the results cast back to the inputs' dtypes.
    patches = _patches(xp, (kh, kw), strides).astype(dy.dtype)
    w2 = w.reshape(kh * kw * c, o).astype(dy.dtype)
    dw = _matmul(patches, dy, ((0, 1, 2), (0, 1, 2)), precision, dtype).reshape(w.shape).astype(w.dtype)
    dpatches = _matmul(dy, w2, ((3,), (1,)), precision, dtype)
    dxp = _col2im(dpatches, (kh, kw), strides, xp.shape[1:3])
    dx = _pad(dxp, tuple((-lo, -hi) for lo, hi in pads)).astype(x.dtype)
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


CONVS = ("auto", "xla", "gemm")
"""Convolution implementations by name: "xla" is `lax.conv_general_dilated`, "gemm" this module's GEMMs, and
"auto" the faster of the two on the platform that runs (`AUTO_CONV`)."""

AUTO_CONV: dict[str, str] = {}
"""What "auto" takes per platform where that is not "xla". Empty: on XLA:CPU (jaxlib 0.12.0.1, 2 cores) the GEMM
form measured slower for the whole ResNet-18 CU step (BENCHMARKS.md, "CPU profile"), and on accelerators
XLA's convolutions are the vendor libraries'."""


class ResNetConv(nnx.Conv):
    """The ResNets' convolution: `nnx.Conv`, whose implementation `use_convolution` chooses."""


def resolve_conv(conv: str, platform: str | None = None) -> str:
    """"xla" or "gemm" for a `--conv` value on `platform` (default: JAX's default backend); UserError else."""
    if conv not in CONVS:
        raise UserError(f"`conv` must be one of {', '.join(CONVS)}, got {conv!r}")
    if conv == "auto":
        return AUTO_CONV.get(platform or jax.default_backend(), "xla")
    return conv


def use_convolution(model: nnx.Module, conv: str) -> nnx.Module:
    """Make every `ResNetConv` of `model` compute with implementation `conv` (resolved), in place; returns
    `model`. The parameters are untouched; other convolutions keep their own implementation."""
    function = gemm_conv_general_dilated if resolve_conv(conv) == "gemm" else lax.conv_general_dilated
    for _, module in nnx.iter_modules(model):
        if isinstance(module, ResNetConv):
            module.conv_general_dilated = function
    return model
