"""Peak FLOP/s of the chips a run may get, and model FLOPs utilisation (MFU) against them.

MFU = model FLOPs per step (XLA's cost analysis, all devices) / seconds per step / peak FLOP/s of the devices
that ran it. An accelerator's peak is its datasheet's dense figure (`PEAKS`, by `jax.Device.device_kind` as
JAX spells it) for the precision of the run: bf16, or f32 as JAX computes float32 matrix products and
convolutions at its default precision (`jax.lax.Precision.DEFAULT`: TF32 tensor cores on NVIDIA Ampere and
later, one bfloat16 pass on TPU, https://docs.jax.dev/en/latest/_autosummary/jax.lax.Precision.html). A run
with `jax_default_matmul_precision` raised to "highest" computes below that peak and its MFU reads low.
A CPU's peak is measured: the best of a few timed float32 matrix products (`measure_gemm_peak`), whatever the
run's precision (XLA:CPU has no faster bf16 path). Every CPU device of a process shares the machine's cores,
so the peak of any number of CPU devices is the machine's; an accelerator's is the sum over its devices.
"""

import functools
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Peak:
    """Dense peak FLOP/s of one device (a GPU, or a TPU chip: v4 and v5p run their two TensorCores as one JAX
    device), for bf16 and for float32 at JAX's default precision (TF32 on NVIDIA, bf16 on TPU)."""

    chip: str
    bf16: float
    f32: float


TERA = 1e12
# NVIDIA's datasheets give tensor-core figures "with sparsity"; the dense peak is half of that.
# https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet (the H100 datasheet; H100
# SXM: BF16 1,979, TF32 989 TFLOPS with sparsity; H100 NVL: 1,671 and 835; its 2022 edition and the H100 PCIe
# product brief PB-11133-001: H100 PCIe 1,513 and 756)
_H100_SXM = Peak("H100 SXM", bf16=1979 * TERA / 2, f32=989 * TERA / 2)
_H100_PCIE = Peak("H100 PCIe", bf16=1513 * TERA / 2, f32=756 * TERA / 2)
_H100_NVL = Peak("H100 NVL", bf16=1671 * TERA / 2, f32=835 * TERA / 2)
# https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM: BF16 1,979, TF32 989 TFLOPS with sparsity;
# H200 NVL: 1,671 and 835)
_H200_SXM = Peak("H200 SXM", bf16=1979 * TERA / 2, f32=989 * TERA / 2)
_H200_NVL = Peak("H200 NVL", bf16=1671 * TERA / 2, f32=835 * TERA / 2)
# https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
# (every A100, 40 and 80 GB, SXM and PCIe: BF16 312, TF32 156 TFLOPS dense)
_A100 = Peak("A100", bf16=312 * TERA, f32=156 * TERA)
# https://www.nvidia.com/en-us/data-center/l4/ (datasheet: BF16 242, TF32 120 TFLOPS with sparsity)
_L4 = Peak("L4", bf16=242 * TERA / 2, f32=120 * TERA / 2)
# Google publishes bf16 per chip; float32 at JAX's default precision runs as one bf16 pass, at the same peak.
# https://cloud.google.com/tpu/docs/v4 (275 TFLOPS), https://cloud.google.com/tpu/docs/v5e (197),
# https://cloud.google.com/tpu/docs/v5p (459), https://cloud.google.com/tpu/docs/v6e (Trillium: 918)
_TPU_V4 = Peak("TPU v4", bf16=275 * TERA, f32=275 * TERA)
_TPU_V5E = Peak("TPU v5e", bf16=197 * TERA, f32=197 * TERA)
_TPU_V5P = Peak("TPU v5p", bf16=459 * TERA, f32=459 * TERA)
_TPU_V6E = Peak("TPU v6e", bf16=918 * TERA, f32=918 * TERA)

PEAKS: dict[str, Peak] = {
    "NVIDIA H100 80GB HBM3": _H100_SXM,
    "NVIDIA H100 PCIe": _H100_PCIE,
    "NVIDIA H100 NVL": _H100_NVL,
    "NVIDIA H200": _H200_SXM,
    "NVIDIA H200 NVL": _H200_NVL,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA L4": _L4,
    # TPU names as JAX reports them, with the aliases jax/_src/tpu_info.py accepts
    "TPU v4": _TPU_V4,
    "TPU v5 lite": _TPU_V5E,
    "TPU v5e": _TPU_V5E,
    "TPU v5": _TPU_V5P,
    "TPU v5p": _TPU_V5P,
    "TPU v6 lite": _TPU_V6E,
    "TPU v6e": _TPU_V6E,
}
"""`jax.Device.device_kind` → its chip's peak."""

GEMM_SIZE = 2048
GEMM_REPEATS = 5


def chip_peak(device_kind: str, precision: str) -> float | None:
    """Dense peak FLOP/s of one device of this kind in `precision` ("f32" or "bf16"); None for a kind not in
    `PEAKS`."""
    peak = PEAKS.get(device_kind)
    return None if peak is None else getattr(peak, precision)


@functools.cache
def measure_gemm_peak(device: jax.Device, size: int = GEMM_SIZE, repeats: int = GEMM_REPEATS) -> float:
    """FLOP/s of the fastest of `repeats` float32 [size, size] @ [size, size] products on `device` (2·size³
    FLOPs each), after one that compiles and warms up. Measured once per process and device."""
    a, b = jax.device_put(jax.random.normal(jax.random.key(0), (2, size, size), jnp.float32), device)
    product = jax.jit(jnp.matmul)
    product(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best


def devices_peak(devices: list[jax.Device], precision: str) -> dict[str, Any]:
    """The peak FLOP/s of `devices` together in `precision`, for MFU.

    Returns {"flops_per_second": total or None, "per_device": one device's (None on CPU: the peak is the
    machine's), "basis": where the figure comes from, or why there is none ("no peak known for device kind X")}.
    """
    device = devices[0]
    if device.platform == "cpu":
        return {"flops_per_second": measure_gemm_peak(device), "per_device": None,
                "basis": f"measured float32 {GEMM_SIZE}×{GEMM_SIZE} matmul, best of {GEMM_REPEATS}, on the cores "
                         f"the {len(devices)} CPU device(s) share"}
    per_device = chip_peak(device.device_kind, precision)
    if per_device is None:
        return {"flops_per_second": None, "per_device": None,
                "basis": f"no peak known for device kind {device.device_kind}"}
    return {"flops_per_second": per_device * len(devices), "per_device": per_device,
            "basis": f"{PEAKS[device.device_kind].chip} datasheet, {precision} dense, × {len(devices)} device(s)"}


def mfu(flops_per_second: float, peak: dict[str, Any]) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over `devices_peak`'s total; None when no peak is known."""
    return None if peak["flops_per_second"] is None else flops_per_second / peak["flops_per_second"]
