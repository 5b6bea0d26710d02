#!/usr/bin/env bash
# Rebuild the SDK's embedded defaults from ../shared/data/lfw-dev, deterministically (fixed seeds), resumable:
#   labels -> utility + perceptual teachers (in parallel) -> distilled student (eleven cycles) -> recognition-utility
#   labels and the student that learns them -> cpu + android-arm64 bundles.
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

# 3. the default student, distilled label-free from the embedded teachers on the photos themselves (each photo
#    clean + 2 degraded versions; the utility teacher scores every augmented batch online; one utility view, as
#    `fiqa-compile --faces` distilled then: it now uses the 10-view target and the mirror mean and does not
#    augment). ~35 min on 2 cores; re-running resumes from the last checkpoint.
[ -f "$RUNS/student_faces/student.json" ] || \
  fiqa-distill --faces "$FACES" --versions 2 --epochs 6 --seed 0 --no-utility-tta --out "$RUNS/student_faces"
#    then a second, gentler learning-rate cycle on top of it, with the utility losses weighted twice (the score that
#    distils worse). Same photos, same seed, same teachers: the teacher scores are reused. ~40 min on 2 cores.
if [ ! -f "$RUNS/student_ft/student.json" ]; then
  mkdir -p "$RUNS/student_ft"
  [ -f "$RUNS/student_ft/targets.npz" ] || cp "$RUNS/student_faces/targets.npz" "$RUNS/student_ft/"
  fiqa-distill --faces "$FACES" --versions 2 --seed 0 --init "$RUNS/student_faces" --epochs 10 --lr 0.0015 \
    --utility-weight 2 --no-utility-tta --out "$RUNS/student_ft"
fi
#    The first two cycles learned the utility teacher's single forward pass (the default then); the third learns
#    its mean over 10 test-time views (the default now: one view is not repeatable at 2 px of re-alignment), with
#    hint heads on the teacher's patch tokens and FR embedding and an average of the weights. ~55 min on 2 cores.
if [ ! -f "$RUNS/student_tta/student.json" ]; then
  mkdir -p "$RUNS/student_tta"
  [ -f "$RUNS/student_tta/targets.npz" ] || cp "$RUNS/student_faces/targets.npz" "$RUNS/student_tta/"
  fiqa-distill --faces "$FACES" --versions 2 --seed 0 --init "$RUNS/student_ft" --epochs 7 --lr 0.001 \
    --utility-weight 3 --token-weight 1 --embedding-weight 1 --ema 0.998 --out "$RUNS/student_tta"
fi
#    Cycles 4 and 5: the same settings on more distinct faces, the photos plus the people in their backgrounds
#    (scripts/lfw_background_faces.py, filed beside their photo so the held-out people stay the same). ~20 min each.
[ -d "$RUNS/lfw-plus" ] || python scripts/lfw_background_faces.py "$FACES" "$RUNS/lfw-plus"
for cycle in "student_tta student_bg" "student_bg student_bg2"; do
  set -- $cycle
  [ -f "$RUNS/$2/student.json" ] || \
    fiqa-distill --faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/$1" --epochs 3 --lr 0.001 \
      --utility-weight 3 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --threads 2 --out "$RUNS/$2"
done
#    Cycle 6: the same again, learning the mean over each crop and its mirror image, which is what the bundles
#    (fiqa-compile --mirror-average, the default) score. ~25 min.
[ -f "$RUNS/student_mir/student.json" ] || \
  fiqa-distill --faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/student_bg2" --epochs 3 --lr 0.001 \
    --utility-weight 3 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --mirror-average --threads 2 \
    --out "$RUNS/student_mir"
#    Cycle 7: once more with the utility losses weighted x6 (the perceptual score has slack to give). ~25 min.
[ -f "$RUNS/student_mir2/student.json" ] || \
  fiqa-distill --faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/student_mir" --epochs 3 --lr 0.001 \
    --utility-weight 6 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --mirror-average --threads 2 \
    --out "$RUNS/student_mir2"
#    Cycles 8-11 go off the photos: a quarter of each batch blended with another face (--mixup), then a share given
#    another face's eyes, nose or mouth (--part-swap: new people, so quality cannot be learnt by recognising whose
#    face it is); the online teacher scores them all. The last is one longer cycle of 6 epochs. ~25, 25, 25, 45 min.
#    Same photos and teachers, so each cycle reuses the one before's teacher scores.
cycle() {  # init out epochs lr part_swap
  [ -f "$RUNS/$2/student.json" ] && return 0
  mkdir -p "$RUNS/$2"
  for f in targets.npz utility_tta.npz; do
    [ -f "$RUNS/$2/$f" ] || [ ! -f "$RUNS/$1/$f" ] || cp "$RUNS/$1/$f" "$RUNS/$2/"
  done
  fiqa-distill --faces "$RUNS/lfw-plus" --versions 2 --seed 0 --init "$RUNS/$1" --epochs "$3" --lr "$4" \
    --utility-weight 6 --token-weight 1 --embedding-weight 1 --ema 0.998 --utility-tta --mirror-average \
    --mixup 0.25 --part-swap "$5" --threads 2 --out "$RUNS/$2"
}
cycle student_mir2 student_mix 3 0.001 0
cycle student_mix student_mix2 3 0.0005 0
cycle student_mix2 student_swap 3 0.0005 0.25
cycle student_swap student_swap2 6 0.001 0.5
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
