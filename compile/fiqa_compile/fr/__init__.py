"""Face-recognition models used to measure utility (labels) and to evaluate EDC curves.

Two models, by name (:data:`FR_MODELS`): ``dlib`` (dlib's ResNet, 128-d) and ``mobilefacenet`` (MobileFaceNet
TFLite, 192-d). They take different inputs: dlib aligns the face itself, from the image the face is in and its 68
landmarks; MobileFaceNet takes the device's 112x112 ArcFace crop. An :class:`AlignedFace` carries both, so a caller
that has a frame (or aligned canvas), its 68 landmarks and the crop cut from it embeds with either model alike::

    fr = create_recognizer("mobilefacenet")
    emb = fr.embed_faces([AlignedFace(crop, canvas, lm68_canvas) for ...])   # [N, fr.dim], L2-normalised

A model with ``crop_only`` true needs only ``crop`` (a label set's stored crops are enough for it).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fiqa_compile.fr.mobilefacenet import FRModelUnavailable

FR_MODELS = ("dlib", "mobilefacenet")

__all__ = ["FR_MODELS", "AlignedFace", "FaceRecognizer", "FRModelUnavailable", "create_recognizer"]


@dataclass(frozen=True)
class AlignedFace:
    """One face as both FR models want it.

    ``crop``: the [112, 112, 3] BGR uint8 ArcFace-template crop (what the device scores; MobileFaceNet's input).
    ``image``: the BGR image the crop was aligned from (the frame, or an aligned canvas) and ``lm68``: the face's
    [68, 2] dlib landmarks in that image's pixels (dlib's input). Either may be None for a crop-only model.
    """

    crop: np.ndarray
    image: np.ndarray | None = None
    lm68: np.ndarray | None = None


class FaceRecognizer(Protocol):
    name: str         # registry name, one of FR_MODELS
    title: str        # for people: "dlib ResNet", "MobileFaceNet"
    model: str        # the exact model, as results record it
    dim: int          # embedding size
    crop_only: bool   # True: embed_faces uses only AlignedFace.crop

    def embed_faces(self, faces: Sequence[AlignedFace]) -> np.ndarray:
        """[N, dim] float32 L2-normalised embeddings (compare with cosine similarity)."""
        ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


class DlibResNet:
    """dlib's ResNet through :class:`~fiqa_compile.fr.dlib_fr.DlibFaceRecognizer` (``.dlib``, which also finds
    68 landmarks)."""

    name = "dlib"
    title = "dlib ResNet"
    model = "dlib-resnet-v1"
    dim = 128
    crop_only = False

    def __init__(self) -> None:
        from fiqa_compile.fr.dlib_fr import DlibFaceRecognizer

        try:
            self.dlib = DlibFaceRecognizer()
        except RuntimeError as e:  # dlib or face_recognition_models missing; the message names the pip command
            raise FRModelUnavailable(str(e)) from e

    def embed_faces(self, faces: Sequence[AlignedFace]) -> np.ndarray:
        out = np.empty((len(faces), self.dim), np.float32)
        for i, f in enumerate(faces):
            if f.image is None or f.lm68 is None:
                raise ValueError("dlib embeds a face from the image it is in and its 68 landmarks, but this "
                                 "AlignedFace has only a crop; pass image= and lm68=, or use a crop-only FR model "
                                 "(mobilefacenet)")
            out[i] = self.dlib.embed(f.image, f.lm68)
        return out

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "model": self.model, "dim": self.dim,
                "input": "the frame (or aligned canvas) and dlib's 68 landmarks; dlib aligns its own 150x150 chip"}

    def close(self) -> None:
        pass


class MobileFaceNet:
    """MobileFaceNet through :class:`~fiqa_compile.fr.mobilefacenet.MobileFaceNetRecognizer` (``.net``)."""

    name = "mobilefacenet"
    title = "MobileFaceNet"
    dim = 192
    crop_only = True

    def __init__(self, path=None, threads: int | None = 1) -> None:
        from fiqa_compile.fr.mobilefacenet import SHA256, MobileFaceNetRecognizer

        self.net = MobileFaceNetRecognizer(path, threads=threads)
        self.sha256 = SHA256
        self.model = f"mobilefacenet-tflite-{SHA256[:12]}"

    def embed_faces(self, faces: Sequence[AlignedFace]) -> np.ndarray:
        if len(faces) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self.net.embed(np.stack([np.asarray(f.crop) for f in faces]))

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title, "model": self.model, "dim": self.dim, "sha256": self.sha256,
                "input": "the 112x112 ArcFace-template crop"}

    def close(self) -> None:
        self.net.close()


_FACTORIES = {"dlib": DlibResNet, "mobilefacenet": MobileFaceNet}
assert tuple(_FACTORIES) == FR_MODELS


def create_recognizer(name: str, **options) -> FaceRecognizer:
    """The FR model called ``name`` (one of :data:`FR_MODELS`); ``options`` go to its constructor
    (mobilefacenet: ``path``, ``threads``).

    Raises ValueError for an unknown name and :class:`FRModelUnavailable` when the model's files or runtime are
    missing (the message says how to get them).
    """
    factory = _FACTORIES.get(str(name).strip().lower()) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"unknown FR model {name!r}; choose one of: {', '.join(FR_MODELS)}")
    return factory(**options)
