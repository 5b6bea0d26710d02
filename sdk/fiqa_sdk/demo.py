"""``fiqa-demo``: detect and align the faces in real photos, print what was found, write crops to look at.

This is the first stage of the device journey (frame -> detector -> 112x112 ArcFace alignment) run on
photos that installed packages ship, so it works on a fresh install with no data and no network.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk.align import align_face
from fiqa_sdk.detection import Detection, Detector, DetectorUnavailable, available_detectors, create_detector
from fiqa_sdk.samples import SAMPLES, load_sample, sample_images

_COLORS = [(0, 255, 0), (0, 0, 255), (255, 0, 0), (0, 255, 255), (255, 0, 255)]  # per landmark, BGR

DESCRIPTION = """\
Detect faces in photos, align each one to the 112x112 ArcFace template that every fiqa model expects,
and show the result.

With no IMAGE arguments it runs on the face photos that installed packages ship (insightface's t1.jpg
group photo and Tom Hanks close-up, matplotlib's Grace Hopper, scikit-image's astronaut).

For each image and detector it prints one row per face (box, detector score, inter-ocular distance in
pixels - the face's resolution - the detector and the engine running it, and the time of one detect()
call after a warm-up) and writes into --out:
  <image>_<detector>_annotated.jpg   boxes, scores and the five landmarks drawn on the photo
  <image>_<detector>_face<k>.png     the aligned 112x112 crop of face k (what a quality model sees)
  detections.json                    every detection (box, landmarks, score) in machine-readable form
"""


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fiqa-demo", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", type=Path, metavar="IMAGE",
                   help="photos to process (any format OpenCV reads); default: the shipped sample photos")
    p.add_argument("--out", type=Path, default=Path("fiqa-demo-out"),
                   help="folder for crops, annotated images and detections.json (default: ./fiqa-demo-out)")
    p.add_argument("--detector", default="retinaface",
                   help=f"comma-separated detectors to run, from {available_detectors()} (default: retinaface)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "opencv"],
                   help="engine for RetinaFace's ONNX model (default: auto = ONNX Runtime if installed)")
    p.add_argument("--max-side", type=int, default=None,
                   help="RetinaFace downscales frames so the longer side is at most this (default: half the "
                        "frame's longer side, within 320..640)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the engine's choice)")
    return p.parse_args(argv)


def _load_inputs(images: list[Path]) -> list[tuple[str, np.ndarray]]:
    if not images:
        found = sample_images()
        if not found:
            hints = sorted({s.install for s in SAMPLES.values()})
            raise SystemExit("fiqa-demo: no IMAGE given and no sample photos are installed; pass photos or "
                             "install one of: " + " | ".join(hints))
        return [(name, load_sample(name)) for name in found]
    out, seen = [], set()
    for path in images:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"fiqa-demo: cannot read {path}: "
                             + ("no such file" if not path.exists() else "not an image OpenCV can decode"))
        name, k = path.stem, 2
        while name in seen:
            name, k = f"{path.stem}-{k}", k + 1
        seen.add(name)
        out.append((name, img))
    return out


def _make_detector(name: str, args: argparse.Namespace) -> Detector:
    if name == "retinaface":
        return create_detector(name, backend=args.backend, max_side=args.max_side, threads=args.threads)
    return create_detector(name)


def annotate(frame: np.ndarray, detections: list[Detection]) -> np.ndarray:
    """Draw boxes, scores and the five landmarks (eyes green/red, nose blue, mouth yellow/magenta)."""
    img = frame.copy()
    t = max(1, round(max(img.shape[:2]) / 500))
    for k, d in enumerate(detections):
        x1, y1, x2, y2 = (int(round(v)) for v in d.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), (255, 255, 255), t)
        cv2.putText(img, f"{k}: {d.score:.2f}", (x1, max(12 * t, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * t,
                    (255, 255, 255), t, cv2.LINE_AA)
        for (x, y), color in zip(d.landmarks, _COLORS):
            cv2.circle(img, (int(round(x)), int(round(y))), 2 * t, color, -1, cv2.LINE_AA)
    return img


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    names = [n.strip() for n in args.detector.split(",") if n.strip()]
    unknown = [n for n in names if n not in available_detectors()]
    if not names or unknown:
        print(f"fiqa-demo: unknown detector(s) {unknown or names}; choose from {available_detectors()}",
              file=sys.stderr)
        return 2
    inputs = _load_inputs(args.images)
    try:
        detectors = [_make_detector(n, args) for n in names]
    except DetectorUnavailable as exc:
        print(f"fiqa-demo: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)

    header = ["image", "faces", "#", "box x1,y1,x2,y2", "score", "iod px", "detector/backend", "ms"]
    widths = [14, 5, 2, 23, 6, 6, 24, 6]
    print(_row(header, widths))
    print(_row(["-" * w for w in widths], widths))
    report = []
    for det in detectors:
        det.detect(inputs[0][1])  # warm-up: first-call allocation is not what a running camera pays
        label = f"{det.name}/{det.backend_name}"
        for name, frame in inputs:
            t0 = time.perf_counter()
            found = det.detect(frame)
            ms = (time.perf_counter() - t0) * 1000
            stem = f"{name}_{det.name}"
            cv2.imwrite(str(args.out / f"{stem}_annotated.jpg"), annotate(frame, found))
            for k, d in enumerate(found):
                cv2.imwrite(str(args.out / f"{stem}_face{k}.png"), align_face(frame, d.landmarks))
            rows = [(str(k), ",".join(f"{v:.0f}" for v in d.box), f"{d.score:.3f}", f"{d.size:.1f}")
                    for k, d in enumerate(found)] or [("-", "-", "-", "-")]
            for j, (k, box, score, iod) in enumerate(rows):
                first = j == 0
                print(_row([name if first else "", str(len(found)) if first else "", k, box, score, iod,
                            label if first else "", f"{ms:.1f}" if first else ""], widths))
            report.append({"image": name, "shape": list(frame.shape), "detector": det.name,
                           "backend": det.backend_name, "ms": round(ms, 2),
                           "faces": [d.to_dict() for d in found]})
    (args.out / "detections.json").write_text(json.dumps(report, indent=1))
    total = sum(len(r["faces"]) for r in report)
    print(f"\n{total} face{'' if total == 1 else 's'}; aligned 112x112 crops, annotated images and "
          f"detections.json in {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
