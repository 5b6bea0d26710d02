"""Copy the photos of N *training* identities of a face folder into a calibration folder (for the default bundles).

    python scripts/calibration_subset.py ../shared/data/lfw-dev runs/calibration-lfw

The people are drawn (seed 0) from the training side of the project's split, never from its held-out people
(``fiqa_calibration.held_out_people``: share 0.15, seed 0, the label sets' and distillations' split), so
the INT8 ranges are set on faces like the ones a bundle is evaluated on without touching the evaluation people.
The pip-shipped group photo that ``fiqa-compile`` calibrates on by default holds 6 small faces, unlike the faces
a bundle scores (how each calibration compares: docs/results.md, "Calibration").
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("faces", type=Path, help="face folder <identity>/<photo>")
    ap.add_argument("out", type=Path, help="calibration folder to write (must not exist yet, or be empty)")
    ap.add_argument("--people", type=int, default=200, help="identities to copy (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from fiqa_calibration import FaceFolder, held_out_people

    if args.out.exists() and any(args.out.iterdir()):
        print(f"calibration_subset: {args.out} is not empty; remove it or pass another folder", file=sys.stderr)
        return 2
    try:
        identities = FaceFolder(args.faces).identities
    except (OSError, ValueError) as e:
        print(f"calibration_subset: {e}", file=sys.stderr)
        return 2
    held = held_out_people(identities)
    people = sorted(set(identities) - held)
    if len(people) < args.people:
        print(f"calibration_subset: only {len(people)} training identities, asked for {args.people}", file=sys.stderr)
        return 2
    pick = sorted(np.random.default_rng(args.seed).choice(people, args.people, replace=False).tolist())
    missing = [p for p in pick if not (args.faces / p).is_dir()]
    if missing:
        print(f"calibration_subset: {args.faces} has no folder for {missing[:3]}...: is it the face folder?", file=sys.stderr)
        return 2
    photos = 0
    for p in pick:
        shutil.copytree(args.faces / p, args.out / p)
        photos += sum(1 for _ in (args.out / p).iterdir())
    print(f"{photos} photos of {len(pick)} training identities in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
