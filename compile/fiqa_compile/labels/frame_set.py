"""Faces degraded in the frame and embedded by both FR models: the sample set behind utility labels and the EDC.

For every photo, the clean frame and seeded degraded versions of the *whole frame* are detected and aligned as
the device does (RetinaFace with its device defaults, landmark refinement included), so a degradation that moves
the landmarks or loses the face does to the sample what it does on a device. Each found face is embedded by dlib's
ResNet (its own 68-point alignment in the frame) and by MobileFaceNet (the 112x112 crop and its mirror image,
norms kept). A face the detector loses is kept as a row with ``detected`` false: the device never scores it.

Two protocols draw the chains:
  * ``train``: chains of one or two of every degradation the calibration library has (``sample_chain``);
  * ``eval``: one version per damage family (blur, noise, JPEG, downscaling, low light), a single step each, so
    the EDC can be broken down by what damaged the face.

Shards are written atomically and skipped on restart, so an interrupted build resumes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SET_VERSION = 1
PROTOCOLS = ("train", "eval")
# Damage families of the eval protocol: each version of a photo gets one step of one kind of its family.
EVAL_FAMILIES: dict[str, tuple[str, ...]] = {
    "blur": ("gaussian_blur", "motion_blur", "defocus"),
    "noise": ("gaussian_noise", "poisson_noise"),
    "jpeg": ("jpeg",),
    "downscale": ("downscale",),
    "low_light": ("low_light",),
}
EVAL_SEVERITY = (0.15, 1.0)
SHARD = 64


def chains_for(protocol: str, photo: int, versions: int, seed: int):
    """The seeded chains of one photo (``versions`` of them; the eval protocol uses one per family)."""
    from fiqa_calibration.degradations import Chain, Step, sample_chain

    if protocol == "train":
        return [sample_chain(np.random.default_rng([seed, photo, v]), max_steps=2) for v in range(1, versions + 1)]
    out = []
    for v, kinds in enumerate(EVAL_FAMILIES.values(), start=1):
        rng = np.random.default_rng([seed, photo, v])
        kind = kinds[int(rng.integers(len(kinds)))]
        out.append(Chain((Step(kind, float(rng.uniform(*EVAL_SEVERITY)), int(rng.integers(0, 2 ** 31))),)))
    return out


def family_of(chain_kinds: str) -> str:
    """Eval family of a version's kind string ('clean' for clean; a multi-step train chain -> 'mixed')."""
    if chain_kinds == "clean":
        return "clean"
    for fam, kinds in EVAL_FAMILIES.items():
        if chain_kinds in kinds:
            return fam
    return "mixed" if "+" in chain_kinds else "other"


@dataclass(frozen=True)
class Job:
    shard: int
    items: list[tuple[int, str, str]]  # (photo index, path, identity)
    protocol: str
    versions: int
    seed: int
    out: str


_WORKER: dict = {}


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)
    from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer
    from fiqa_compile.fr.mobilefacenet import MobileFaceNetRecognizer
    from fiqa_sdk.detection import RetinaFaceDetector

    _WORKER["det"] = RetinaFaceDetector(threads=1)  # the device's defaults
    _WORKER["dlib"] = DlibFaceRecognizer()
    _WORKER["mfn"] = MobileFaceNetRecognizer(threads=1)


def _run_shard(job: Job) -> tuple[int, int, list[str]]:
    import cv2

    from fiqa_calibration.crops import chain_json, frame_versions

    det, dlib_fr, mfn = _WORKER["det"], _WORKER["dlib"], _WORKER["mfn"]
    cols: dict[str, list] = {k: [] for k in ("photo", "identity", "version", "kind", "chain", "severity", "detected",
                                             "box", "lm5", "crop", "emb_dlib", "emb_mfn", "emb_mfn_mirror")}
    failures: list[str] = []
    for photo, path, identity in job.items:
        frame = cv2.imread(path, cv2.IMREAD_COLOR)
        if frame is None:
            failures.append(f"{path}: unreadable")
            continue
        versions, failure = frame_versions(frame, det, photo, chains_for(job.protocol, photo, job.versions, job.seed))
        if failure:
            failures.append(f"{path}: {failure}")
            continue
        for fv in versions:
            found = fv.detection is not None
            cols["photo"].append(photo)
            cols["identity"].append(identity)
            cols["version"].append(fv.version)
            cols["kind"].append(fv.kind)
            cols["chain"].append(chain_json(fv.chain))
            cols["severity"].append(fv.severity)
            cols["detected"].append(found)
            cols["box"].append(fv.detection.box[:4] if found else np.full(4, np.nan, np.float32))
            cols["lm5"].append(fv.detection.landmarks if found else np.full((5, 2), np.nan, np.float32))
            crop = fv.crop if found else np.zeros((112, 112, 3), np.uint8)
            cols["crop"].append(crop)
            if found:
                cols["emb_dlib"].append(dlib_fr.embed(fv.frame, dlib_fr.landmarks68(fv.frame, fv.detection.box)))
                e = mfn.embed_raw(np.stack([crop, np.ascontiguousarray(crop[:, ::-1])]))
            else:
                cols["emb_dlib"].append(np.full(128, np.nan, np.float32))
                e = np.full((2, 192), np.nan, np.float32)
            cols["emb_mfn"].append(e[0])
            cols["emb_mfn_mirror"].append(e[1])
    arrays = {k: np.asarray(v) for k, v in cols.items()}
    if not cols["photo"]:
        arrays = {k: np.zeros((0,)) for k in cols}
    path = Path(job.out) / f"shard_{job.shard:05d}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return job.shard, len(cols["photo"]), failures


def settings_stamp(args: argparse.Namespace, items: list[tuple[int, str, str]]) -> dict:
    from fiqa_calibration.degradations import DEGRADATION_VERSION
    from fiqa_compile.fr.mobilefacenet import SHA256 as MFN_SHA256

    listing = hashlib.sha256("\n".join(f"{i}\t{p}\t{n}" for i, p, n in items).encode()).hexdigest()
    return {"set_version": SET_VERSION, "degradation_version": DEGRADATION_VERSION, "protocol": args.protocol,
            "versions": args.versions, "seed": args.seed, "photos_sha256": listing, "photos": len(items),
            "fr_models": {"dlib": "dlib-resnet-v1", "mobilefacenet": MFN_SHA256}, "detector": "retinaface device defaults"}


def select_items(faces: str, split: str) -> list[tuple[int, str, str]]:
    """(photo index, path, identity) of the requested side of the project's split (``held_out_people``): the
    held-out side holds only people no embedded model was trained on."""
    from fiqa_calibration import FaceFolder, held_out_people

    items = [(i, str(p), ident) for i, (p, ident) in enumerate(FaceFolder(faces))]
    if split == "all":
        return items
    held = held_out_people(ident for _, _, ident in items)
    return [it for it in items if (it[2] in held) == (split == "held-out")]


def load(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """All shards of a built set, concatenated (rows ordered by shard)."""
    d = Path(directory)
    shards = sorted(d.glob("shard_*.npz"))
    if not shards:
        raise FileNotFoundError(f"{d}: no shards; build the set with python -m fiqa_compile.labels.frame_set")
    parts = [dict(np.load(s, allow_pickle=False)) for s in shards]
    parts = [p for p in parts if p["photo"].size]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_sets(directories) -> dict[str, np.ndarray]:
    """Several sets of the same photos (other ``--seed``s), as one: each photo's clean row once, the degraded
    versions of later sets numbered after those of earlier ones. Sets of other photos are refused."""
    directories = [Path(d) for d in directories]
    stamps = [json.loads((d / "settings.json").read_text()) for d in directories]
    if len({s["photos_sha256"] for s in stamps}) > 1:
        raise ValueError(f"{', '.join(map(str, directories))} were not built from the same photos; merge only sets "
                         "of one --faces/--split that differ in --seed")
    merged = load(directories[0])
    for d in directories[1:]:
        more = load(d)
        keep = more["version"] > 0
        offset = int(merged["version"].max())
        more = {k: v[keep] for k, v in more.items()}
        more["version"] = more["version"] + offset
        merged = {k: np.concatenate([merged[k], more[k]]) for k in merged}
    return merged


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fiqa_compile.labels.frame_set", description=__doc__.split("\n\n")[0])
    p.add_argument("--faces", required=True, help="face folder: <root>/<identity>/<photo>.jpg")
    p.add_argument("--out", required=True, help="output folder (shards + settings.json); resumes when settings match")
    p.add_argument("--split", choices=("train", "held-out", "all"), default="all",
                   help="which people: the project's training side, its held-out people, or all (default: all)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="train", help="how degradations are drawn (default: train)")
    p.add_argument("--versions", type=int, default=4, help="degraded versions per photo, train protocol (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="degradation seed (default: 0)")
    p.add_argument("--workers", type=int, default=2, help="processes (default: 2)")
    p.add_argument("--limit", type=int, default=0, help="only the first N photos of the selection (0: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    args = build_parser().parse_args(argv)
    items = select_items(args.faces, args.split)
    if args.limit:
        items = items[:args.limit]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stamp = settings_stamp(args, items)
    stamp_path = out / "settings.json"
    if stamp_path.exists() and json.loads(stamp_path.read_text()) != stamp:
        print(f"{out}: was built with other settings ({stamp_path}); use another --out", file=sys.stderr)
        return 2
    stamp_path.write_text(json.dumps(stamp, indent=2))
    jobs = [Job(s, items[i:i + SHARD], args.protocol, args.versions, args.seed, str(out))
            for s, i in enumerate(range(0, len(items), SHARD))]
    todo = [j for j in jobs if not (out / f"shard_{j.shard:05d}.npz").exists()]
    print(f"{len(items)} photos, {len(jobs)} shards, {len(jobs) - len(todo)} already done", file=sys.stderr)
    failures: list[str] = []
    t0 = time.time()
    with ProcessPoolExecutor(args.workers, initializer=_init_worker) as pool:
        futures = [pool.submit(_run_shard, j) for j in todo]
        for f in tqdm(as_completed(futures), total=len(futures), desc="shards", unit="shard"):
            failures += f.result()[2]
    (out / "failures.txt").write_text("\n".join(sorted(failures)) + ("\n" if failures else ""))
    print(f"done in {time.time() - t0:.0f} s; {len(failures)} photos without a face (failures.txt)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
