#!/bin/bash
# Calibration candidates, one training process at a time, on the GRPO-aligned model of $1 (results folder).
# Usage: bash benchmarks/calibration/run_candidates.sh /tmp/calibB name '<settings json>' dataset every [name ...]
set -eu
R=$1; shift
mkdir -p "$R/calibration"
while [ $# -ge 4 ]; do
  name=$1 settings=$2 dataset=$3 every=$4; shift 4
  python benchmarks/calibration/sampled_curve.py --results "$R" --method "${METHOD:-grpo}" --regime "$settings" \
    --dataset "$dataset" --every "$every" --out "$R/calibration/${METHOD:-grpo}-$name.json" > "$R/calibration/${METHOD:-grpo}-$name.log" 2>&1
done
