#!/usr/bin/env bash
# Digits, forget class 5: original, Contrastive Unlearning and the retrained reference, then evaluation.
# Usage: bash experiments/digits_class5.sh [RUN_ROOT]   (default runs/digits-class5; needs `jaxunlearn` on PATH,
# e.g. after `source .venv/bin/activate`)
set -euo pipefail
root=${1:-runs/digits-class5}
jaxunlearn train --dataset digits --model resnet18 --width 0.125 --epochs 15 --batch-size 64 --workdir "$root/original"
jaxunlearn unlearn --method contrastive --forget class:5 --from "$root/original" --workdir "$root/contrastive"
jaxunlearn unlearn --method retrain --forget class:5 --from "$root/original" --workdir "$root/retrain"
jaxunlearn evaluate --from "$root/original" --forget class:5
for run in retrain contrastive; do
  echo "== $run"; jaxunlearn evaluate --from "$root/$run" --reference "$root/retrain"
done
jaxunlearn report "$root/contrastive" "$root/retrain" --out "$root/report"
