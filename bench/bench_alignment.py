"""How much the device's face alignment moves the score: RetinaFace at two input sizes, with and without landmark
refinement (``RetinaFaceDetector(refine_landmarks=passes)``), against the crop the teachers' training faces were cut as.

    python bench/bench_alignment.py                       # 250 lfw-dev photos, seed 0
    python bench/bench_alignment.py --photos 400 --faces ../shared/data/lfw-dev

Each LFW photo is scaled so its eyes are 30, 50 or 80 px apart and pasted at a random place in a 640x480 frame, which
then gets what a camera adds and a similarity transform cannot undo: a slight shear (up to 4 %), sensor noise
(sigma 4) and JPEG at quality 80. The face is detected in the frame, aligned and scored by the default bundle through
``fiqa_sdk.Scorer`` (its INT8 student on its runtime). The reference is the same Scorer's utility on the crop aligned
the way ``fiqa-labels`` cut the teachers' training faces (RetinaFace at 320 on the 250x250 LFW frame). Reported per
detector setting: SRCC and mean absolute difference with that reference at each face size, SRCC of the score with
itself across face sizes, SRCC with the embedded utility teacher (its 10-view mean on the training-style crop: what
the device score stands for), and the median detection time (first pass + refinement passes) on one thread.
Writes ``results/alignment.json`` and ``results/alignment.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_basics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (30, 50, 80)  # inter-ocular distance in the 640x480 frame
W, H = 640, 480
# name: (max_side, landmark refinement passes)
SETTINGS = {"640": (640, 0), "320": (320, 0), "320 + refine": (320, 1), "320 + refine x2": (320, 2),
            "640 + refine": (640, 1)}


def camera_frame(photo: np.ndarray, iod_px: float, photo_iod: float, rng: np.random.Generator) -> np.ndarray:
    s = iod_px / photo_iod
    face = cv2.resize(photo, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR if s > 1 else cv2.INTER_AREA)
    frame = np.full((H, W, 3), 100, np.uint8)
    h, w = min(face.shape[0], H), min(face.shape[1], W)
    y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
    frame[y0:y0 + h, x0:x0 + w] = face[:h, :w]
    shear = rng.uniform(-0.04, 0.04)
    frame = cv2.warpAffine(frame, np.float32([[1, shear, -shear * H / 2], [0, 1, 0]]), (W, H),
                           borderMode=cv2.BORDER_REPLICATE)
    frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
    return cv2.imdecode(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1], cv2.IMREAD_COLOR)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=Path, default=Path("../shared/data/lfw-dev"), help="LFW-style photo folder")
    ap.add_argument("--photos", type=int, default=250, help="photos to sample (seed 0)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    paths = sorted(args.faces.glob("*/*.jpg"))
    if not paths:
        print(f"bench_alignment: no <person>/*.jpg photos under {args.faces} (pass --faces)", file=sys.stderr)
        return 2

    from scipy.stats import spearmanr

    from fiqa_sdk import Scorer, align_face
    from fiqa_sdk.detection import RetinaFaceDetector

    rng = np.random.default_rng(0)
    paths = [paths[i] for i in sorted(rng.choice(len(paths), min(args.photos, len(paths)), replace=False))]
    as_labels = RetinaFaceDetector(score_threshold=0.6, max_side=320, threads=1, refine_landmarks=False)
    detectors = {k: RetinaFaceDetector(max_side=m, threads=1, refine_landmarks=r) for k, (m, r) in SETTINGS.items()}
    scorer = Scorer(threads=1, detector=None)
    reference, reference_crops, scores = [], [], {k: {s: [] for s in SIZES} for k in SETTINGS}
    times: dict[str, list[float]] = {k: [] for k in SETTINGS}
    missed = {k: 0 for k in SETTINGS}
    for path in paths:
        photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
        found = as_labels(photo)
        if not found:
            continue
        centre = np.array(photo.shape[1::-1]) / 2
        ref = min(found, key=lambda d: float(np.linalg.norm(d.landmarks.mean(0) - centre)))
        row: dict[tuple[str, int], float] = {}
        for size in SIZES:
            frame = camera_frame(photo, size, ref.size, rng)
            for name, det in detectors.items():
                t = time.perf_counter()
                faces = det(frame)
                times[name].append(time.perf_counter() - t)
                if not faces:
                    missed[name] += 1
                    break
                best = max(faces, key=lambda d: d.size)  # the pasted photo's face is the largest
                row[(name, size)] = scorer.score(align_face(frame, best.landmarks))[0].utility
        if len(row) < len(SETTINGS) * len(SIZES):
            continue
        reference_crops.append(align_face(photo, ref.landmarks))
        reference.append(scorer.score(reference_crops[-1])[0].utility)
        for (name, size), value in row.items():
            scores[name][size].append(value)

    reference = np.array(reference)
    from fiqa_compile.teachers import embedded_teacher_dirs, load_teacher

    teacher = load_teacher(embedded_teacher_dirs()["utility"]).score(np.stack(reference_crops), tta=True)
    rows = []
    for name in SETTINGS:
        per = {s: np.array(scores[name][s]) for s in SIZES}
        rows.append({
            "detector": name, "max_side": SETTINGS[name][0], "refine_passes": SETTINGS[name][1],
            "srcc_vs_training_crop": {s: round(float(spearmanr(per[s], reference)[0]), 4) for s in SIZES},
            "mae_vs_training_crop": {s: round(float(np.abs(per[s] - reference).mean()), 2) for s in SIZES},
            "srcc_across_sizes": {f"{a}-{b}": round(float(spearmanr(per[a], per[b])[0]), 4)
                                  for a, b in combinations(SIZES, 2)},
            "srcc_vs_teacher": {s: round(float(spearmanr(per[s], teacher)[0]), 4) for s in SIZES},
            "median_ms": round(1e3 * float(np.median(times[name])), 2), "missed": missed[name]})
    on_training_crop = round(float(spearmanr(reference, teacher)[0]), 4)
    result = {"machine": machine_basics(), "faces": len(reference), "photos": len(paths), "sizes_iod_px": SIZES,
              "training_crop_srcc_vs_teacher": on_training_crop,
              "frame": [W, H], "scorer": scorer.info.to_dict(), "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "alignment.json").write_text(json.dumps(result, indent=1))
    sizes = " / ".join(map(str, SIZES))
    lines = ["# Alignment on the device vs the teachers' training crops", "",
             f"{len(reference)} lfw-dev photos, each pasted into a 640x480 frame with eyes {sizes} px apart (shear, "
             "noise, JPEG 80), detected, aligned and scored by the default bundle "
             f"({result['scorer'].get('backend')}, 1 thread). Reference: the same model's utility on the crop cut as "
             f"`fiqa-labels` cut the training faces. {machine_basics()['cpu']}, {machine_basics()['cores']} cores.", "",
             f"| detector | SRCC with the training-style crop (eyes {sizes} px) | mean abs. difference (0-100) "
             "| SRCC across face sizes (30-50 / 30-80 / 50-80) | SRCC with the utility teacher (10 views) "
             "| detect ms (median, 1 thread) |",
             "|---|---|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {' / '.join(f'{v:.4f}' for v in r['srcc_vs_training_crop'].values())} "
                     f"| {' / '.join(f'{v:.2f}' for v in r['mae_vs_training_crop'].values())} "
                     f"| {' / '.join(f'{v:.4f}' for v in r['srcc_across_sizes'].values())} "
                     f"| {' / '.join(f'{v:.4f}' for v in r['srcc_vs_teacher'].values())} "
                     f"| {r['median_ms']:.1f} |")
    lines += ["", f"The same model on the training-style crops themselves agrees with the teacher at {on_training_crop:.4f}: "
              "the ceiling the device's alignment can reach."]
    (args.out / "alignment.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
