"""Contact sheet and per-type timing of fiqa_calibration.degradations on a real aligned face.

Rows are degradation types, columns severities 0..1; the sheet is for eyeballing realism and monotonicity.
Timing is per call on a 112x112 aligned face (median of repeats, single thread), written as JSON + Markdown.

    python bench/plot_degradations.py [--image PATH] [--seed 3] [--repeats 200]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import cv2
import matplotlib
import numpy as np

import fiqa_sdk
from fiqa_calibration.degradations import DEGRADATION_TYPES, DEGRADATION_VERSION, degrade, parameters

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_IMAGE = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
SEVERITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def aligned_face(path: Path) -> np.ndarray:
    """Detect the most confident face in ``path`` and align it to 112x112."""
    frame = cv2.imread(str(path))
    if frame is None:
        raise SystemExit(f"cannot read image {path}")
    dets = fiqa_sdk.create_detector()(frame)
    if not dets:
        raise SystemExit(f"no face found in {path}; pass --image with a photo of a face")
    return fiqa_sdk.align_face(frame, dets[0].landmarks)


def contact_sheet(face: np.ndarray, seed: int, zoom: int = 1) -> np.ndarray:
    """Grid of degraded faces; row label on the left, severity on top."""
    tile = 112 * zoom
    label_w, head_h, pad = 130, 24, 4
    rows, cols = len(DEGRADATION_TYPES), len(SEVERITIES)
    sheet = np.full((head_h + rows * (tile + pad), label_w + cols * (tile + pad), 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for j, s in enumerate(SEVERITIES):
        cv2.putText(sheet, f"s={s:.1f}", (label_w + j * (tile + pad) + 4, 16), font, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for i, kind in enumerate(DEGRADATION_TYPES):
        y = head_h + i * (tile + pad)
        cv2.putText(sheet, kind, (6, y + tile // 2), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        for j, s in enumerate(SEVERITIES):
            out = degrade(face, kind, s, seed)
            x = label_w + j * (tile + pad)
            sheet[y:y + tile, x:x + tile] = cv2.resize(out, (tile, tile), interpolation=cv2.INTER_NEAREST)
    return sheet


def time_types(face: np.ndarray, repeats: int) -> list[dict]:
    """Median ms per call at severity 0.6 with a fresh seed each call (random fields are regenerated)."""
    rows = []
    for kind in DEGRADATION_TYPES:
        degrade(face, kind, 0.6, 0)  # warm-up
        times = []
        for r in range(repeats):
            t0 = time.perf_counter()
            degrade(face, kind, 0.6, r)
            times.append(time.perf_counter() - t0)
        p = parameters(kind, 1.0)
        rows.append({"kind": kind, "median_ms": round(1e3 * float(np.median(times)), 3),
                     "p90_ms": round(1e3 * float(np.percentile(times, 90)), 3),
                     "at_severity_1": {k: round(v, 3) for k, v in p.items()}})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--zoom", type=int, default=1, help="tile magnification (nearest) for a closer look")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    face = aligned_face(args.image)
    RESULTS.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(RESULTS / "degradations.png"), contact_sheet(face, args.seed, args.zoom))

    rows = time_types(face, args.repeats)
    meta = {"image": args.image.name, "size": "112x112x3", "severity": 0.6, "threads": 1,
            "repeats": args.repeats, "degradation_version": DEGRADATION_VERSION, "cpu": platform.processor() or
            platform.machine(), "numpy": np.__version__, "opencv": cv2.__version__}
    (RESULTS / "degradations_timing.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    lines = [f"# Degradation timing ({meta['size']}, severity 0.6, 1 thread, {args.repeats} calls, {meta['cpu']})",
             "", "| kind | median ms | p90 ms | parameters at severity 1 |", "|---|---:|---:|---|"]
    lines += [f"| {r['kind']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | "
              f"{', '.join(f'{k}={v:g}' for k, v in r['at_severity_1'].items())} |" for r in rows]
    (RESULTS / "degradations_timing.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / 'degradations.png'}")


if __name__ == "__main__":
    main()
