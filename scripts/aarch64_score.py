"""Helper of scripts/check_aarch64.sh: pick the photos, score them, compare two architectures.

Runs with the device side only (numpy, OpenCV, fiqa_sdk and its engines; no torch, no scipy), on the x86 host
and inside the emulated arm64 environment alike.

  aarch64_score.py pick WORKDIR [PHOTO_OR_FOLDER ...] [--count N]   host: photos -> WORKDIR/photos, aligned.npy
  aarch64_score.py score WORKDIR --out FILE.json [--threads N]       either side: both default bundles
  aarch64_score.py compare HOST.json ARM.json [--max-abs D] [--min-srcc R]   table; exit 1 past the tolerance
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np

# (label, bundle folder key in fiqa_sdk.bundle.DEFAULT_BUNDLES, backend): each default bundle in the engine it
# is meant for: the ONNX models of default-cpu in ONNX Runtime, the full-INT8 TFLite of default-android-arm64 in
# LiteRT.
BUNDLES = (("default-cpu", "cpu", "onnxruntime"), ("default-android-arm64", "android-arm64", "litert"))
PACKAGES = ("numpy", "opencv-python-headless", "onnxruntime", "ai-edge-litert", "fiqa-sdk")


def _die(msg: str) -> None:
    print(f"aarch64_score: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


# ---------------------------------------------------------------------------------------------------- pick
def _variants(name: str, img: np.ndarray) -> dict[str, np.ndarray]:
    """A shipped photo as is and degraded four ways, so a handful of photos spans a range of quality."""
    h, w = img.shape[:2]
    small = cv2.resize(img, (max(1, w // 3), max(1, h // 3)), interpolation=cv2.INTER_AREA)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 12])
    gamma = (np.linspace(0, 1, 256) ** 2.2 * 255).astype(np.uint8)
    return {f"{name}.png": img,
            f"{name}_blur.png": cv2.GaussianBlur(img, (0, 0), 2.5),
            f"{name}_lowres.png": cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR),
            f"{name}_jpeg12.png": cv2.imdecode(jpg, cv2.IMREAD_COLOR) if ok else img,
            f"{name}_dark.png": cv2.LUT(img, gamma)}


def cmd_pick(args: argparse.Namespace) -> int:
    from fiqa_sdk import align_face, create_detector
    from fiqa_sdk.score_photos import find_images

    work = args.workdir
    photos = work / "photos"
    if photos.exists():
        shutil.rmtree(photos)
    photos.mkdir(parents=True)
    source = ""
    default = args.default_dir
    if args.paths or (default is not None and default.is_dir()):
        roots = args.paths or [default]
        try:
            found = list(find_images(roots))
        except OSError as e:
            _die(str(e))
        if not found:
            _die(f"no photos found in {', '.join(map(str, roots))}")
        # evenly spaced over the sorted list: many people, deterministic from run to run
        idx = np.unique(np.linspace(0, len(found) - 1, min(args.count, len(found))).round().astype(int))
        for i, k in enumerate(idx):
            src = found[k]
            shutil.copyfile(src, photos / f"{i:03d}_{src.name}")
        source = f"{len(idx)} of {len(found)} photos in {', '.join(map(str, roots))}"
    else:
        from fiqa_sdk import load_sample, sample_images
        names = sorted(sample_images())
        if not names:
            _die(f"{default} is absent and no package that ships a sample photo is installed "
                 "(insightface, matplotlib, scikit-image); pass photos or a folder")
        for name in names:
            for fname, img in _variants(name, load_sample(name)).items():
                cv2.imwrite(str(photos / fname), img)
        source = f"the SDK's sample photos ({', '.join(names)}), each as is and blurred/low-res/JPEG-12/dark"
    # The same aligned faces for both machines (the host's detections): the model's numerics alone.
    det = create_detector("retinaface")
    crops, marks = [], []
    for p in sorted(photos.iterdir()):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is not None:
            for d in det.detect(img):
                crops.append(align_face(img, d.landmarks))
                marks.append({"image": p.name, "landmarks": np.asarray(d.landmarks, float).tolist()})
    det.close()
    if not crops:
        _die("no face found in any of the photos")
    np.save(work / "aligned.npy", np.stack(crops))
    (work / "host_landmarks.json").write_text(json.dumps(marks))
    (work / "source.txt").write_text(source + "\n")
    print(f"{sum(1 for _ in photos.iterdir())} photos ({source}), {len(crops)} faces aligned on the host")
    return 0


# --------------------------------------------------------------------------------------------------- score
def _versions() -> dict[str, str | None]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cmd_score(args: argparse.Namespace) -> int:
    import fiqa_sdk
    from fiqa_sdk import Scorer, align_face, create_detector
    from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES

    sdk_file = Path(fiqa_sdk.__file__).resolve()
    if args.expect_sdk_under is not None and args.expect_sdk_under.resolve() not in sdk_file.parents:
        _die(f"fiqa_sdk was imported from {sdk_file}, not from {args.expect_sdk_under}")
    work = args.workdir
    files = sorted((work / "photos").iterdir())
    aligned = np.load(work / "aligned.npy")
    t0 = time.perf_counter()
    det = create_detector("retinaface", threads=args.threads)
    frames = []
    for i, p in enumerate(files, 1):  # detect + align once, as Scorer.score_frame does, then score with each bundle
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        dets = det.detect(img) if img is not None else []
        frames.append((p.name, dets, [align_face(img, d.landmarks) for d in dets]))
        if args.progress and (i % 10 == 0 or i == len(files)):
            print(f"  {platform.machine()}: detected faces in {i}/{len(files)} photos "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    t_detect = time.perf_counter() - t0
    # The host's landmarks warped here: does this machine's OpenCV make the same crops from the same points?
    warped = np.stack([align_face(cv2.imread(str(work / "photos" / m["image"]), cv2.IMREAD_COLOR),
                                  np.asarray(m["landmarks"], np.float32))
                       for m in json.loads((work / "host_landmarks.json").read_text())])
    diff = np.abs(warped.astype(int) - aligned.astype(int))
    doc = {"warp_vs_host": {"max_level_diff": int(diff.max()), "frac_values_differ": float((diff > 0).mean())},
           "machine": platform.machine(), "python": platform.python_version(), "versions": _versions(),
           "fiqa_sdk": str(sdk_file), "detector_backend": det.backend_name, "threads": args.threads,
           "photos": len(files), "detect_s": round(t_detect, 2), "bundles": {}}
    for label, key, backend in BUNDLES:
        t1 = time.perf_counter()
        with Scorer(BUNDLES_DIR / DEFAULT_BUNDLES[key], backend=backend, detector=det,
                    threads=args.threads) as scorer:
            a = scorer.score(aligned)
            rows = []
            for name, dets, crops in frames:
                s = scorer.score(np.stack(crops)) if crops else None
                rows.append({"image": name, "faces": [
                    {"box": [float(v) for v in d.box], "landmarks": np.asarray(d.landmarks, float).tolist(),
                     "utility": float(s.utility[i]), "perceptual": float(s.perceptual[i])}
                    for i, d in enumerate(dets)]})
            doc["bundles"][label] = {
                "backend": scorer.info.backend, "model_file": scorer.info.model_file,
                "bundle_id": scorer.info.bundle_id,
                "aligned": {"utility": a.utility.tolist(), "perceptual": a.perceptual.tolist()},
                "frames": rows, "score_s": round(time.perf_counter() - t1, 2)}
    det.close()
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"{platform.machine()}: scored {len(files)} photos ({sum(len(f[1]) for f in frames)} faces) and "
          f"{len(aligned)} aligned faces with {len(BUNDLES)} bundles in {time.perf_counter() - t0:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------------- compare
def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's rho needs), in numpy alone."""
    order = np.argsort(x, kind="mergesort")
    r = np.empty(len(x), float)
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def srcc(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _match_frames(host_rows: list[dict], arm_rows: list[dict]):
    """Pairs of (host face, arm face) of the same photo whose boxes overlap (IoU >= 0.5), greedily by IoU;
    and the number of faces either side found that the other did not."""
    pairs, unmatched = [], 0
    arm_by_name = {r["image"]: r["faces"] for r in arm_rows}
    for r in host_rows:
        hf, af = r["faces"], arm_by_name.get(r["image"], [])
        cand = sorted(((_iou(h["box"], a["box"]), i, j) for i, h in enumerate(hf) for j, a in enumerate(af)),
                      reverse=True)
        used_h, used_a = set(), set()
        for iou, i, j in cand:
            if iou >= 0.5 and i not in used_h and j not in used_a:
                used_h.add(i), used_a.add(j)
                pairs.append((hf[i], af[j]))
        unmatched += (len(hf) - len(used_h)) + (len(af) - len(used_a))
    return pairs, unmatched


def _stats(h: dict, a: dict) -> tuple[int, np.ndarray, np.ndarray, float, float]:
    hu, hp = np.asarray(h["utility"], float), np.asarray(h["perceptual"], float)
    au, ap = np.asarray(a["utility"], float), np.asarray(a["perceptual"], float)
    return len(hu), np.abs(au - hu), np.abs(ap - hp), srcc(hu, au), srcc(hp, ap)


def cmd_compare(args: argparse.Namespace) -> int:
    host, arm = (json.loads(p.read_text()) for p in (args.host, args.arm))
    for side, doc in (("host", host), ("arm ", arm)):
        print(f"{side}: {doc['machine']} python {doc['python']}  " +
              " ".join(f"{k}={v}" for k, v in doc["versions"].items() if v))
    print("seconds (arm64 | host): detection " + f"{arm['detect_s']} | {host['detect_s']}, " +
          ", ".join(f"{k} {v['score_s']} | {host['bundles'].get(k, {}).get('score_s')}"
                    for k, v in arm["bundles"].items()))
    limits = {"aligned": args.max_abs_model, "frames": args.max_abs}
    header = ("bundle", "engine (model)", "faces", "n", "max|du|", "max|dp|", "mean|du|", "mean|dp|", "SRCC u",
              "SRCC p", "result")
    lines, failed, notes = [], False, []
    for label, hb in host["bundles"].items():
        ab = arm["bundles"].get(label)
        if ab is None:
            lines.append((label, hb["backend"], "-", "0", *["-"] * 6, "FAIL: not scored on arm64"))
            failed = True
            continue
        engine = (hb["backend"] if hb["backend"] == ab["backend"] else f"{hb['backend']}/{ab['backend']}") + \
            f" ({ab['model_file']})"
        pairs, unmatched = _match_frames(hb["frames"], ab["frames"])
        if not notes and pairs:  # one detector serves both bundles: say it once
            lm = max(float(np.abs(np.subtract(h["landmarks"], a["landmarks"])).max()) for h, a in pairs)
            notes.append(f"detection: {len(pairs)} faces found on both, {unmatched} on one side only; landmarks "
                         f"differ by at most {lm:.3f} px")
        sets = {"aligned": (hb["aligned"], ab["aligned"]),
                "frames": tuple({k: [f[k] for f in side] for k in ("utility", "perceptual")}
                                for side in zip(*pairs)) if pairs else ({"utility": []}, {"utility": []})}
        for mode, (h, a) in sets.items():
            n = len(h["utility"])
            if n == 0 or len(a["utility"]) != n:
                lines.append((label, engine, mode, str(n), *["-"] * 6, "FAIL: no faces to compare"))
                failed = True
                continue
            n, du, dp, su, sp = _stats(h, a)
            bad = [why for why, cond in (
                (f"max|d| > {limits[mode]}", max(du.max(), dp.max()) > limits[mode]),
                (f"SRCC < {args.min_srcc}", n >= 3 and not min(su, sp) >= args.min_srcc),
                (f"{unmatched} faces found on one side only", mode == "frames" and unmatched > args.max_unmatched))
                if cond]
            failed |= bool(bad)
            lines.append((label, engine, mode, str(n), f"{du.max():.3f}", f"{dp.max():.3f}", f"{du.mean():.3f}",
                          f"{dp.mean():.3f}", f"{su:.4f}", f"{sp:.4f}", "FAIL: " + "; ".join(bad) if bad else "ok"))
    w = arm.get("warp_vs_host")
    if w is not None:
        notes.append(f"alignment: the host's landmarks warped on arm64 give crops whose values differ by up to "
                     f"{w['max_level_diff']} levels ({100 * w['frac_values_differ']:.2f}% of values differ)")
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * w for w in widths), *lines]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    print("aligned: the same host-aligned 112x112 crops scored on both machines (the model and its engine alone); "
          "frames: each machine detects, aligns and scores the photos itself (the whole device pipeline). "
          "d: |arm64 - x86| on the 0-100 scale; u: utility, p: perceptual.")
    for n in notes:
        print("  " + n)
    print(f"tolerance: max|d| <= {args.max_abs_model} (aligned) and <= {args.max_abs} (frames) points, SRCC >= "
          f"{args.min_srcc}, for each bundle and score; at most {args.max_unmatched} face(s) found on one side only")
    print("RESULT: " + ("FAIL" if failed else "PASS"))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="aarch64_score.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pick", help="copy the photos to score into WORKDIR/photos; align their faces")
    pk.add_argument("workdir", type=Path)
    pk.add_argument("paths", nargs="*", type=Path)
    pk.add_argument("--count", type=int, default=40)
    pk.add_argument("--default-dir", type=Path, default=None,
                    help="the photos to take without PATHs when it exists (check_aarch64.sh: ../shared/data/lfw-dev)")
    sc = sub.add_parser("score", help="score WORKDIR's photos and aligned faces with both default bundles")
    sc.add_argument("workdir", type=Path)
    sc.add_argument("--out", type=Path, required=True)
    sc.add_argument("--threads", type=int, default=None)
    sc.add_argument("--expect-sdk-under", type=Path, default=None)
    sc.add_argument("--progress", action="store_true", help="say how far detection has come")
    cp = sub.add_parser("compare", help="compare the host's scores with the arm64 ones")
    cp.add_argument("host", type=Path)
    cp.add_argument("arm", type=Path)
    cp.add_argument("--max-abs", type=float, default=3.0, help="largest |difference| allowed, frames")
    cp.add_argument("--max-abs-model", type=float, default=2.0, help="largest |difference| allowed, aligned crops")
    cp.add_argument("--min-srcc", type=float, default=0.99)
    cp.add_argument("--max-unmatched", type=int, default=0)
    args = p.parse_args(argv)
    if getattr(args, "count", 1) < 1:
        p.error("--count must be at least 1")
    return {"pick": cmd_pick, "score": cmd_score, "compare": cmd_compare}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
