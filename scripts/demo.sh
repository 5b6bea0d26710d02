#!/usr/bin/env bash
# The main job, end to end on this machine (CPU only), after scripts/setup.sh:
#   1. detect + align the faces in photos that installed packages ship (fiqa-demo),
#   2. compile the embedded teachers/student into a verified INT8 bundle for a Jetson Orin (fiqa-compile),
#   3. run the capture gate with that bundle on a clip made from a real portrait (examples/capture_gate.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${1:-fiqa-demo-out}
VENV=${FIQA_VENV:-.venv}  # where scripts/setup.sh put the environment
PY=$VENV/bin/python
"$VENV/bin/fiqa-demo" --out "$OUT"
echo; echo "== fiqa-compile --target jetson-orin =="
"$VENV/bin/fiqa-compile" --target jetson-orin --out "$OUT/bundle-jetson-orin" --force
echo; echo "== capture gate on a sample clip (ONNX Runtime on this CPU; TensorRT on the Jetson) =="
$PY examples/make_sample_video.py "$OUT/sample.avi"
rm -rf "$OUT/captures"
$PY examples/capture_gate.py --source "$OUT/sample.avi" --bundle "$OUT/bundle-jetson-orin" --display off \
  --out "$OUT/captures" --log "$OUT/decisions.jsonl"
echo; echo "report: $OUT/bundle-jetson-orin/report.md   captures: $OUT/captures   decisions: $OUT/decisions.jsonl"
