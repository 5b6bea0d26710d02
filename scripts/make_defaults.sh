#!/usr/bin/env bash
# Rebuild the SDK's embedded defaults from ../shared/data/lfw-dev, deterministically (fixed seeds), resumable:
#   labels -> utility + perceptual teachers (in parallel) -> distilled student (eleven cycles) -> recognition-utility
#   labels and the student that learns them -> its calibrated utility scale -> cpu + android-arm64 bundles.
# Every step skips itself when its output is complete; re-run after an interruption to continue.
# Usage: bash scripts/make_defaults.sh [FACES_DIR]        (run inside the project venv: bash scripts/setup.sh first)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
FACES=${1:-../shared/data/lfw-dev}
RUNS=${FIQA_RUNS:-runs}
TEACHER_MINUTES=${TEACHER_MINUTES:-30}
WEIGHTS=compile/fiqa_compile/weights
BUNDLES=sdk/fiqa_sdk/bundles
export PATH="$PWD/.venv/bin:$PATH"

[ -d "$FACES" ] || { echo "face folder $FACES not found (pass it as the first argument)" >&2; exit 2; }

# 1. measured labels (dlib certainty ratio + MS-SSIM pseudo-MOS), 4 degraded versions per photo, seed 0
[ -f "$RUNS/labels/lfw-dev/labels.npz" ] || \
  fiqa-labels --faces "$FACES" --out "$RUNS/labels/lfw-dev" --versions 4 --seed 0 --workers 2

# 2. teachers, one CPU thread each, side by side; --max-minutes bounds the wall time (re-run to continue)
train() {  # task model out epochs
  [ -f "$3/teacher.json" ] && python -c "import json,sys; sys.exit(0 if json.load(open('$3/teacher.json'))['complete'] else 1)" \
    && return 0
  fiqa-train "$1" --model "$2" --labels "$RUNS/labels/lfw-dev" --out "$3" --epochs "$4" --batch-size 64 --lr 1e-3 \
    --seed 0 --threads 1 --max-minutes "$TEACHER_MINUTES"
}
train utility vit_fiqa_mini "$RUNS/teachers/vit_fiqa_mini" 4 > "$RUNS/train_utility.log" 2>&1 &
U=$!
train perceptual dsl_fiqa_tiny "$RUNS/teachers/dsl_fiqa_tiny" 3 > "$RUNS/train_perceptual.log" 2>&1 &
P=$!
wait $U || { tail -20 "$RUNS/train_utility.log"; exit 1; }
wait $P || { tail -20 "$RUNS/train_perceptual.log"; exit 1; }
mkdir -p "$WEIGHTS"
for t in vit_fiqa_mini dsl_fiqa_tiny; do
  mkdir -p "$WEIGHTS/$t" && cp "$RUNS/teachers/$t/teacher.pt" "$RUNS/teachers/$t/teacher.json" "$WEIGHTS/$t/"
done

# 3. the default student, distilled label-free from the embedded teachers in eleven cycles, each a committed recipe
#    that starts from the cycle before (--init); compile/fiqa_compile/recipes/README.md says what each does and why.
#    Cycles 1-3 distil on the photos themselves (each clean + 2 degraded versions), 4-11 on the photos plus the
#    people in their backgrounds (scripts/lfw_background_faces.py, filed beside their photo so the held-out people
#    stay the same). Cycles 2-3 and 8-11 keep the photos and teachers of the cycle they start from and copy its
#    teacher scores instead of computing them again. ~6 h on 2 cores; re-running resumes the unfinished cycle.
RECIPES=compile/fiqa_compile/recipes
distil() {  # recipe faces out [init [threads]]
  [ -f "$RUNS/$3/student.json" ] && return 0
  fiqa-distill --recipe "$RECIPES/$1.json" --faces "$2" --out "$RUNS/$3" ${4:+--init "$RUNS/$4"} ${5:+--threads "$5"}
}
reuse_scores() {  # from to: the same crops and teachers, so the cached teacher scores hold
  [ -f "$RUNS/$2/student.json" ] && return 0
  mkdir -p "$RUNS/$2"
  for f in targets.npz utility_tta.npz; do
    [ -f "$RUNS/$2/$f" ] || [ ! -f "$RUNS/$1/$f" ] || cp "$RUNS/$1/$f" "$RUNS/$2/"
  done
}
distil 01_faces "$FACES" student_faces
reuse_scores student_faces student_ft
distil 02_finetune "$FACES" student_ft student_faces
reuse_scores student_ft student_tta
distil 03_tta_hints "$FACES" student_tta student_ft
[ -d "$RUNS/lfw-plus" ] || python scripts/lfw_background_faces.py "$FACES" "$RUNS/lfw-plus"
distil 04_background "$RUNS/lfw-plus" student_bg student_tta 2
distil 05_background2 "$RUNS/lfw-plus" student_bg2 student_bg 2
distil 06_mirror "$RUNS/lfw-plus" student_mir student_bg2 2
distil 07_utility6 "$RUNS/lfw-plus" student_mir2 student_mir 2
reuse_scores student_mir2 student_mix
distil 08_mixup "$RUNS/lfw-plus" student_mix student_mir2 2
reuse_scores student_mix student_mix2
distil 09_mixup_low_lr "$RUNS/lfw-plus" student_mix2 student_mix 2
reuse_scores student_mix2 student_swap
distil 10_part_swap "$RUNS/lfw-plus" student_swap student_mix2 2
reuse_scores student_swap student_swap2
distil 11_part_swap_long "$RUNS/lfw-plus" student_swap2 student_swap 2
# 4. recognition-utility labels, and the student that learns them (docs/recognition_utility.md): every photo of the
#    training people degraded in the whole frame (4 versions), detected and aligned as the device does and embedded
#    by dlib and MobileFaceNet (~30 min on 2 cores); the eleventh-cycle student then learns the labels, grounded in
#    both recognisers' embeddings (4 epochs, ~35 min on one thread). It scores one pass (no mirror average).
python -c 'import sys; from fiqa_compile.fr.mobilefacenet import find_model; sys.exit(find_model() is None)' \
  || bash scripts/get_mobilefacenet.sh
[ -f "$RUNS/frames/train/failures.txt" ] || python -m fiqa_compile.labels.frame_set --faces "$FACES" \
  --out "$RUNS/frames/train" --split train --protocol train --versions 4 --seed 0 --workers 2
[ -f "$RUNS/student_rec/student.json" ] || python -m fiqa_compile.train.recognition_student \
  --frames "$RUNS/frames/train" --out "$RUNS/student_rec" --init "$RUNS/student_swap2" --epochs 4 --threads 1
mkdir -p "$WEIGHTS/student_mfn" && cp "$RUNS/student_rec/student.pt" "$RUNS/student_rec/student.json" "$WEIGHTS/student_mfn/"
#    The utility scale (docs/recognition_utility.md): a monotone map from the student's raw utility output to the
#    chance that a comparison with a clean photo of the person matches at FMR 1e-3 (dlib and MobileFaceNet), fitted
#    on the training-side people the student held out, written into its student.json (`scale`), which every bundle
#    below copies (with the gate thresholds from a deployment target). The copy above drops it, so it is fitted again
#    whenever the record does not belong to these weights. ~3 min.
python -c 'import json, sys; i = json.load(open(sys.argv[1])); s = i.get("scale") or {}; sys.exit(0 if s.get("fitted_on", {}).get("student_sha256") == i["sha256"] else 1)' \
  "$WEIGHTS/student_mfn/student.json" || python -m fiqa_compile.scale --frames "$RUNS/frames/train" --student "$WEIGHTS/student_mfn" \
  --faces "$FACES" --threads 2

# 5. the default bundles that make Scorer() work out of the box, INT8-calibrated on the photos of 200 people the
#    teachers and the student trained on (never the held-out ones), faces like the ones scored rather than the 6 small
#    faces of the pip-shipped group photo fiqa-compile calibrates on by default (TFLite SRCC with fp32 on held-out LFW
#    people: bench/eval_student.py --bundle)
[ -d "$RUNS/calibration-lfw" ] || python scripts/calibration_subset.py "$FACES" "$RUNS/calibration-lfw"
mkdir -p "$BUNDLES"
for target in cpu android-arm64; do
  fiqa-compile --target "$target" --calibration "$RUNS/calibration-lfw" --no-mirror-average \
    --out "$BUNDLES/default-$target" --force --seed 0
done
sha256sum "$WEIGHTS"/*/*.pt "$BUNDLES"/*/manifest.json
