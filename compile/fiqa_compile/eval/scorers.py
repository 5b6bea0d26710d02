"""Quality methods for the EDC, from a command-line spec, each a callable scoring aligned 112x112 crops.

Specs (``fiqa-eval --method``):

* ``teacher:DIR``        a trained teacher (``teacher.json`` + ``teacher.pt``), on its label scale;
                         ``teacher:DIR#tta`` for a utility teacher's mean over its 10 test-time views
* ``bundle:DIR``         a compiled bundle's student through :class:`fiqa_sdk.Scorer`; ``bundle:DIR#perceptual``
                         for its perceptual output (default ``#utility``)
* ``student:DIR``        a distilled student (``student.json`` + ``student.pt``) in torch fp32, one pass;
                         ``student:DIR#mirror`` for the mean over each face and its mirror image
* ``baseline:sharpness`` variance of the Laplacian of the aligned face (blur detector, Pech-Pacheco et al.)
* ``baseline:face_size`` inter-ocular distance of the face in its source photo, divided by the downscale factor
                         of its degradation (the resolution the face really has)
* ``baseline:random``    seeded uniform noise: the floor a learned measure has to beat (averaged over seeds)

Higher is better for every method.
"""
from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fiqa_compile.eval.pairs import chain_downscale

BASELINES = ("sharpness", "face_size", "random")
SPEC_HELP = "teacher:DIR[#tta], bundle:DIR[#utility|#perceptual], student:DIR[#mirror], baseline:" + "|".join(BASELINES)


class MethodSpecError(ValueError):
    """A --method spec that names no method, or a method that cannot be built; the message says the fix."""


class MethodUnavailable(MethodSpecError):
    """A valid method whose inputs are missing here (e.g. face size without the source photos)."""


@dataclass(frozen=True)
class SampleView:
    """What a method may look at: aligned crops, their 68 landmarks, and the faces' effective size (if known)."""

    crops: np.ndarray               # [N, 112, 112, 3] uint8 BGR
    lm68: np.ndarray | None = None  # [N, 68, 2] crop pixels (DSL-FIQA's landmark guidance)
    face_px: np.ndarray | None = None  # [N] effective inter-ocular distance in pixels

    def __len__(self) -> int:
        return len(self.crops)


@dataclass
class QualityMethod:
    """One quality measure. ``stochastic`` methods give another ordering per seed and are averaged over seeds."""

    spec: str
    name: str
    fn: Callable[[SampleView, int], np.ndarray]
    stochastic: bool = False

    def score(self, view: SampleView, seed: int = 0) -> np.ndarray:
        """Qualities of ``view``'s samples, checked: one finite float per sample."""
        q = np.asarray(self.fn(view, seed), dtype=np.float64).reshape(-1)
        if len(q) != len(view):
            raise RuntimeError(f"{self.spec} returned {len(q)} qualities for {len(view)} faces")
        bad = int(np.count_nonzero(~np.isfinite(q)))
        if bad:
            raise RuntimeError(f"{self.spec} returned {bad} NaN/inf qualities of {len(q)}; the method is broken "
                               "for these faces (check its inputs)")
        return q


# ------------------------------------------------------------------------------------------------- baselines
def sharpness(view: SampleView, seed: int = 0) -> np.ndarray:
    from fiqa_sdk.measures import laplacian_variance

    return np.array([laplacian_variance(c) for c in view.crops], dtype=np.float64)


def face_size(view: SampleView, seed: int = 0) -> np.ndarray:
    if view.face_px is None:
        raise MethodUnavailable("baseline:face_size needs each face's size in its source photo; aligned crops all "
                                "have the same size. Evaluate a face folder (--faces DIR), or give a label set's "
                                "source photos with --photos DIR")
    return np.asarray(view.face_px, dtype=np.float64)


def random_quality(view: SampleView, seed: int = 0) -> np.ndarray:
    return np.random.default_rng([seed, 1234]).random(len(view))


def _baseline(kind: str, spec: str) -> QualityMethod:
    if kind == "sharpness":
        return QualityMethod(spec, "Laplacian sharpness", sharpness)
    if kind == "face_size":
        return QualityMethod(spec, "face size (IOD px)", face_size)
    if kind == "random":
        return QualityMethod(spec, "random", random_quality, stochastic=True)
    raise MethodSpecError(f"unknown baseline {kind!r} in --method {spec!r}; use baseline:{'|'.join(BASELINES)}")


# ---------------------------------------------------------------------------------------- teachers / bundles
def _teacher(target: str, spec: str) -> QualityMethod:
    from fiqa_compile.teachers import TeacherError, load_teacher

    path_text, _, mode = target.partition("#")
    path = Path(path_text)
    if mode not in ("", "tta"):
        raise MethodSpecError(f"--method {spec!r}: unknown teacher mode {mode!r}; use teacher:{path_text} or "
                              f"teacher:{path_text}#tta")
    if not path.exists():
        raise MethodSpecError(f"--method {spec!r}: {path} does not exist; give a teacher run directory "
                              "(teacher.json + teacher.pt, made by fiqa-train)")
    try:
        teacher = load_teacher(path)
    except TeacherError as e:
        raise MethodSpecError(f"--method {spec!r}: {e}") from e
    if mode == "tta" and teacher.task != "utility":
        raise MethodSpecError(f"--method {spec!r}: #tta is for the utility teacher; {path} is a {teacher.task} "
                              "teacher (it averages its own crops already)")
    tta = mode == "tta"
    name = f"{teacher.task} teacher ({teacher.info.get('model', path.name)}{', 10-view mean' if tta else ''})"
    return QualityMethod(spec, name, lambda v, _s: teacher.score(v.crops, v.lm68, tta=tta))


def _bundle(target: str, spec: str, backend: str) -> QualityMethod:
    path_text, _, output = target.partition("#")
    output = output or "utility"
    path = Path(path_text)
    if not path.exists():
        raise MethodSpecError(f"--method {spec!r}: {path} does not exist; give a bundle folder (manifest.json)")
    from fiqa_sdk.bundle import BundleError
    from fiqa_sdk.scorer import Scorer

    try:
        scorer = Scorer(path, backend=backend, detector=None)
    except BundleError as e:
        raise MethodSpecError(f"--method {spec!r}: {e}") from e
    if output not in scorer.score_names:
        raise MethodSpecError(f"--method {spec!r}: the bundle has the outputs {list(scorer.score_names)}, not "
                              f"{output!r}; use bundle:{path_text}#{scorer.score_names[0]}")

    def run(view: SampleView, _seed: int) -> np.ndarray:
        batch = scorer.score(view.crops)
        return batch.utility if output == "utility" else batch.perceptual

    return QualityMethod(spec, f"student {output} ({scorer.info.precision}, {scorer.info.backend})", run)


def _student(target: str, spec: str) -> QualityMethod:
    path_text, _, mode = target.partition("#")
    if mode not in ("", "mirror"):
        raise MethodSpecError(f"--method {spec!r}: unknown student mode {mode!r}; use student:{path_text} or "
                              f"student:{path_text}#mirror")
    from fiqa_compile.distill import _predict
    from fiqa_compile.errors import CompileError
    from fiqa_compile.student_store import load_student

    try:
        model, info = load_student(Path(path_text))
    except CompileError as e:
        raise MethodSpecError(f"--method {spec!r}: {e}") from e
    index = next(s["index"] for s in info["scores"] if s["name"] == "utility")
    mirror = mode == "mirror"
    return QualityMethod(spec, f"student utility ({info['student']}, torch fp32{', face + mirror' if mirror else ''})",
                         lambda v, _s: _predict(model, v.crops, mirror_average=mirror)[:, index])


def parse_method(spec: str, bundle_backend: str = "auto") -> QualityMethod:
    """Build the method a ``--method`` spec names; :class:`MethodSpecError` explains a spec it cannot use."""
    kind, sep, value = str(spec).partition(":")
    if not sep or not value:
        raise MethodSpecError(f"--method {spec!r} is not KIND:VALUE; use one of {SPEC_HELP}")
    if kind == "baseline":
        return _baseline(value, spec)
    if kind == "teacher":
        return _teacher(value, spec)
    if kind == "bundle":
        return _bundle(value, spec, bundle_backend)
    if kind == "student":
        return _student(value, spec)
    raise MethodSpecError(f"unknown method kind {kind!r} in --method {spec!r}; use one of {SPEC_HELP}")


def default_specs() -> list[str]:
    """The embedded teachers that exist in this install, then every baseline."""
    from fiqa_compile.teachers import embedded_teacher_dirs

    specs = [f"teacher:{d}" for d in embedded_teacher_dirs().values() if (d / "teacher.json").is_file()]
    return specs + [f"baseline:{b}" for b in BASELINES]


# ------------------------------------------------------------------------------------------ face-size input
def effective_face_px(source_iod: np.ndarray, chains: np.ndarray) -> np.ndarray:
    """Source inter-ocular distance divided by each sample's downscale factor: the face's real resolution."""
    return np.asarray(source_iod, np.float64) / np.array([chain_downscale(str(c)) for c in chains])


def _faces_root_from_meta(labels_dir: Path) -> Path | None:
    meta_path = labels_dir / "labels.json"
    if not meta_path.is_file():
        return None
    command = json.loads(meta_path.read_text()).get("command", "")
    words = shlex.split(command)
    for i, w in enumerate(words):
        if w == "--faces" and i + 1 < len(words):
            return Path(words[i + 1])
        if w.startswith("--faces="):
            return Path(w.split("=", 1)[1])
    return None


def label_source_iod(labels_dir: str | Path, labels, rows: np.ndarray, photos_root: str | Path | None = None,
                     progress: bool = False) -> np.ndarray:
    """Inter-ocular distance (px) of each of ``rows``' faces in its source photo, NaN for the other rows.

    A label set stores aligned crops only, so the photos are read again (paths from ``labels.csv``, the folder
    from ``photos_root`` or the ``--faces`` of the recorded fiqa-labels command) and detected with the same
    RetinaFace settings and central-face rule as ``fiqa-labels``.
    """
    import cv2

    from fiqa_calibration.crops import central_face
    from fiqa_sdk.detection import RetinaFaceDetector
    from fiqa_sdk.measures import inter_ocular_distance

    labels_dir = Path(labels_dir)
    root = Path(photos_root) if photos_root is not None else _faces_root_from_meta(labels_dir)
    if root is None or not root.is_dir():
        raise MethodUnavailable(f"baseline:face_size needs the label set's source photos, but "
                                f"{root or 'no --faces folder recorded in labels.json'} is not a directory; "
                                "pass --photos DIR (the folder fiqa-labels read)")
    csv_path = labels_dir / "labels.csv"
    if not csv_path.is_file():
        raise MethodUnavailable(f"baseline:face_size needs {csv_path} (photo paths per sample); rebuild the labels")
    with open(csv_path, newline="") as f:
        rel = [r[0] for r in list(csv.reader(f))[1:]]
    if len(rel) != len(labels):
        raise MethodUnavailable(f"{csv_path} has {len(rel)} rows but labels.npz {len(labels)}; they are from "
                                "different runs, rebuild the labels")
    det = RetinaFaceDetector(score_threshold=0.6, max_side=320, threads=1, refine_landmarks=False)
    out = np.full(len(labels), np.nan)
    by_photo: dict[str, float] = {}
    todo = sorted({rel[r] for r in rows})
    if progress:
        from tqdm import tqdm

        todo = tqdm(todo, desc="measuring source face sizes", mininterval=5)
    for name in todo:
        frame = cv2.imread(str(root / name), cv2.IMREAD_COLOR)
        if frame is None:
            raise MethodUnavailable(f"cannot read {root / name}; --photos must be the folder fiqa-labels read")
        dets = det(frame)
        if not dets:
            raise MethodUnavailable(f"no face detected in {root / name} now, though fiqa-labels found one; "
                                    "--photos points at other photos than the labels were made from")
        by_photo[name] = inter_ocular_distance(central_face(dets, frame.shape).landmarks)
    for r in rows:
        out[r] = by_photo[rel[r]]
    return out
