#!/usr/bin/env bash
# Mixed precision on an accelerator: run when a GPU or TPU is at hand (this project's CI machine has neither).
# Times the CU and train steps of ResNet-18 (full width) and ViT-small (full size), 32×32×3, B = 64 forget +
# 64 retain, in float32 and in bfloat16, and writes every figure to $OUT (default bench-accelerator/).
#
#   benchmarks/accelerator_precision.sh            # then compare the "cu" and "cu bf16" rows
#
# What to expect, from the hardware (not yet measured here; record the figures in BENCHMARKS.md):
# - bf16 images/s at least 1.5× float32 for both models on an A100/H100/H200 or a TPU v4/v5 (bfloat16
#   matrix units; XLA:CPU has none and runs bf16 2× slower, BENCHMARKS.md);
# - the losses of the first step in the two precisions within 1e-2 relative (tests/test_precision.py's
#   tolerance), parameters float32 in both (param_checksum of the same order).
set -euo pipefail
cd "$(dirname "$0")/.."
JAXUNLEARN=${JAXUNLEARN:-.venv/bin/jaxunlearn}
OUT=${OUT:-bench-accelerator}
mkdir -p "$OUT"
for model in resnet18 vit_small; do
  $JAXUNLEARN bench --model "$model" --batch 64 --image-size 32 --channels 3 --steps 20 --repeats 5 \
    --precision both --json "$OUT/$model-32px-b64-precision.json" | tee "$OUT/$model-32px-b64-precision.txt"
done
