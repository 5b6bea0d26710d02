"""A face folder of lfw-dev plus an LFW-style frame around every usable *background* face.

    python scripts/lfw_background_faces.py ../shared/data/lfw-dev runs/lfw-plus

LFW photos often hold other people besides the one they are filed under. Every face RetinaFace finds away from
the frame centre (IOD >= 15 px, score >= 0.8, all five landmarks inside the photo) is re-framed as LFW frames
its people: a 250x250 view with the face centred and its eyes ~50 px apart (edge pixels repeated past the
photo), saved beside the photo it came from (so the person-level held-out split is unchanged). The photos
themselves are symlinked. On lfw-dev most of the faces it adds are new people (counts: the embedded weights'
model card, compile/fiqa_compile/weights/MODEL_CARD.md).
`fiqa-distill --faces runs/lfw-plus ...` then sees them like any other photo (its detector picks the face
nearest the centre).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cv2
import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("faces", type=Path, help="LFW-style folder <Person>/<photo>.jpg (250x250 frames)")
    ap.add_argument("out", type=Path, help="folder to write (must not exist yet, or be empty)")
    ap.add_argument("--min-iod", type=float, default=15.0, help="smallest background face, eye distance in px")
    args = ap.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"lfw_background_faces: {args.out} is not empty; remove it or pass another folder", file=sys.stderr)
        return 2
    from fiqa_sdk import create_detector

    det = create_detector("retinaface", max_side=320, refine_landmarks=0)  # pinned: the output must reproduce
    photos = sorted(args.faces.glob("*/*.jpg"))
    if not photos:
        print(f"lfw_background_faces: no <Person>/<photo>.jpg in {args.faces}", file=sys.stderr)
        return 2
    added = 0
    for photo in photos:
        folder = args.out / photo.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(photo.resolve(), folder / photo.name)
        img = cv2.imread(str(photo))
        h, w = img.shape[:2]
        for k, d in enumerate(det(img)):
            cx, cy = (d.box[:2] + d.box[2:]) / 2
            if abs(cx - w / 2) < 0.1 * w and abs(cy - h / 2) < 0.1 * h:
                continue  # the person the photo is filed under
            inside = d.landmarks.min() >= 0 and (d.landmarks[:, 0] < w).all() and (d.landmarks[:, 1] < h).all()
            if d.size < args.min_iod or d.score < 0.8 or not inside:
                continue
            s = 125 / (2.5 * d.size)
            m = np.array([[s, 0, 125 - cx * s], [0, s, 125 - cy * s]], np.float32)
            frame = cv2.warpAffine(img, m, (250, 250), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            cv2.imwrite(str(folder / f"{photo.stem}_bg{k}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            added += 1
    print(f"{len(photos)} photos linked, {added} background faces added in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(argv=None))
