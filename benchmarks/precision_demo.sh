#!/usr/bin/env bash
# The demo config trained in float32 and in bfloat16 activations for the same number of steps
# (default 20,000: long enough for a late divergence to show), then both runs' loss curves and
# final evaluations side by side, as one JSON line (benchmarks/compare_runs.py).
#
#   bash benchmarks/precision_demo.sh [ROOT=workdir/precision] [STEPS=20000]
#
# Each run resumes if its workdir already holds checkpoints, so the script can be stopped and rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-workdir/precision}
STEPS=${2:-20000}
PY=${PYTHON:-.venv/bin/python}
for dtype in float32 bfloat16; do
  "$PY" -m rin_diffusion.main --config=configs/fashion_mnist.py --workdir="$ROOT/$dtype" \
    --config.total_steps="$STEPS" --config.model.dtype="$dtype"
done
"$PY" benchmarks/compare_runs.py "$ROOT/float32" "$ROOT/bfloat16"
