"""Build quality labels for a face folder: ``fiqa-labels --faces DIR --out DIR``.

For every photo: detect (RetinaFace), take the most central face, find dlib's 68 landmarks, and warp
the frame onto an *aligned canvas* — the 112x112 ArcFace crop plus a margin on every side. Clean and
seeded degraded versions of the canvas are made; each version gives
  * the 112x112 aligned crop the models train on (cut from the canvas without resampling),
  * a dlib ResNet embedding (utility -> certainty ratio, see :mod:`utility`),
  * a pseudo-MOS against the clean crop (perceptual, see :mod:`perceptual`).
Degrading the aligned canvas, not the raw frame, keeps the degradation parameters in face units.

Work is split into shards written atomically and skipped on restart (resume), so an interrupted run
loses at most one shard per worker.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fiqa_calibration.crops import CANVAS, MARGIN, chain_json, face_versions
from fiqa_compile.cli_args import non_negative_int, positive_int
from fiqa_sdk.preprocess import SPEC

LABELS_VERSION = 1
EMBEDDING_DIM = 128  # dlib's ResNet face descriptor


@dataclass(frozen=True)
class Job:
    shard: int
    items: list[tuple[int, str, str, int]]  # (photo index, path, identity, number of degraded versions)
    seed: int
    max_steps: int
    out: str


_WORKER: dict = {}


def _init_worker() -> None:
    cv2.setNumThreads(1)
    from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer
    from fiqa_sdk.detection import RetinaFaceDetector

    _WORKER["det"] = RetinaFaceDetector(score_threshold=0.6, max_side=320, threads=1, refine_landmarks=False)
    _WORKER["fr"] = DlibFaceRecognizer()


def _run_shard(job: Job) -> tuple[int, int, list[str]]:
    from fiqa_compile.labels.perceptual import pseudo_mos

    det, fr = _WORKER["det"], _WORKER["fr"]
    rows: dict[str, list] = {k: [] for k in ("photo", "version", "crop", "lm68", "emb", "mos", "chain", "severity")}
    failures: list[str] = []
    for photo, path, _identity, n_degraded in job.items:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            failures.append(f"{path}: unreadable")
            continue
        versions, lm_canvas, failure = face_versions(frame, det, photo, n_degraded, job.seed, job.max_steps,
                                                     landmarks68=fr.landmarks68)
        if failure:
            failures.append(f"{path}: {failure}")
            continue
        clean_crop = versions[0].crop
        for fv in versions:
            rows["photo"].append(photo)
            rows["version"].append(fv.version)
            rows["crop"].append(fv.crop)
            rows["lm68"].append(fv.lm68)
            rows["emb"].append(fr.embed(fv.canvas, lm_canvas))
            rows["mos"].append(100.0 if fv.version == 0 else pseudo_mos(fv.crop, clean_crop))
            rows["chain"].append(chain_json(fv.chain))
            rows["severity"].append(fv.severity)
    out = Path(job.out) / f"shard_{job.shard:05d}.npz"
    tmp = out.with_suffix(".tmp.npz")
    n = len(rows["photo"])
    np.savez(tmp, photo=np.asarray(rows["photo"], np.int32), version=np.asarray(rows["version"], np.int16),
             crop=np.asarray(rows["crop"], np.uint8).reshape(n, SPEC.size, SPEC.size, 3),
             lm68=np.asarray(rows["lm68"], np.float32).reshape(n, 68, 2),
             emb=np.asarray(rows["emb"], np.float32).reshape(n, -1) if n else np.zeros((0, EMBEDDING_DIM), np.float32),
             mos=np.asarray(rows["mos"], np.float32),
             chain=np.asarray(rows["chain"], dtype=object).astype(str), severity=np.asarray(rows["severity"], np.float32),
             failures=np.asarray(failures, dtype=str))
    os.replace(tmp, out)
    return job.shard, n, failures


def plan_jobs(faces_root: Path, out: Path, versions: int, seed: int, shard_size: int, max_steps: int,
              limit: int | None) -> tuple[list[tuple[str, str]], list[Job]]:
    from fiqa_calibration.datasets import FaceFolder

    folder = FaceFolder(faces_root)
    items = [(str(p), ident) for p, ident in folder.items]
    if limit:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.permutation(len(items))[:limit])
        items = [items[i] for i in keep]
    counts: dict[str, int] = {}
    for _, ident in items:
        counts[ident] = counts.get(ident, 0) + 1
    # Only identities with >= 2 photos have a leave-one-out centre, so only they get degraded versions.
    planned = [(i, p, ident, versions if counts[ident] >= 2 else 0) for i, (p, ident) in enumerate(items)]
    jobs = [Job(s, planned[k:k + shard_size], seed, max_steps, str(out / "shards"))
            for s, k in enumerate(range(0, len(planned), shard_size))]
    return items, jobs


def assemble(out: Path, items: list[tuple[str, str]], faces_root: Path, meta: dict) -> dict:
    from fiqa_compile.labels.utility import certainty_ratio

    shards = sorted((out / "shards").glob("shard_*.npz"))
    parts = [dict(np.load(s, allow_pickle=False)) for s in shards]
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "failures"}
    failures = [str(f) for p in parts for f in p["failures"]]
    ids = np.array([items[i][1] for i in cat["photo"]])
    clean = cat["version"] == 0
    util = certainty_ratio(cat["emb"], ids, cat["photo"], cat["emb"][clean], ids[clean], cat["photo"][clean])
    np.savez(out / "labels.npz", crop=cat["crop"], lm68=cat["lm68"], emb=cat["emb"], photo=cat["photo"],
             version=cat["version"], identity=ids, mos=cat["mos"], severity=cat["severity"], chain=cat["chain"],
             ccs=util["ccs"].astype(np.float32), nnccs=util["nnccs"].astype(np.float32), cr=util["cr"].astype(np.float32))
    csv_path = out / "labels.csv"
    with open(csv_path, "w") as f:
        f.write("photo,identity,version,severity,chain,ccs,nnccs,cr,mos\n")
        for n in range(len(ids)):
            rel = os.path.relpath(items[cat["photo"][n]][0], faces_root)
            chain = cat["chain"][n].replace('"', "'")
            f.write(f"{rel},{ids[n]},{cat['version'][n]},{cat['severity'][n]:.4f},\"{chain}\","
                    f"{util['ccs'][n]:.6f},{util['nnccs'][n]:.6f},{util['cr'][n]:.6f},{cat['mos'][n]:.4f}\n")
    meta = {**meta, "samples": int(len(ids)), "photos": int(len(np.unique(cat["photo"]))),
            "with_utility": int(np.isfinite(util["cr"]).sum()), "failures": failures,
            "labels_csv_sha256": hashlib.sha256(csv_path.read_bytes()).hexdigest(),
            "labels_npz_sha256": hashlib.sha256((out / "labels.npz").read_bytes()).hexdigest()}
    (out / "labels.json").write_text(json.dumps(meta, indent=2))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="fiqa-labels",
        description="Measure quality labels for a face folder (identity = sub-folder): utility as the certainty ratio "
                    "of dlib's ResNet embeddings and perceptual quality as a pseudo-MOS (MS-SSIM to the clean face), "
                    "over clean and seeded degraded versions. Resumable: re-run the same command to continue.")
    ap.add_argument("--faces", required=True, type=Path, help="face folder, e.g. ../shared/data/lfw-dev")
    ap.add_argument("--out", required=True, type=Path, help="output directory (shards/, labels.npz, labels.csv, labels.json)")
    ap.add_argument("--versions", type=non_negative_int, default=4, help="degraded versions per photo of multi-photo identities (default 4)")
    ap.add_argument("--max-steps", type=positive_int, default=2, help="max degradations chained per version (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the degradations and of --limit (default 0)")
    ap.add_argument("--workers", type=positive_int, default=max(1, (os.cpu_count() or 1)), help="processes (default: all cores)")
    ap.add_argument("--shard-size", type=positive_int, default=100, help="photos per resumable shard (default 100)")
    ap.add_argument("--limit", type=positive_int, default=None, help="label only a seeded random subset of N photos (smoke runs)")
    args = ap.parse_args(argv)
    if not args.faces.is_dir():
        ap.error(f"--faces {args.faces} is not a directory")
    if args.out.exists() and not args.out.is_dir():
        ap.error(f"--out {args.out} is a file; pass a folder for the label set")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shards").mkdir(exist_ok=True)
    # the folder belongs to the settings: shards of other photos must never be relabelled as these
    settings = {"versions": args.versions, "max_steps": args.max_steps, "seed": args.seed, "limit": args.limit,
                "shard_size": args.shard_size, "labels_version": LABELS_VERSION, "faces": str(args.faces.resolve())}
    settings_path = args.out / "settings.json"
    has_shards = any((args.out / "shards").glob("shard_*.npz"))
    if has_shards and settings_path.exists():
        old = json.loads(settings_path.read_text())
        if "faces" not in old:  # label sets made before the folder was recorded
            old["faces"] = settings["faces"]
        if old != settings:
            ap.error(f"{args.out} holds shards made with other settings ({settings_path.read_text().strip()}); "
                     "use another --out or delete it")
    try:
        items, jobs = plan_jobs(args.faces, args.out, args.versions, args.seed, args.shard_size, args.max_steps,
                                args.limit)
    except ValueError as e:  # no photos, no identities
        print(f"fiqa-labels: error: {e}", file=sys.stderr)
        return 2
    settings_path.write_text(json.dumps(settings))
    todo = [j for j in jobs if not (args.out / "shards" / f"shard_{j.shard:05d}.npz").exists()]
    print(f"{len(items)} photos, {len(jobs)} shards, {len(jobs) - len(todo)} already done", flush=True)
    t0 = time.time()
    from tqdm import tqdm

    progress = dict(total=len(todo), desc="labelling shards", file=sys.stdout, mininterval=10)
    if args.workers == 1:
        _init_worker()
        for job in tqdm(todo, **progress):
            _run_shard(job)
    else:
        # spawn, not fork: a forked child inherits ONNX Runtime / OpenMP thread state and can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.workers, initializer=_init_worker, mp_context=ctx) as pool:
            futures = [pool.submit(_run_shard, j) for j in todo]
            for fut in tqdm(as_completed(futures), **progress):
                fut.result()
    from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer

    meta = {"command": "fiqa-labels " + " ".join(sys.argv[1:] if argv is None else argv), "settings": settings,
            "fr_model": DlibFaceRecognizer.name, "utility": "certainty ratio CCS/(NNCCS+1+1e-9), leave-one-out centres",
            "perceptual": "pseudo-MOS = 100 * MS-SSIM(degraded, clean) on the aligned 112x112 face (4 scales)",
            "canvas": {"size": CANVAS, "margin": MARGIN}, "seconds": round(time.time() - t0, 1)}
    meta = assemble(args.out, items, args.faces, meta)
    print(json.dumps({k: v for k, v in meta.items() if k != "failures"}, indent=2))
    print(f"{len(meta['failures'])} photos skipped (see labels.json)")
    if meta["samples"] == 0:
        print(f"fiqa-labels: error: no face was found in any of the {len(items)} photos of {args.faces} (first: "
              f"{meta['failures'][0] if meta['failures'] else '-'}); the label set in {args.out} is empty",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
