"""The one preprocessing spec shared by the trainer and the device.

Faces are aligned to the 112x112 ArcFace template, converted BGR->RGB, scaled to [-1, 1] with
(x - 127.5) / 127.5 and laid out NCHW float32. Every bundle manifest records this spec, and
:func:`check_spec` refuses a bundle whose spec differs from the one this code implements.

A pixel is one of 256 values, so every step up to the model's input is a lookup table of 256 entries:
:func:`faces_to_tensor` reads the normalised float of each pixel from one, and :class:`FaceEncoder` reads the int8
value a full-INT8 model's input quantisation would make of that float (same float32 arithmetic, so the same
integers), writing the channels straight into the model's layout: no float tensor at all on a full-INT8 engine's
path (LiteRT; ``fiqa_sdk.Scorer`` uses it wherever the engine takes integers).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from fiqa_runtimes import QuantizedInput

# Five landmarks of the standard ArcFace 112x112 template (insightface), image coordinates:
# left eye, right eye (as seen in the image), nose tip, left mouth corner, right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class PreprocessSpec:
    size: int = 112
    color_order: str = "RGB"
    mean: float = 127.5
    std: float = 127.5
    layout: str = "NCHW"
    dtype: str = "float32"
    alignment: str = "similarity-5pt-arcface112"
    template: tuple[tuple[float, float], ...] = field(
        default_factory=lambda: tuple(map(tuple, ARCFACE_TEMPLATE_112.round(4).tolist())))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["template"] = [list(p) for p in self.template]
        return d


SPEC = PreprocessSpec()


def check_spec(recorded: dict) -> None:
    """Raise if a recorded spec (e.g. from a bundle manifest) disagrees with this code's spec."""
    if not isinstance(recorded, dict):
        raise ValueError(f"preprocessing spec must be a JSON object, got {type(recorded).__name__}; recompile the "
                         "bundle with fiqa-compile")
    mine = SPEC.to_dict()
    unknown = sorted(set(recorded) - set(mine))
    if unknown:
        raise ValueError(f"preprocessing spec has key(s) {unknown} this SDK does not implement (it knows "
                         f"{sorted(mine)}): a newer fiqa-compile may preprocess faces in a way this SDK would skip. "
                         "Upgrade fiqa-sdk, or recompile the bundle with a matching fiqa-sdk version.")
    diffs = [k for k in mine if k not in recorded or
             (np.asarray(recorded[k]).tolist() != np.asarray(mine[k]).tolist()
              if k == "template" else recorded[k] != mine[k])]
    if diffs:
        raise ValueError(f"preprocessing spec mismatch in {diffs}: bundle has "
                         f"{ {k: recorded.get(k) for k in diffs} }, this SDK implements { {k: mine[k] for k in diffs} }. "
                         "Recompile the bundle with a matching fiqa-sdk version.")


@functools.lru_cache(maxsize=8)
def _normalised(spec: PreprocessSpec) -> np.ndarray:
    """Pixel value 0..255 -> its normalised float32, with the arithmetic the spec defines: ``(x - mean) / std``."""
    table = (np.arange(256, dtype=np.float32) - spec.mean) / spec.std
    table.flags.writeable = False
    return table


def _check_faces_array(faces: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[1:] != (spec.size, spec.size, 3):
        raise ValueError(f"expected aligned faces of shape (N, {spec.size}, {spec.size}, 3) BGR uint8, "
                         f"got {faces.shape}; align raw frames with fiqa_sdk.align_face first")
    if faces.dtype != np.uint8:
        raise ValueError(f"aligned faces must be uint8, got {faces.dtype}")
    return faces


def faces_to_tensor(faces: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """Aligned BGR uint8 faces (HxWx3 or NxHxWx3, H=W=spec.size) -> normalised NCHW float32 RGB batch."""
    faces = _check_faces_array(faces, spec)
    n, size = len(faces), spec.size
    if n == 0:
        return np.zeros((0, 3, size, size), np.float32)
    # one table read per pixel (the float32 values (x - mean) / std would give), then BGR HWC -> RGB CHW planes
    x = cv2.LUT(np.ascontiguousarray(faces).reshape(n * size, size, 3), _normalised(spec)).reshape(faces.shape)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)[:, ::-1])


class FaceEncoder:
    """Aligned BGR uint8 faces straight into a full-INT8 model's input, no float tensor on the way.

    ``table``: for each of the 256 pixel values, the integer that :func:`faces_to_tensor` followed by the input's
    quantisation (``input.quantize``: ``round(x / scale + zero_point)``, saturated) makes of it -- computed by
    exactly that arithmetic, once. :meth:`encode` reads it per pixel (OpenCV's LUT) and writes BGR channels into
    RGB places of the model's layout (NCHW planes or NHWC, from the input's shape). At construction a probe face
    holding every value in every channel, and its mirror image, is encoded and compared with the float path's
    arithmetic bit for bit; a mismatch raises RuntimeError rather than let a device score differently from it.
    """

    def __init__(self, qin: QuantizedInput, spec: PreprocessSpec = SPEC):
        size = spec.size
        self.layout = {(1, 3, size, size): "NCHW", (1, size, size, 3): "NHWC"}.get(tuple(qin.shape))
        if self.layout is None:
            raise ValueError(f"model input {qin.name!r} has shape {qin.shape}, neither NCHW (1, 3, {size}, {size}) "
                             f"nor NHWC (1, {size}, {size}, 3) faces")
        self.size = size
        self.table = np.ascontiguousarray(qin.quantize(_normalised(spec)))
        self.table.flags.writeable = False
        self._planes: tuple[np.ndarray | None, list] = (None, [])  # views of the last buffer encoded into
        self._check(qin, spec)

    def shape(self, n: int) -> tuple[int, ...]:
        """The model input's shape for ``n`` rows."""
        s = self.size
        return (n, 3, s, s) if self.layout == "NCHW" else (n, s, s, 3)

    def encode(self, faces: np.ndarray, out: np.ndarray, mirror: bool = False) -> None:
        """Write N aligned BGR uint8 faces (N x size x size x 3) into ``out[:N]`` in the model's layout and dtype,
        and with ``mirror`` their mirror images (left-right) into ``out[N:2N]``."""
        n, s = len(faces), self.size
        # the faces one above the other: one image for OpenCV (one face is one already)
        flat = faces[0] if n == 1 and faces.flags.c_contiguous else np.ascontiguousarray(faces).reshape(n * s, s, 3)
        if self.layout == "NHWC":
            q = out[:n].reshape(n * s, s, 3)
            cv2.LUT(cv2.cvtColor(flat, cv2.COLOR_BGR2RGB), self.table, dst=q)
            if mirror:
                cv2.flip(q, 1, dst=out[n:2 * n].reshape(n * s, s, 3))  # each row flipped: each face mirrored
            return
        planes = self._planes
        if planes[0] is not out:  # the R, G, B planes of each row of ``out``, as OpenCV's split writes B, G, R
            planes = (out, [[row[2], row[1], row[0]] for row in out])
            self._planes = planes  # one tuple, replaced whole: a thread reading it sees an old or a new one
        q = cv2.LUT(flat, self.table)
        if n == 1 and not mirror:
            cv2.split(q, planes[1][0])
            return
        parts = ((0, q), (n, cv2.flip(q, 1))) if mirror else ((0, q),)
        for first, src in parts:
            for i in range(n):
                cv2.split(src[i * s:(i + 1) * s], planes[1][first + i])

    def _check(self, qin: QuantizedInput, spec: PreprocessSpec) -> None:
        s = self.size
        ramp = np.arange(s * s * 3).reshape(1, s, s, 3)
        probe = ((ramp + np.array([0, 85, 170])) % 256).astype(np.uint8)  # every value, each channel its own
        both = np.concatenate([probe, probe[:, :, ::-1]])  # the float path's own arithmetic, no table
        want = qin.quantize(((both[..., ::-1].astype(np.float32) - spec.mean) / spec.std).transpose(0, 3, 1, 2))
        if self.layout == "NHWC":
            want = want.transpose(0, 2, 3, 1)
        got = np.zeros(self.shape(2), self.table.dtype)
        self.encode(probe, got, mirror=True)
        if not np.array_equal(got, want):
            raise RuntimeError(f"FaceEncoder ({self.layout}, OpenCV {cv2.__version__}) does not reproduce the float "
                               f"path on its probe face ({int((got != want).sum())} of {got.size} values differ); "
                               "this is a bug in fiqa_sdk.preprocess")


def tensor_to_faces(x: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """Inverse of :func:`faces_to_tensor` (for plots and debugging)."""
    rgb = np.asarray(x).transpose(0, 2, 3, 1) * spec.std + spec.mean
    return np.clip(np.round(rgb[..., ::-1]), 0, 255).astype(np.uint8)


def with_mirror(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [2N, C, H, W]: the faces, then the same faces mirrored left-right (see :func:`mirror_mean`)."""
    return np.concatenate((x, x[..., ::-1]))


def mirror_mean(y: np.ndarray) -> np.ndarray:
    """Scores of a :func:`with_mirror` batch [2N, K] -> [N, K], the mean of each face and its mirror image.

    Why: a bundle compiled with ``mirror_average`` (the default) scores a face as the mean over it and its mirror
    image, the way the utility teacher's views come in mirror pairs; the score then cannot depend on which way a
    face is turned, and it ranks faces closer to the teacher than one pass does.
    """
    if len(y) % 2:
        raise ValueError(f"mirror_mean needs the 2N rows of with_mirror(), got {len(y)}")
    n = len(y) // 2
    return (y[:n] + y[n:]) / 2
