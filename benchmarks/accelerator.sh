#!/usr/bin/env bash
# Everything a lent GPU or TPU should measure, in one command: written to finish in under 8 minutes on one
# H100/H200 (not yet run on one: no session has been lent a machine). Every figure goes to JSON under OUT.
#
#   benchmarks/accelerator.sh [OUT]           # default OUT=bench-accelerator; send OUT/ back whole
#   benchmarks/accelerator.sh --quick [OUT]   # tiny sizes: checks the script end to end on CPU (a test runs it)
#
# 1. bench of the CU and train steps at the paper's scale, 32×32×3, B = 256 (256 forget + 256 retain), MFU
#    against the chip's peak: ResNet-18 and ResNet-50 at full width and ViT-small, f32 and bf16, the epoch as
#    one compiled scan (bench-*-scan.json); ResNet-18 also as a host loop over the step (…-steps.json).
# 2. K = 8 ResNet-18s vmapped on the device against one after another (models-resnet18-k8.json).
# 3. The streamed input against the device-resident one: whole training epochs of ResNet-18 on a synthetic
#    CIFAR-shaped dataset of 50,000 images on disk (streaming-throughput.json; ratio stream/device).
# 4. End to end: `jaxunlearn train` (2 epochs) and a CU `unlearn` of class 5 (at most 2 epochs) on that
#    dataset: wall seconds of each process and their metrics (end-to-end.json).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
if [[ ${1:-} == --quick ]]; then QUICK=1; shift; fi
OUT=${1:-bench-accelerator}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if ((QUICK)); then
  WIDTH=0.0625 BATCH=8 SIZE=16 STEPS=2 REPEATS=1 MODELS=2 GIGABYTES=0.003 EPOCHS=1 VIT="--width 0.125 --depth 1"
  MODELS_LIST="resnet18"
else
  WIDTH=1 BATCH=256 SIZE=32 STEPS=10 REPEATS=3 MODELS=8 GIGABYTES=0.154 EPOCHS=2 VIT=""
  MODELS_LIST="resnet18 resnet50"
fi
jaxunlearn() { "$PYTHON" -m jaxunlearn.cli "$@"; }
common=(--batch "$BATCH" --image-size "$SIZE" --channels 3 --steps "$STEPS" --repeats "$REPEATS")

for model in $MODELS_LIST; do
  jaxunlearn bench --model "$model" --width "$WIDTH" "${common[@]}" --precision both --epoch-loop scan \
    --json "$OUT/bench-$model-scan.json" | tee "$OUT/bench-$model-scan.txt"
done
jaxunlearn bench --model resnet18 --width "$WIDTH" "${common[@]}" --precision both --epoch-loop steps \
  --json "$OUT/bench-resnet18-steps.json" | tee "$OUT/bench-resnet18-steps.txt"
# shellcheck disable=SC2086  # VIT is a list of flags
jaxunlearn bench --model vit_small $VIT "${common[@]}" --precision both --epoch-loop scan \
  --json "$OUT/bench-vit_small-scan.json" | tee "$OUT/bench-vit_small-scan.txt"
jaxunlearn bench --model resnet18 --width "$WIDTH" "${common[@]}" --models "$MODELS" \
  --json "$OUT/models-resnet18-k$MODELS.json" | tee "$OUT/models-resnet18-k$MODELS.txt"

DATA="$OUT/synthetic-data"
"$PYTHON" benchmarks/streaming.py throughput --synthetic "$DATA" --gigabytes "$GIGABYTES" --model resnet18 \
  --width "$WIDTH" --batch "$BATCH" --epochs "$EPOCHS" --json "$OUT/streaming-throughput.json"

RUNS="$OUT/runs"
rm -rf "$RUNS"
dataset=(--dataset streaming:big_dataset --data-dir "$DATA")
started=$(date +%s.%N)
PYTHONPATH=benchmarks jaxunlearn train "${dataset[@]}" --model resnet18 --width "$WIDTH" --epochs "$EPOCHS" \
  --batch-size "$BATCH" --workdir "$RUNS/original"
trained=$(date +%s.%N)
PYTHONPATH=benchmarks jaxunlearn unlearn --from "$RUNS/original" --method contrastive --forget class:5 \
  --epochs "$EPOCHS" --workdir "$RUNS/cu"
finished=$(date +%s.%N)
"$PYTHON" - "$OUT" "$started" "$trained" "$finished" <<'EOF'
import json, sys
from pathlib import Path
out, started, trained, finished = Path(sys.argv[1]), *map(float, sys.argv[2:])
result = {"train_seconds": trained - started, "unlearn_seconds": finished - trained,
          "train_metrics": json.loads((out / "runs/original/metrics.json").read_text()),
          "unlearn_metrics": json.loads((out / "runs/cu/metrics.json").read_text())}
(out / "end-to-end.json").write_text(json.dumps(result, indent=2) + "\n")
print(f"end to end: train {result['train_seconds']:.1f} s, CU unlearn {result['unlearn_seconds']:.1f} s")
EOF
rm -rf "$DATA"
echo "every figure is under $OUT"
