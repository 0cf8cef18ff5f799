#!/usr/bin/env bash
# Small families, long training (issue 27): AR against masked diffusion on ACYP under the identity:0.5
# split, the same network for all (mini, dropout 0.1 unless the name says otherwise), one thread per run.
# Each run trains until its validation bound has not improved for PATIENCE evaluations or MINUTES have
# passed, keeping its best checkpoint. Then: python scripts/data_constrained.py RUNS.
#
# Usage: scripts/data_constrained.sh RUNS MINUTES PATIENCE QUEUE [QUEUE]
# A QUEUE is run names separated by commas, trained one after the other; two queues run side by side.
# A name says what the run is: OBJECTIVE-RECORDS-sSEED[-dDROPOUT], RECORDS a number or `all` (every
# training record); bd3lm runs use blocks of 4 and --mask-rates auto. A run with a summary is skipped.
# With DATA=tinystories the runs are on TinyStories characters instead: RECORDS is --max-docs (the first N
# stories of train.txt after a validation part of 5% of all its stories is set aside), the held-out part
# is validation.txt; validation every 25 steps.
# Example: scripts/data_constrained.sh runs 65 15 sedd-500-s0,ar-500-s0 sedd-500-s1,ar-500-s1
#          DATA=tinystories scripts/data_constrained.sh runs-text 45 15 sedd-100-s0 ar-100-s0-d0.3,ar-100-s0
set -euo pipefail
runs=${1:?runs directory}; minutes=${2:?minutes}; patience=${3:?patience}; shift 3
data=${DATA:-acyp}
common=(--data "$data" --preset mini --keep-best --patience "$patience"
        --time-budget "$minutes" --samples 100 --quiet --json --checkpoint-every 1000000)
train() {  # one run, by its name
  local name=$1 out="$runs/$1"
  [[ $name =~ ^([a-z0-9]+)-([0-9]+|all)-s([0-9]+)(-d([0-9.]+))?$ ]] || { echo "bad run name $name" >&2; return 1; }
  local objective=${BASH_REMATCH[1]} records=${BASH_REMATCH[2]} seed=${BASH_REMATCH[3]} dropout=${BASH_REMATCH[5]:-0.1}
  local flags=(--objective "$objective" --seed "$seed" --dropout "$dropout")
  if [ "$data" = acyp ]; then
    flags+=(--split identity:0.5)
    case $records in
      all) flags+=(--eval-every 200) ;;
      *) flags+=(--train-records "$records" --eval-every $(( records <= 500 ? 50 : 100 ))) ;;
    esac
  else
    flags+=(--validation-fraction 0.05 --eval-every 25)
    [ "$records" = all ] || flags+=(--max-docs "$records")
  fi
  [ "$objective" = bd3lm ] && flags+=(--diffusion-block 4 --mask-rates auto)
  [ -e "$out/summary.json" ] && return 0
  OMP_NUM_THREADS=1 ddlm train "${common[@]}" "${flags[@]}" --out "$out" > "$out.json" 2> "$out.log" || true
  mv "$out.json" "$out/summary.json" 2>/dev/null || true
}
queue() { local IFS=,; for name in $1; do train "$name"; done; }
mkdir -p "$runs"
for q in "$@"; do queue "$q" & done
wait
