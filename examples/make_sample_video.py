#!/usr/bin/env python3
"""Write the demo clip: a real portrait that goes sharp -> blurred -> sharp -> dark -> sharp (MJPG .avi).

    python examples/make_sample_video.py sample.avi

Made from a photo that an installed package ships (matplotlib's sample portrait; nothing is downloaded), so
every machine can replay the capture-gate demo. With the gate's defaults the 5 s clip gives one capture: the
best frame of the first sharp stretch's best-of-N window. The default 10 s cooldown covers the rest of the clip,
so every later frame is rejected with ``cooldown``, and the blurred and dark ones also with their quality
reasons (blurred, too_dark, low_utility). The per-frame ground truth is written next to the video as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk.samples import SampleUnavailable, load_sample

SEGMENTS = (("sharp", 12), ("blurring", 12), ("sharp", 12), ("darkening", 12), ("sharp", 12))


def frames(size: tuple[int, int] = (640, 480), photo: str = "grace_hopper") -> tuple[list[np.ndarray], list[str]]:
    w, h = size
    img = load_sample(photo)
    scale = min(w / img.shape[1], h / img.shape[0]) * 0.9
    face = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    base = np.full((h, w, 3), 40, np.uint8)
    y, x = (h - face.shape[0]) // 2, (w - face.shape[1]) // 2
    base[y:y + face.shape[0], x:x + face.shape[1]] = face
    out, truth = [], []
    for name, n in SEGMENTS:
        for i in range(n):
            t = (i + 1) / n
            if name == "blurring":
                f = cv2.GaussianBlur(base, (0, 0), 0.5 + 7.5 * t)
            elif name == "darkening":
                f = np.clip(base.astype(np.float32) * (1.0 - 0.93 * t), 0, 255).astype(np.uint8)
            else:
                f = base.copy()
            # a gentle drift, so consecutive frames are not identical
            m = np.float32([[1, 0, 3 * np.sin(len(out) / 5)], [0, 1, 2 * np.cos(len(out) / 7)]])
            out.append(cv2.warpAffine(f, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
            truth.append(name)
    return out, truth


def write(path: Path, fps: float = 12.0) -> Path:
    imgs, truth = frames()
    path.parent.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (imgs[0].shape[1], imgs[0].shape[0]))
    if not vw.isOpened():
        raise RuntimeError(f"OpenCV cannot write MJPG video to {path}")
    for f in imgs:
        vw.write(f)
    vw.release()
    path.with_suffix(".json").write_text(json.dumps({"fps": fps, "frames": truth}, indent=1))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", type=Path, help="output .avi")
    args = ap.parse_args(argv)
    try:
        print(write(args.path))
    except (SampleUnavailable, OSError, RuntimeError) as e:
        # SampleUnavailable (a device install without matplotlib) names the pip command; no traceback for it.
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
