#!/usr/bin/env bash
# The deep audits of experiments/README.md ("Deep audits"), as run on a 2-core CPU: the NeurIPS 2023
# challenge score (jaxunlearn audit, N models per arm) and U-LiRA (jaxunlearn ulira, N shadows) of
# contrastive unlearning, NegGrad+, SalUn and random labels, on digits (N = 64) and on the Fashion-MNIST CPU
# setting (N = 32 by default; N_FASHION_MNIST=64 for the full audit).
# Every command resumes where it stopped; rerun the script after an interruption. The runs go to
# RUNS (default runs/audits, not committed), the scores and plots to experiments/results/.
#
#   experiments/audits.sh [digits|fashion_mnist|fashion_mnist_tuned ...]
set -euo pipefail
cd "$(dirname "$0")/.."
JAXUNLEARN=${JAXUNLEARN:-.venv/bin/jaxunlearn}
RUNS=${RUNS:-runs/audits}
RESULTS=experiments/results
N=${N:-64}                      # models per arm on digits (and shadows for U-LiRA)
N_FASHION_MNIST=${N_FASHION_MNIST:-32}  # on Fashion-MNIST: N = 32 takes about 80 min on 2 cores, N = 64 twice that
N_TUNED=${N_TUNED:-8}           # tuned CU on the width-1/4 original: N = 8 about an hour on 2 cores

collect() {  # collect <workdir> <results dir>: the small files that hold the scores
  mkdir -p "$2"
  for f in audit.json confidences.npz epsilons.png ulira.json; do
    [ -f "$1/$f" ] && cp "$1/$f" "$2/$f"
  done
  return 0
}

audit_digits() {
  local original=$RUNS/digits/original work=$RUNS/digits/audit-class5
  [ -f "$original/metrics.json" ] || $JAXUNLEARN train --dataset digits --width 0.125 --epochs 15 --batch-size 64 \
    --workdir "$original"
  # The README's digits settings (the reference learning rates barely move this small model); CU at its defaults.
  local -A settings=(
    [contrastive]=""
    [neggrad_plus]="--epochs 3 --batch-size 64 --lr 0.05 --hp beta=0.9"
    [salun]="--epochs 3 --batch-size 64 --lr 0.05"
    [random_label]="--epochs 3 --batch-size 64 --lr 0.05"
  )
  for method in contrastive neggrad_plus salun random_label; do
    # shellcheck disable=SC2086
    $JAXUNLEARN audit --from "$original" --forget class:5 --method $method --models $N --workdir "$work" \
      ${settings[$method]}
    collect "$work" $RESULTS/audit_digits_class5
  done
  for method in contrastive neggrad_plus salun random_label; do
    # shellcheck disable=SC2086
    $JAXUNLEARN ulira --from "$original" --method $method --audited 100 --shadows $N \
      --workdir $RUNS/digits/ulira ${settings[$method]}
    collect $RUNS/digits/ulira $RESULTS/ulira_digits
  done
}

audit_fashion_mnist() {
  local original=$RUNS/fashion_mnist/original work=$RUNS/fashion_mnist/audit-class5
  # The Fashion-MNIST protocols' original (experiments/protocols/fashion_mnist_class5.py), seed 0.
  [ -f "$original/metrics.json" ] || $JAXUNLEARN train --dataset fashion_mnist --width 0.125 --train-size 4000 \
    --test-size 2000 --epochs 12 --batch-size 128 --workdir "$original"
  for method in contrastive neggrad_plus salun random_label; do  # at their reference defaults, as the protocol
    $JAXUNLEARN audit --from "$original" --forget class:5 --method $method --models "$N_FASHION_MNIST" \
      --workdir "$work"
    collect "$work" $RESULTS/audit_fashion_mnist_class5
  done
  for method in contrastive neggrad_plus salun random_label; do
    $JAXUNLEARN ulira --from "$original" --method $method --audited 200 --shadows "$N_FASHION_MNIST" \
      --workdir $RUNS/fashion_mnist/ulira
    collect $RUNS/fashion_mnist/ulira $RESULTS/ulira_fashion_mnist
  done
}

audit_fashion_mnist_tuned() {
  # The tuned protocols' stronger original (width 1/4, 1,000 training images held out for validation): the
  # seed-0 original of experiments/protocols/fashion_mnist_class5_tuned.py where that experiment has run,
  # else the same training here. CU at the setting its tuning chose (λ_UL 1), N_TUNED models per arm.
  local original=runs/fashion_mnist_class5_tuned/seed0/original work=$RUNS/fashion_mnist_tuned/audit-class5
  if [ ! -f "$original/metrics.json" ]; then
    original=$RUNS/fashion_mnist_tuned/original
    [ -f "$original/metrics.json" ] || $JAXUNLEARN train --dataset fashion_mnist --width 0.25 --train-size 4000 \
      --test-size 2000 --validation-size 1000 --epochs 12 --batch-size 128 --workdir "$original"
  fi
  $JAXUNLEARN audit --from "$original" --forget class:5 --method contrastive --lr 0.001 --hp lambda_ul=1 \
    --models "$N_TUNED" --workdir "$work"
  collect "$work" $RESULTS/audit_fashion_mnist_class5_tuned
}

for dataset in "${@:-digits fashion_mnist}"; do
  for d in $dataset; do
    start=$(date +%s)
    "audit_$d"
    echo "audits of $d: $(( $(date +%s) - start )) s" >&2
  done
done
