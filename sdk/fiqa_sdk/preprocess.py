"""The one preprocessing spec shared by the trainer and the device.

Faces are aligned to the 112x112 ArcFace template, converted BGR->RGB, scaled to [-1, 1] with
(x - 127.5) / 127.5 and laid out NCHW float32. Every bundle manifest records this spec, and
:func:`check_spec` refuses a bundle whose spec differs from the one this code implements.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

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


def faces_to_tensor(faces: np.ndarray, spec: PreprocessSpec = SPEC) -> np.ndarray:
    """Aligned BGR uint8 faces (HxWx3 or NxHxWx3, H=W=spec.size) -> normalised NCHW float32 RGB batch."""
    faces = np.asarray(faces)
    if faces.ndim == 3:
        faces = faces[None]
    if faces.ndim != 4 or faces.shape[1:] != (spec.size, spec.size, 3):
        raise ValueError(f"expected aligned faces of shape (N, {spec.size}, {spec.size}, 3) BGR uint8, "
                         f"got {faces.shape}; align raw frames with fiqa_sdk.align_face first")
    if faces.dtype != np.uint8:
        raise ValueError(f"aligned faces must be uint8, got {faces.dtype}")
    rgb = faces[..., ::-1].astype(np.float32)
    x = (rgb - spec.mean) / spec.std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


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
