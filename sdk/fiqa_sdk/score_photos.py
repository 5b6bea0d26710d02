"""``fiqa-score``: score the faces in still photos and say which would pass the capture gate, and why not.

The still-photo side of the device journey (enrolment photos, a gallery to curate, a folder of captures to
audit): every photo is detected, aligned and scored by a bundle, and each face gets the gate's verdict on its own
(:meth:`fiqa_sdk.gate.CaptureGate.assess`: the per-frame checks, no best-of-N window or cooldown). Device side:
needs no torch.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from fiqa_runtimes import BackendUnavailable
from fiqa_sdk.bundle import BundleError
from fiqa_sdk.detection import DetectorUnavailable, RetinaFaceDetector, auto_max_side
from fiqa_sdk.frames import FrameError
from fiqa_sdk.gate import CaptureGate, GateConfig, parse_overrides
from fiqa_sdk.json_safe import finite_or_null
from fiqa_sdk.pipeline import face_observation, skip_reason, z_signs
from fiqa_sdk.scorer import FaceResult, Scorer

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
COLUMNS = ("image", "face", "utility", "perceptual", "verdict", "reasons", "iod_px", "box")

DESCRIPTION = """\
Score the faces in still photos with a fiqa bundle and give each one the capture gate's verdict: accept, or
reject with the reasons (too small, at the frame edge, turned away, blurred, too dark/bright, low utility, low
perceptual quality). Without --all-faces only the largest face of each photo (its subject) is judged.

IMAGE may be photos or folders (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff .ppm .pgm;
symlinked sub-folders are not followed); each photo is judged once however often it is named. A photo that
cannot be read is listed with verdict 'error', a folder that cannot be read is named on stderr (its photos are
not judged): either makes the exit status 1. Exit status 2: nothing could be judged (no photo found, a folder
named that cannot be read, a bundle or model that cannot be loaded, an output that cannot be written). One
without a face gets 'no_face' (and, when it was searched shrunk so far that a face the gate accepts could be
missed, the --max-side that would find it). --gate utility_accept=N alone moves utility_release down with it
(the bundle's gap kept).

examples:
  fiqa-score enrolment/                          # the subject of every photo, with verdicts
  fiqa-score shots/ --all-faces --sort utility --csv ranked.csv
  fiqa-score photo.jpg --bundle fiqa-bundle-cpu --json verdicts.json
"""


@dataclass
class Row:
    """One output line: a face of a photo (or the photo itself when it has no face or could not be read)."""

    image: str
    face: int | None = None
    utility: float | None = None
    perceptual: float | None = None
    verdict: str = "error"
    reasons: list[str] = field(default_factory=list)
    iod_px: float | None = None
    box: list[float] | None = None

    def cells(self) -> list[str]:
        num = (lambda v: "" if v is None else f"{v:.1f}")
        return [self.image, "" if self.face is None else str(self.face), num(self.utility), num(self.perceptual),
                self.verdict, ";".join(self.reasons), num(self.iod_px),
                "" if self.box is None else ",".join(f"{v:.0f}" for v in self.box)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fiqa-score", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="photos and/or folders of photos")
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded default bundle)")
    p.add_argument("--backend", default="auto",
                   help="inference backend: auto (default: the first installed that starts), tensorrt, litert, "
                        "tflite-runtime, onnxruntime or opencv")
    p.add_argument("--detector", default="retinaface", choices=("retinaface", "dlib"),
                   help="face detector (default: retinaface)")
    p.add_argument("--max-side", type=int, default=None,
                   help="longest side RetinaFace sees (default: half the photo's, within 320..640)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the engine's choice)")
    p.add_argument("--all-faces", action="store_true", help="judge every face, not only each photo's largest")
    p.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the bundle's gate thresholds, repeatable: KEY=VALUE, or KEY=off to disable "
                        "a check (e.g. --gate utility_accept=70 --gate max_yaw_deg=off; keys: fiqa_sdk.GateConfig)")
    p.add_argument("--sort", choices=("name", "utility", "perceptual"), default="name",
                   help="row order: by file name (default), or best score first")
    p.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    p.add_argument("--json", type=Path, default=None, help="also write the rows (and the bundle used) as JSON")
    p.add_argument("--force", action="store_true", help="replace an existing --csv / --json file")
    args = p.parse_args(argv)
    try:
        args.gate = parse_overrides(args.gate)
    except ValueError as e:
        p.error(f"--gate: {e}")
    if args.max_side is not None and args.detector != "retinaface":
        p.error("--max-side is an option of the retinaface detector")
    for flag in ("csv", "json"):  # checked before minutes of scoring, not after
        out = getattr(args, flag)
        if out is not None and (problem := output_problem(out, args.force)) is not None:
            p.error(f"--{flag} {out}: {problem}")
    # resolved, so sub/../x.csv and x.csv (or a symlink to it) are seen to be one file
    if args.csv is not None and args.json is not None and args.csv.resolve() == args.json.resolve():
        p.error("--csv and --json name the same file; give each its own")
    return args


def output_problem(out: Path, force: bool) -> str | None:
    """Why results cannot be written to ``out`` (None when they can), found before any photo is scored."""
    try:
        folder = out.absolute().parent
        if out.exists() and not out.is_file():
            return "is not a file"
        if out.exists() and not force:
            return "already exists; pass --force to replace it, or give another path"
        if not folder.is_dir():
            return f"its folder {folder} does not exist"
        # access() also sees a read-only filesystem; the file itself matters when --force rewrites it in place
        if not os.access(folder, os.W_OK | os.X_OK) or (out.exists() and not os.access(out, os.W_OK)):
            return "is not writable by this user; pick another path or fix the permissions"
    except OSError as e:  # a name too long for the filesystem, a folder on the way this user may not search
        return f"cannot be used ({e.strerror or e})"
    return None


def _entries(folder: Path, unreadable: list[tuple[Path, OSError]]) -> Iterator[Path]:
    """Everything below ``folder``, not following symlinked sub-folders. Path.rglob would skip a folder it may not
    list without a word (and its photos with it): here each one goes to ``unreadable`` with its error."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        unreadable.append((folder, e))
        return
    for entry in entries:
        path = folder / entry.name
        yield path
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _entries(path, unreadable)


def _is_photo_file(path: Path) -> bool:
    """A file with a photo's suffix; one that cannot even be stat'ed counts, so reading it reports why."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    try:
        return path.is_file()
    except OSError:
        return True


def find_images(paths: list[Path], unreadable: list[tuple[Path, OSError]] | None = None) -> Iterator[Path]:
    """The photos named, and those inside the folders named (sorted, recursive; symlinked sub-folders are not
    followed), each once however often it is named. A missing path, or one that cannot be looked at (a name too
    long, a parent this user may not search), raises OSError naming it. A folder that cannot be listed is
    appended to ``unreadable`` (with its error) and searching goes on; without that list, it raises too."""
    seen: set[Path] = set()
    found_unreadable: list[tuple[Path, OSError]] = [] if unreadable is None else unreadable

    def once(p: Path) -> bool:
        key = p.resolve()
        new = key not in seen
        seen.add(key)
        return new

    for path in paths:
        try:
            is_dir, is_file = path.is_dir(), path.is_file()
        except OSError as e:
            raise OSError(f"{display_name(path)} cannot be read ({e.strerror or e})") from e
        if is_dir:
            below = sorted(_entries(path, found_unreadable))
            if unreadable is None and found_unreadable:
                folder, e = found_unreadable[0]
                raise OSError(f"cannot read folder {display_name(folder)} ({e.strerror or e})") from e
            yield from (p for p in below if _is_photo_file(p) and once(p))
        elif is_file:
            if once(path):
                yield path
        else:
            raise FileNotFoundError(f"{display_name(path)} is neither a photo nor a folder")


def display_name(path: Path) -> str:
    """The path as text every output takes: a name that is not valid UTF-8 keeps its bytes as \\x escapes."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_photo(path: Path) -> np.ndarray | None:
    """BGR image, or None when OpenCV cannot decode it. Read as bytes first: cv2.imread crashes on some file names
    (not UTF-8; non-ASCII on Windows), and a damaged file must not end the run."""
    data = np.fromfile(str(path), np.uint8)
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


# About the fewest pixels between the eyes at the network's input at which RetinaFace still finds a face: faces the
# gate accepts (28 px) are found in 1920-wide frames seen at 640, i.e. at 9.3 px (detection.auto_max_side).
SMALLEST_IOD_FOUND = 9.0


def shrink_hint(shape: tuple[int, ...], detector: object, gate: GateConfig) -> str | None:
    """For a photo in which no face was found: when RetinaFace saw it shrunk so far that a face big enough for the
    gate (``min_iod_px`` between the eyes) would be under :data:`SMALLEST_IOD_FOUND` px, what --max-side would
    find it; else None (the photo was seen closely enough: it has no face)."""
    if not isinstance(detector, RetinaFaceDetector):
        return None
    h, w = shape[:2]
    side = detector.max_side or auto_max_side(h, w)
    scale = min(1.0, side / max(h, w))
    min_iod = gate.min_iod_px if gate.min_iod_px is not None else GateConfig().min_iod_px
    if min_iod * scale >= SMALLEST_IOD_FOUND:
        return None
    needed = math.ceil(max(h, w) * SMALLEST_IOD_FOUND / min_iod / 32) * 32
    return (f"photo {w}x{h} was searched at {side} px (shrunk {1 / scale:.3g}x), where a face under "
            f"{SMALLEST_IOD_FOUND / scale:.0f} px between the eyes may be too small to find: retry with --max-side "
            f"{needed} (time grows with its square) or crop the photo to the person")


def judge_photo(name: str, image: np.ndarray, scorer: Scorer, gate: CaptureGate, all_faces: bool) -> list[Row]:
    """Rows for one photo: its largest face (or every face), each with the gate's verdict on it alone. A photo
    without a face found says when it was searched too small to tell (:func:`shrink_hint`)."""
    faces: list[FaceResult] = scorer.score_frame(image)
    if not faces:
        hint = shrink_hint(image.shape, scorer.detector, gate.config)
        return [Row(name, verdict="no_face", reasons=[hint] if hint else [])]
    order = sorted(range(len(faces)), key=lambda k: -faces[k].detection.size)
    rows = []
    signs = z_signs(scorer)
    for k in order if all_faces else order[:1]:
        face = faces[k]
        row = Row(name, face=k, utility=face.utility, perceptual=face.perceptual,
                  iod_px=float(face.detection.size), box=[float(v) for v in face.detection.box])
        why = skip_reason(face, gate.config.checks_pose())
        if why is not None:
            row.verdict, row.reasons = "not_judged", [why]
        else:
            decision = gate.assess(face_observation(face, image, k, 0, 0.0, signs))
            row.verdict = "accept" if decision.accepted else "reject"
            row.reasons = [r.value for r in decision.reasons]
        rows.append(row)
    return rows


def score_photos(files: list[Path], scorer: Scorer, all_faces: bool = False,
                 gate_config: GateConfig | None = None) -> list[Row]:
    """Rows for every photo, in order; a photo that cannot be read or scored is a row with verdict 'error'.
    ``gate_config``: the thresholds (default: the scorer's bundle's)."""
    gate = CaptureGate(gate_config if gate_config is not None else scorer.bundle.gate_config())
    rows: list[Row] = []
    show = sys.stderr.isatty()
    for i, path in enumerate(files, 1):
        if show:
            print(f"\rscoring {i}/{len(files)}", end="", file=sys.stderr, flush=True)
        name = display_name(path)
        try:
            image = read_photo(path)
        except (OSError, cv2.error, MemoryError) as e:  # unreadable file, or beyond OpenCV's pixel limit
            rows.append(Row(name, reasons=[f"unreadable: {type(e).__name__}: {str(e).strip()[:200]}"]))
            continue
        if image is None:
            rows.append(Row(name, reasons=["unreadable: not an image OpenCV can decode, or damaged"]))
            continue
        try:
            rows.extend(judge_photo(name, image, scorer, gate, all_faces))
        except (FrameError, ValueError, cv2.error, MemoryError) as e:
            rows.append(Row(name, reasons=[f"could not be scored: {e}"]))
    if show:
        print(file=sys.stderr)
    return rows


def sort_rows(rows: list[Row], key: str) -> list[Row]:
    """``name``: as found; a score: best first, rows without a finite score (no face, error) last."""
    if key == "name":
        return rows

    def order(r: Row) -> tuple[int, float]:
        v = getattr(r, key)
        return (0, -v) if v is not None and np.isfinite(v) else (1, 0.0)

    return sorted(rows, key=order)


def print_table(rows: list[Row]) -> None:
    cells = [list(COLUMNS)] + [r.cells() for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    for line in cells[:1] + [["-" * w for w in widths]] + cells[1:]:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())


def scale_line(scales: dict[str, str]) -> str:
    """What the scores' numbers mean, in one line under the table (the bundle's scale sections)."""
    return "scores: " + "; ".join(f"{name} is {text}" for name, text in scales.items())


def write_outputs(rows: list[Row], args: argparse.Namespace, scorer: Scorer, gate: GateConfig) -> None:
    """The CSV and JSON files; created exclusively unless --force (a file that appeared meanwhile is kept)."""
    mode = "w" if args.force else "x"
    if args.csv is not None:
        with open(args.csv, mode, newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(COLUMNS)
            w.writerows(r.cells() for r in rows)
    if args.json is not None:
        doc = {"bundle_id": scorer.info.bundle_id, "bundle": scorer.info.bundle_path, "target": scorer.info.target,
               "backend": scorer.info.backend, "scales": scorer.info.scales, "gate": dataclasses.asdict(gate),
               "gate_overrides": args.gate, "rows": [dataclasses.asdict(r) for r in rows]}
        with open(args.json, mode, encoding="utf-8") as f:
            f.write(json.dumps(finite_or_null(doc), indent=2, allow_nan=False))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unreadable: list[tuple[Path, OSError]] = []
    try:
        files = list(find_images(args.images, unreadable))
    except OSError as e:
        print(f"fiqa-score: error: {e}", file=sys.stderr)
        return 2
    for folder, e in unreadable:  # said, never skipped in silence: its photos are missing from the results
        print(f"fiqa-score: {'warning' if files else 'error'}: cannot read folder {display_name(folder)} "
              f"({e.strerror or e}), so its photos are not judged; fix its permissions, or run as a user who may "
              "read it", file=sys.stderr)
    if not files and unreadable:
        return 2
    if not files:
        print(f"fiqa-score: error: no photos found in {', '.join(map(str, args.images))} (looked for "
              f"{' '.join(sorted(IMAGE_SUFFIXES))})", file=sys.stderr)
        return 2
    options = {"max_side": args.max_side} if args.detector == "retinaface" else None
    try:
        scorer = Scorer(args.bundle, backend=args.backend, detector=args.detector, threads=args.threads,
                        detector_options=options)
    except (BundleError, BackendUnavailable, DetectorUnavailable, RuntimeError, ValueError) as e:
        print(f"fiqa-score: error: {e}", file=sys.stderr)
        return 2
    with scorer:
        try:
            gate = scorer.bundle.gate_config(**args.gate)
        except ValueError as e:  # an override the bundle's other thresholds contradict
            print(f"fiqa-score: error: --gate: {e}", file=sys.stderr)
            return 2
        rows = sort_rows(score_photos(files, scorer, args.all_faces, gate), args.sort)
        print_table(rows)
        try:
            write_outputs(rows, args, scorer, gate)
        except OSError as e:
            print(f"fiqa-score: error: could not write the results: {e}", file=sys.stderr)
            return 2
    counts = {v: sum(r.verdict == v for r in rows) for v in ("accept", "reject", "not_judged", "no_face", "error")}
    faces = sum(r.face is not None for r in rows)
    print(f"{len(files)} photos, {faces} faces judged: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) +
          f" (bundle {scorer.info.bundle_id}, {scorer.info.backend})")
    print(scale_line(scorer.info.scales))
    if unreadable:
        print(f"{len(unreadable)} folder(s) could not be read; their photos are not in the results (see above)",
              file=sys.stderr)
    return 1 if counts["error"] or unreadable else 0


if __name__ == "__main__":
    raise SystemExit(main())
