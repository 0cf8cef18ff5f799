#!/usr/bin/env bash
# Small families, long training (issue 27): AR against masked diffusion (SEDD, absorbing) on ACYP with
# 500 and 2,000 training records of the identity:0.5 split, two seeds each, one thread per run, two runs
# side by side. Each run trains until its validation bound has not improved for PATIENCE evaluations
# or MINUTES have passed, keeping its best checkpoint. Then: python scripts/data_constrained.py RUNS.
# Usage: scripts/data_constrained.sh RUNS [MINUTES] [PATIENCE]
set -euo pipefail
runs=${1:?runs directory}; minutes=${2:-15}; patience=${3:-8}
common=(--data acyp --split identity:0.5 --preset mini --dropout 0.1 --keep-best --patience "$patience"
        --time-budget "$minutes" --samples 100 --quiet --json --checkpoint-every 1000000)
queue() {  # objective; runs one after the other
  local objective=$1
  for records in 500 2000; do
    for seed in 0 1; do
      local every=$(( records == 500 ? 50 : 100 ))
      local out="$runs/$objective-$records-s$seed"
      [ -e "$out/summary.json" ] && continue
      OMP_NUM_THREADS=1 ddlm train "${common[@]}" --objective "$objective" --train-records "$records" \
        --seed "$seed" --eval-every "$every" --out "$out" > "$out.json" 2> "$out.log" || true
      mv "$out.json" "$out/summary.json" 2>/dev/null || true
    done
  done
}
mkdir -p "$runs"
queue ar & queue sedd & wait
