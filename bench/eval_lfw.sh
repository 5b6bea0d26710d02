#!/usr/bin/env bash
# Recognition utility (EDC, fiqa-eval) of the default bundles, the teachers and baselines on held-out LFW people.
# Writes bench/results/eval_lfw_int8/ (INT8 artifacts on their own runtimes, teachers, baselines) and
# bench/results/eval_lfw_fp32/ (the bundle's fp32 ONNX on OpenCV DNN). Needs runs/labels/lfw-dev (fiqa-labels).
# Usage: bash bench/eval_lfw.sh [LABELS_DIR]        (uses the project venv's fiqa-eval; FIQA_VENV honoured)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv_bin="$(cd "${FIQA_VENV:-.venv}/bin" 2>/dev/null && pwd)" || venv_bin=""
PATH="${venv_bin:+$venv_bin:}$PATH"
command -v fiqa-eval >/dev/null || { echo "eval_lfw.sh: no fiqa-eval; run bash scripts/setup.sh first" >&2; exit 2; }
LABELS=${1:-runs/labels/lfw-dev}
W=compile/fiqa_compile/weights
B=sdk/fiqa_sdk/bundles
fiqa-eval --labels "$LABELS" --method "teacher:$W/vit_fiqa_mini" --method "teacher:$W/vit_fiqa_mini#tta" \
  --method "teacher:$W/dsl_fiqa_tiny" \
  --method "bundle:$B/default-cpu" --method "bundle:$B/default-android-arm64" --method baseline:sharpness \
  --method baseline:face_size --method baseline:random --out bench/results/eval_lfw_int8 --force
fiqa-eval --labels "$LABELS" --method "bundle:$B/default-cpu" --method baseline:random --bundle-backend opencv \
  --out bench/results/eval_lfw_fp32 --force
