"""``Scorer``: a bundle's student model behind one call, on aligned faces or on whole frames.

``score(faces)`` turns aligned 112x112 BGR faces into 0-100 utility/perceptual scores (the bundle manifest's
scale); ``score_frame(frame)`` detects, aligns, scores and measures every face of a frame. The model runs in
whatever engine the bundle and the installed runtimes allow (TensorRT, LiteRT, ONNX Runtime, OpenCV DNN), in
batches no larger than ``max_batch`` so memory stays bounded on a crowded frame.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from fiqa_runtimes import BackendUnavailable, check_threads
from fiqa_sdk.align import align_face
from fiqa_sdk.bundle import Bundle, LoadedModel, default_bundle_path, default_bundle_paths, load_bundle
from fiqa_sdk.detection import Detection, Detector, create_detector
from fiqa_sdk.frames import to_bgr
from fiqa_sdk.measures import image_measures, landmark_measures
from fiqa_sdk.preprocess import SPEC, FaceEncoder, faces_to_tensor, mirror_mean, with_mirror

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaceScore:
    """Scores of one face: 0-100 device scale (higher is better) and the model's raw z-scores."""

    utility: float
    perceptual: float
    utility_z: float
    perceptual_z: float

    def to_dict(self) -> dict[str, float]:
        return {"utility": self.utility, "perceptual": self.perceptual, "utility_z": self.utility_z,
                "perceptual_z": self.perceptual_z}


class ScoreBatch(Sequence[FaceScore]):
    """Scores of N faces, as a sequence of :class:`FaceScore` and as arrays (``scores``/``z``: [N, 2] in
    ``names`` order)."""

    def __init__(self, scores: np.ndarray, z: np.ndarray, names: tuple[str, ...]):
        self.scores = np.asarray(scores, dtype=np.float64).reshape(-1, len(names))
        self.z = np.asarray(z, dtype=np.float64).reshape(-1, len(names))
        self.names = names

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return ScoreBatch(self.scores[i], self.z[i], self.names)
        u, p = self.names.index("utility"), self.names.index("perceptual")
        row, zrow = self.scores[i], self.z[i]
        return FaceScore(float(row[u]), float(row[p]), float(zrow[u]), float(zrow[p]))

    def __iter__(self) -> Iterator[FaceScore]:
        return (self[i] for i in range(len(self)))

    @property
    def utility(self) -> np.ndarray:
        return self.scores[:, self.names.index("utility")]

    @property
    def perceptual(self) -> np.ndarray:
        return self.scores[:, self.names.index("perceptual")]

    def __repr__(self) -> str:
        return f"ScoreBatch(n={len(self)}, utility={np.round(self.utility, 1).tolist()}, " \
               f"perceptual={np.round(self.perceptual, 1).tolist()})"


@dataclass
class FaceResult:
    """One face of a frame: where it is, what was scored, the scores and the measures the gate explains with.

    ``measures``: :func:`fiqa_sdk.measures.image_measures` of the aligned face plus
    :func:`fiqa_sdk.measures.landmark_measures` of the detector's landmarks (``iod_px``, ``yaw``, ``pitch``,
    ``roll``). When the landmarks are too degenerate for the pose proxies (e.g. mouth above the eyes on an
    upside-down face), the pose keys are absent and ``pose_error`` says why.
    """

    detection: Detection
    aligned: np.ndarray
    utility: float
    perceptual: float
    measures: dict[str, float]
    z: tuple[float, float] = (float("nan"), float("nan"))
    pose_error: str | None = None

    @property
    def scores(self) -> dict[str, float]:
        return {"utility": self.utility, "perceptual": self.perceptual}


@dataclass(frozen=True)
class ScorerInfo:
    """What a Scorer runs: for logs, benchmark tables and capture sidecars."""

    target: str
    bundle_id: str
    bundle_path: str
    backend: str
    model: str
    model_file: str
    format: str
    precision: str
    detector: str | None
    detector_backend: str | None
    threads: int | None
    skipped: tuple[str, ...] = field(default_factory=tuple)
    mirror_average: bool = False  # each face is run twice (as is and mirrored) and its scores averaged
    # score name -> what its 0-100 means, in one line (the manifest's scale section: calibrated or a rank)
    scales: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else dict(v) if isinstance(v, dict) else v)
                for k, v in self.__dict__.items()}


def _layout_hint(shape: tuple[int, ...]) -> str:
    """What to do about an array of this shape that is not N x 112 x 112 x 3: the fix that applies to it."""
    size = SPEC.size
    if len(shape) >= 3 and shape[-3] in (1, 3, 4) and tuple(shape[-2:]) == (size, size):
        order = "(1, 2, 0)" if len(shape) == 3 else "(0, 2, 3, 1)"
        return (f"this looks channels-first ({'CHW' if len(shape) == 3 else 'NCHW'}); aligned faces are "
                f"channels-last BGR: pass faces.transpose{order}")
    if len(shape) >= 3 and tuple(shape[-3:-1]) == (size, size):
        channels = shape[-1]
        if channels in (1, 4):
            return "convert gray/BGRA faces to BGR with fiqa_sdk.to_bgr(face) first"
        if channels == 2:
            return "2 channels is gray + alpha: convert the gray plane with fiqa_sdk.to_bgr(face[..., 0]) first"
        return f"{channels} channels is no image layout (gray 1, BGR 3, BGRA 4): pass the 3-channel BGR face"
    if tuple(shape) == (size, size):
        return "convert gray faces to BGR with fiqa_sdk.to_bgr(face) first"
    return "align faces with fiqa_sdk.align_face(frame, detection.landmarks), or call score_frame(frame)"


def _check_layout(shape: tuple[int, ...], dtype: np.dtype, single: bool = False) -> None:
    """Raise, naming the fix, unless ``shape``/``dtype`` are one aligned face (HxWx3) or (unless ``single``) a batch
    (NxHxWx3) of BGR uint8."""
    if dtype != np.uint8:
        raise ValueError(f"aligned faces must be uint8 BGR (0-255), got dtype {dtype}; "
                         "convert with (face * 255).round().astype(np.uint8) for [0, 1] floats")
    want = (SPEC.size, SPEC.size, 3)
    if tuple(shape[-3:]) != want or len(shape) not in ((3,) if single else (3, 4)):
        raise ValueError(f"expected aligned faces of shape ({SPEC.size}, {SPEC.size}, 3) or "
                         f"(N, {SPEC.size}, {SPEC.size}, 3) BGR uint8, got {tuple(shape)}; {_layout_hint(shape)}")


_UINT8, _FACE = np.dtype(np.uint8), (SPEC.size, SPEC.size, 3)


def _check_faces(faces: np.ndarray | Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Validate aligned faces, with errors that name the fix: an N x 112 x 112 x 3 uint8 array, or for a list of
    faces the list of 112 x 112 x 3 arrays, left unstacked so that :meth:`Scorer.score` copies one batch at a time
    (4,000 faces stacked at once are 150 MB before the float tensor is made)."""
    if type(faces) is np.ndarray and faces.dtype == _UINT8 and faces.shape[-3:] == _FACE and faces.ndim in (3, 4):
        return faces[None] if faces.ndim == 3 else faces  # the usual call, in as few steps as it can be checked
    if isinstance(faces, (list, tuple)):
        if not faces:
            return np.zeros((0, SPEC.size, SPEC.size, 3), np.uint8)
        arrays = [np.asarray(f) for f in faces]  # views of arrays, no copies
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"faces have different shapes {sorted(shapes)}; every aligned face is "
                             f"{SPEC.size}x{SPEC.size}x3 (fiqa_sdk.align_face)")
        bad = next((a.dtype for a in arrays if a.dtype != np.uint8), np.dtype(np.uint8))
        _check_layout(arrays[0].shape, bad, single=True)  # each item one face: the hint is about its shape
        return arrays
    if not isinstance(faces, np.ndarray):
        raise TypeError(f"faces must be a numpy array or a list of arrays, got {type(faces).__name__}")
    _check_layout(faces.shape, faces.dtype)
    return faces[None] if faces.ndim == 3 else faces


def _load_from(path: Path, backend: str, threads: int | None, model: str | None) -> tuple[Bundle, LoadedModel]:
    bundle = load_bundle(path)
    return bundle, bundle.load_model(backend=backend, threads=threads, model=model)


def _load_model(bundle: str | os.PathLike | Bundle | None, backend: str, threads: int | None,
                model: str | None) -> tuple[Bundle, LoadedModel]:
    """The bundle and its model loaded into an engine. ``None``: the embedded defaults, best fit first; with
    ``auto``, one that no runtime can load (found but broken, e.g. a missing shared library) gives way to the next,
    so a broken LiteRT install does not stop the ONNX bundle from running."""
    if isinstance(bundle, Bundle):
        return bundle, bundle.load_model(backend=backend, threads=threads, model=model)
    if bundle is not None:
        return _load_from(Path(bundle), backend, threads, model)
    paths = default_bundle_paths(backend=backend)
    if backend != "auto" or len(paths) < 2:  # a named runtime runs one of them; its own error is the useful one
        return _load_from(default_bundle_path(backend=backend), backend, threads, model)
    failures = []
    for path in paths:
        try:
            return _load_from(path, backend, threads, model)
        except BackendUnavailable as e:
            log.warning("embedded bundle %s: no runtime could load it (%s); trying the next one", path.name, e)
            failures.append(f"{path.name}: {e}")
    raise BackendUnavailable("no embedded default bundle could be loaded (" + "; ".join(failures) + "); reinstall "
                             "the runtime named above, or pip install onnxruntime (fiqa-sdk's 'onnx' extra)")


class Scorer:
    """Scores faces with a bundle's student model.

    Args:
        bundle: a bundle folder, a loaded :class:`~fiqa_sdk.bundle.Bundle`, or ``None`` for the embedded default
            (:func:`~fiqa_sdk.bundle.default_bundle_paths`: with ``backend="auto"``, the next one when no runtime
            of the first can load).
        backend: ``"auto"`` (the bundle's ``backend_preference`` among installed runtimes) or a backend name.
        detector: a detector name for :func:`fiqa_sdk.create_detector`, a :class:`Detector`, or ``None`` when only
            :meth:`score` is used (then :meth:`score_frame` raises).
        threads: inference threads for the model and (RetinaFace) the detector; ``None``: the engines' default.
        max_batch: largest batch sent to the engine at once (capped by a TensorRT bundle's ``max_batch``).
        model: pick a model entry of the bundle by name instead of by backend preference.
        detector_options: extra keyword options for the detector (e.g. ``{"max_side": 320}``).
    """

    def __init__(self, bundle: str | os.PathLike | Bundle | None = None, backend: str = "auto",
                 detector: str | Detector | None = "retinaface", threads: int | None = None, max_batch: int = 16,
                 model: str | None = None, detector_options: dict[str, Any] | None = None):
        check_threads(threads)  # before the bundle's files are hashed
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive integer, got {max_batch!r}")
        self.bundle, self._loaded = _load_model(bundle, backend, threads, model)
        self._engine = self._loaded.backend
        self.detector: Detector | None = None
        self._owns_detector = False
        try:  # the engine (TensorRT: device memory) must not outlive a Scorer that failed to finish its set-up
            self._set_up(detector, threads, max_batch, detector_options)
        except BaseException:
            self.close()
            raise

    def _set_up(self, detector: str | Detector | None, threads: int | None, max_batch: int,
                detector_options: dict[str, Any] | None) -> None:
        """Everything after the model load: checks against the manifest, the detector, the warm-up run."""
        choice = self._loaded.choice
        self._input, self._output = choice.model.input, choice.model.output
        if self._input not in self._engine.input_names:
            raise ValueError(f"bundle {self.bundle.path}: model {choice.model.file} has no input tensor "
                             f"{self._input!r} (it has {self._engine.input_names}); the manifest does not match the "
                             "file, rebuild the bundle")
        self._columns = max(sc.index for sc in self.bundle.scores) + 1  # output columns the manifest reads
        # The lean path: a model that takes int8 faces (full-INT8 TFLite) gets them from a 256-entry table, written
        # into an input buffer the backend keeps; no float tensor. Other engines get faces_to_tensor's float32 batch.
        qin = self._engine.quantized_input
        self._encoder = None
        if qin is not None and qin.name == self._input:
            try:
                self._encoder = FaceEncoder(qin)
            except (ValueError, RuntimeError) as e:  # not a 112x112 face input (the float path's warm-up below
                # says what is wrong), or a table that failed its check: the float path scores either way
                log.warning("bundle %s: scoring through the float path, not the int8 table (%s)", self.bundle.path, e)
        trt_max = int(choice.options.get("max_batch", max_batch))
        self.max_batch = min(max_batch, trt_max)
        self.threads = threads
        if isinstance(detector, Detector) or detector is None:
            self.detector = detector
        else:
            options = dict(detector_options or {})
            if threads is not None and detector == "retinaface":
                options.setdefault("threads", threads)
            self.detector = create_detector(detector, **options)
            self._owns_detector = True
        self.info = ScorerInfo(
            target=self.bundle.target, bundle_id=self.bundle.bundle_id, bundle_path=str(self.bundle.path),
            backend=choice.backend, model=choice.model.name, model_file=choice.model.file, format=choice.model.format,
            precision=choice.model.precision, detector=getattr(self.detector, "name", None),
            detector_backend=getattr(self.detector, "backend_name", None), threads=threads,
            skipped=tuple(f"{c.backend}/{c.model.file}: {why}" for c, why in self._loaded.skipped),
            mirror_average=self.bundle.mirror_average,
            scales={sc.name: sc.scale_summary() for sc in self.bundle.scores})
        # One inference on a blank face: a model whose outputs do not fit the manifest fails here, at load, not on
        # every frame of a capture run (and the engine's first-call set-up is paid before the first real face).
        self.raw(np.zeros((1, 3, SPEC.size, SPEC.size), np.float32))
        if self._encoder is not None:
            self._raw_faces(np.zeros((1, SPEC.size, SPEC.size, 3), np.uint8))

    def close(self) -> None:
        """Release the inference engine now (TensorRT frees its device buffers) rather than at interpreter exit;
        the Scorer cannot score afterwards. ``with Scorer(...) as scorer:`` calls it on leaving the block."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._owns_detector:  # a detector the caller passed in is the caller's to close
            self.detector.close()
            self._owns_detector = False

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def score_names(self) -> tuple[str, ...]:
        return self.bundle.score_names

    def raw(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on a normalised NCHW float32 batch (any N); returns [N, K] raw outputs (z-scores).

        A ``mirror_average`` bundle runs every face as is and mirrored and returns the mean of the two, both halves
        in one engine call when ``max_batch`` holds them.
        """
        if self._engine is None:
            raise RuntimeError("this Scorer was closed; create a new one to score again")
        n = len(tensor)
        if n == 0:
            return np.zeros((0, len(self.bundle.scores)), np.float32)
        if not self.bundle.mirror_average:
            return np.concatenate([self._run(tensor[s:s + self.max_batch])
                                   for s in range(0, n, self.max_batch)])
        step = max(1, self.max_batch // 2)
        outs = []
        for start in range(0, n, step):
            chunk = tensor[start:start + step]
            y = (self._run(with_mirror(chunk)) if 2 * len(chunk) <= self.max_batch
                 else np.concatenate([self._run(chunk), self._run(np.ascontiguousarray(chunk[..., ::-1]))]))
            outs.append(mirror_mean(y))
        return np.concatenate(outs)

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        """One engine call, its output checked against the manifest."""
        return self._checked(self._engine.run({self._input: chunk}), len(chunk))

    def _run_encoded(self, faces: np.ndarray, mirror: bool) -> np.ndarray:
        """One engine call on uint8 faces (and their mirror images) quantised by the lean path's table."""
        rows = len(faces) * (2 if mirror else 1)
        return self._checked(self._engine.run_quantized(rows, lambda buf: self._encoder.encode(faces, buf, mirror)),
                             rows)

    def _raw_faces(self, faces: np.ndarray) -> np.ndarray:
        """:meth:`raw` of at most ``max_batch`` aligned uint8 faces (already checked): on the lean path when the
        engine takes int8, with the same integers and so the same outputs as ``raw(faces_to_tensor(faces))``."""
        if self._encoder is None:
            return self.raw(faces_to_tensor(faces))
        if self._engine is None:
            raise RuntimeError("this Scorer was closed; create a new one to score again")
        if not self.bundle.mirror_average:
            return self._run_encoded(faces, mirror=False)
        step = max(1, self.max_batch // 2)
        outs = []
        for start in range(0, len(faces), step):
            part = faces[start:start + step]
            y = (self._run_encoded(part, mirror=True) if 2 * len(part) <= self.max_batch else
                 np.concatenate([self._run_encoded(part, False), self._run_encoded(part[:, :, ::-1], False)]))
            outs.append(mirror_mean(y))
        return np.concatenate(outs)

    def _checked(self, result: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """An engine call's output for ``rows`` faces, checked against the manifest."""
        if self._output not in result:
            raise ValueError(f"model {self.info.model_file} returned {list(result)}, not the manifest's output "
                             f"{self._output!r}; rebuild the bundle")
        y = np.asarray(result[self._output], dtype=np.float32)
        if y.ndim != 2 or y.shape[0] != rows or y.shape[1] < self._columns:
            raise ValueError(f"model {self.info.model_file} returned shape {y.shape} for a batch of {rows}; "
                             f"the manifest reads columns {[sc.index for sc in self.bundle.scores]}: the manifest "
                             "does not match the model, rebuild the bundle")
        return y

    def score(self, faces: np.ndarray | Sequence[np.ndarray]) -> ScoreBatch:
        """Score aligned faces (HxWx3 or NxHxWx3 BGR uint8, H = W = 112, or a list of HxWx3). Always returns a
        :class:`ScoreBatch` (``scorer.score(face)[0]`` for one face).

        Any number of faces: they are converted to the model's input (int8 straight from the pixels through a
        256-entry table where the engine takes int8, else the float tensor) and run ``max_batch`` at a time into a
        preallocated result, so memory beyond the caller's own faces stays that of one batch (4,000 faces at once
        used to make a 600 MB float tensor, and three temporaries of it)."""
        batch = _check_faces(faces)
        n = len(batch)
        if n == 0:
            empty = np.zeros((0, len(self.bundle.scores)))
            return ScoreBatch(empty, empty, self.score_names)
        z: np.ndarray | None = None
        if n <= self.max_batch:  # one batch (one face, a frame's faces): its output is the result, no copy
            z = self._raw_faces(batch if isinstance(batch, np.ndarray) else np.stack(batch))
        for start in range(0, n if z is None else 0, self.max_batch):
            chunk = batch[start:start + self.max_batch]
            y = self._raw_faces(chunk if isinstance(chunk, np.ndarray) else np.stack(chunk))
            if z is None:  # the model's own output width (the manifest may read any of its columns)
                z = np.empty((n, y.shape[1]), np.float32)
            z[start:start + len(y)] = y
        cols = [s.index for s in self.bundle.scores]  # model column of each score, in score_names order
        return ScoreBatch(self.bundle.to_0_100(z), z[:, cols], self.score_names)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        if self.detector is None:
            raise RuntimeError("this Scorer was built with detector=None; pass detector='retinaface' (or a "
                               "Detector) to score whole frames, or align faces yourself and call score()")
        return self.detector.detect(frame)

    def score_frame(self, frame: np.ndarray) -> list[FaceResult]:
        """Detect, align, score and measure every face of a frame (gray, BGR or BGRA, any size).

        An empty or non-image frame raises :class:`fiqa_sdk.FrameError`; a frame without faces gives ``[]``.
        """
        bgr = to_bgr(frame)
        detections = self.detect(bgr)
        if not detections:
            return []
        aligned = [align_face(bgr, d.landmarks) for d in detections]
        scores = self.score(aligned)
        results = []
        for det, face, s in zip(detections, aligned, scores):
            measures = image_measures(face)
            pose_error = None
            try:
                measures.update(landmark_measures(det.landmarks))
            except ValueError as e:
                # Degenerate landmarks: size is still meaningful, pose proxies are not.
                measures["iod_px"] = det.size
                pose_error = str(e)
            results.append(FaceResult(detection=det, aligned=face, utility=s.utility, perceptual=s.perceptual,
                                      measures=measures, z=(s.utility_z, s.perceptual_z), pose_error=pose_error))
        return results

    def __repr__(self) -> str:
        i = self.info
        return (f"Scorer(bundle={i.bundle_id} [{i.target}], model={i.model_file} ({i.precision}), backend={i.backend}, "
                f"detector={i.detector}/{i.detector_backend})")
