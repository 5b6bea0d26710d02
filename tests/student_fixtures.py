"""Shared, cached test material for the student/export/quantisation tests: real aligned faces with degradations
and a tiny student briefly fitted to a simple image measure, so its outputs vary the way a trained one's do
(a random-init network's outputs are nearly constant, which would make rank-agreement checks meaningless).

Everything is built once per test session (``functools.cache``) and seeded.
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from fiqa_calibration.calibration_set import FacePool, sample_pool
from fiqa_compile.models import create_model
from fiqa_sdk.preprocess import faces_to_tensor

# A small student with every block type of the real ones (stride-2 stem, residual add, GDC, two-layer head).
TINY = dict(stem_ch=16, stages=((2, 16, 1, 2), (2, 32, 2, 2), (2, 48, 1, 2)), feat_ch=96, embed_dim=32,
            head_hidden=16)


@functools.cache
def face_pool() -> FacePool:
    """441 aligned faces from the pip-shipped photos: 9 people x (clean + 12 degradations x 4 severities)."""
    return sample_pool(seed=0)


def simple_targets(faces: np.ndarray) -> np.ndarray:
    """[N,2] z-scored (log Laplacian variance = sharpness, mean luminance): two easy, different image measures."""
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in faces]).astype(np.float32)
    sharp = np.log1p(np.array([cv2.Laplacian(g, cv2.CV_32F).var() for g in gray]))
    light = gray.mean(axis=(1, 2))
    t = np.stack([sharp, light], 1)
    return ((t - t.mean(0)) / t.std(0)).astype(np.float32)


def _features(model: torch.nn.Module, x: torch.Tensor, chunk: int = 32) -> torch.Tensor:
    """Head inputs of the last layer, in chunks (one 441-face batch is slower than many small ones on a CPU)."""
    with torch.no_grad():
        return torch.cat([model.head.act(model.head.fc1(model.features(x[i:i + chunk])))
                          for i in range(0, len(x), chunk)])


@functools.cache
def fitted_student(steps: int = 24, batch: int = 16, seed: int = 0) -> torch.nn.Module:
    """The tiny student after ``steps`` seeded Adam steps on :func:`simple_targets` of the face pool, then a
    least-squares fit of its last layer on the whole pool (a linear probe), so both outputs are well scaled.
    Eval mode. A few seconds on one core: the CI machine is small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        pool = face_pool()
        x = torch.from_numpy(faces_to_tensor(pool.faces))
        y = torch.from_numpy(simple_targets(pool.faces))
        model = create_model("student_nano", **TINY)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,), generator=g)
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        h = _features(model, x).double()
        a = torch.cat([h, torch.ones(len(h), 1, dtype=h.dtype)], 1)
        ridge = 1e-3 * torch.eye(a.shape[1], dtype=h.dtype) * a.square().mean()
        sol = torch.linalg.solve(a.T @ a + ridge, a.T @ y.double()).float()  # ridge-regularised least squares
        with torch.no_grad():
            model.head.fc2.weight.copy_(sol[:-1].T)
            model.head.fc2.bias.copy_(sol[-1])
        return model
    finally:
        torch.set_num_threads(threads)


@functools.cache
def exported_onnx_report():
    """The fitted tiny student exported (dynamo) to a session temp folder, with its export report."""
    from fiqa_compile.export.onnx_export import export_onnx

    out = Path(tempfile.mkdtemp(prefix="fiqa-test-onnx-")) / "student.onnx"
    return export_onnx(fitted_student(), out)


def exported_onnx() -> Path:
    return Path(exported_onnx_report().path)
