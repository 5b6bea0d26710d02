"""The lean scoring path: uint8 faces quantised straight to a full-INT8 model's input by a 256-entry table.

It must give the very integers the float path gave (faces_to_tensor, then the backend's quantisation), so the very
same scores: checked bit for bit on the probe arithmetic, and end to end on the embedded LiteRT bundle with 441
real aligned faces (the pip-shipped photos, clean and degraded) against the old float arithmetic.
"""
from __future__ import annotations

import dataclasses
import functools
import threading
from pathlib import Path

import numpy as np
import pytest

from fiqa_runtimes import QuantizedInput, load_backend
from fiqa_runtimes.litert_backend import _dequantize, _dequantize_table, _quantize
from fiqa_sdk import Scorer
from fiqa_sdk.preprocess import SPEC, FaceEncoder, faces_to_tensor

ROOT = Path(__file__).resolve().parents[1]
TFLITE_BUNDLE = ROOT / "sdk/fiqa_sdk/bundles/default-android-arm64"


def old_faces_to_tensor(faces: np.ndarray) -> np.ndarray:
    """The float path's arithmetic before the tables: BGR->RGB, float32, (x - 127.5) / 127.5, NCHW."""
    rgb = faces[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - SPEC.mean) / SPEC.std).transpose(0, 3, 1, 2))


@functools.cache
def real_faces() -> np.ndarray:
    from fiqa_calibration.calibration_set import sample_pool

    return sample_pool(seed=0).faces  # 441 aligned faces: 9 people x (clean + 12 degradations x 4 severities)


def random_faces(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SPEC.size, SPEC.size, 3), dtype=np.uint8)


def test_faces_to_tensor_is_the_old_arithmetic_exactly():
    faces = random_faces(5)
    np.testing.assert_array_equal(faces_to_tensor(faces), old_faces_to_tensor(faces))
    np.testing.assert_array_equal(faces_to_tensor(faces[0]), old_faces_to_tensor(faces[:1]))
    strided = faces[:, :, ::-1]  # a mirrored view: not contiguous
    np.testing.assert_array_equal(faces_to_tensor(strided), old_faces_to_tensor(strided))
    assert faces_to_tensor(faces[:0]).shape == (0, 3, SPEC.size, SPEC.size)
    with pytest.raises(ValueError, match="uint8"):
        faces_to_tensor(faces.astype(np.float32))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype,scale,zero", [(np.int8, 0.007839307188987732, 0), (np.int8, 0.011, -7),
                                              (np.uint8, 0.0079, 128), (np.uint8, 0.02, 3)])
def test_encoder_gives_the_integers_of_the_float_path(layout, dtype, scale, zero):
    s = SPEC.size
    qin = QuantizedInput("faces", dtype, scale, zero, (1, 3, s, s) if layout == "NCHW" else (1, s, s, 3))
    enc = FaceEncoder(qin)
    assert enc.layout == layout and enc.table.shape == (256,) and enc.table.dtype == dtype
    for n in (1, 3):
        faces = random_faces(n, seed=n)
        for mirror in (False, True):
            out = np.zeros(enc.shape(2 * n if mirror else n), dtype)
            enc.encode(faces, out, mirror=mirror)
            src = np.concatenate([faces, faces[:, :, ::-1]]) if mirror else faces
            want = qin.quantize(old_faces_to_tensor(src))
            np.testing.assert_array_equal(out, want if layout == "NCHW" else want.transpose(0, 2, 3, 1))
    # a saturating scale: values beyond the integer range clip, as the backend's quantisation clips them
    sat = FaceEncoder(QuantizedInput("faces", np.int8, 0.004, 0, (1, 3, s, s)))
    assert sat.table.min() == -128 and sat.table.max() == 127


def test_encoder_refuses_an_input_that_is_no_face():
    with pytest.raises(ValueError, match="neither NCHW"):
        FaceEncoder(QuantizedInput("x", np.int8, 0.01, 0, (1, 3, 96, 96)))


def test_dequantise_table_matches_the_arithmetic():
    for dtype, scale, zero in [(np.int8, 0.025521837174892426, 29), (np.uint8, 0.1, 128), (np.int8, 0.3, -128)]:
        d = {"name": "y", "dtype": dtype, "quantization": (scale, zero)}
        info = np.iinfo(dtype)
        y = np.arange(info.min, info.max + 1).astype(dtype).reshape(4, 64)
        got = _dequantize_table(d).take(y.view(np.uint8))
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, _dequantize(y, d))
    assert _dequantize_table({"name": "f", "dtype": np.float32, "quantization": (0.0, 0)}) is None


@pytest.fixture(scope="module")
def lean() -> Scorer:
    pytest.importorskip("ai_edge_litert")
    scorer = Scorer(TFLITE_BUNDLE, backend="litert", detector=None, threads=1)
    assert scorer._encoder is not None, "the full-INT8 TFLite bundle should take the lean path"
    return scorer


def old_path_z(scorer: Scorer, faces: np.ndarray) -> np.ndarray:
    """The model's outputs as the SDK computed them before the lean path: the old float arithmetic, then the
    backend's float run (quantise, invoke, dequantise)."""
    return np.concatenate([scorer.raw(old_faces_to_tensor(faces[i:i + 16])) for i in range(0, len(faces), 16)])


def test_lean_path_scores_real_faces_exactly_as_the_float_path(lean):
    faces = real_faces()
    z_old = old_path_z(lean, faces)
    got = lean.score(faces)
    cols = [s.index for s in lean.bundle.scores]
    np.testing.assert_array_equal(got.z, z_old[:, cols])  # not close: equal, the same integers went in
    np.testing.assert_array_equal(got.scores, lean.bundle.to_0_100(z_old))
    assert np.ptp(got.z[:, 0]) > 1.0  # the faces do span the scale
    one = np.concatenate([lean.score(f).z for f in faces[:12]])  # one face per call, batch size 1
    np.testing.assert_array_equal(one, got.z[:12])
    as_list = lean.score(list(faces[:20]))
    np.testing.assert_array_equal(as_list.z, got.z[:20])


def test_lean_path_with_mirror_average_is_the_mean_of_face_and_mirror(lean, monkeypatch):
    faces = real_faces()[::37]
    z_face, z_mirror = old_path_z(lean, faces), old_path_z(lean, np.ascontiguousarray(faces[:, :, ::-1]))
    monkeypatch.setattr(lean, "bundle", dataclasses.replace(lean.bundle, mirror_average=True))
    for max_batch in (1, 3, 16):
        monkeypatch.setattr(lean, "max_batch", max_batch)
        np.testing.assert_array_equal(lean.score(faces).z, ((z_face + z_mirror) / 2)[:, :2])


def test_lean_path_from_several_threads(lean):
    faces = real_faces()[:64]
    want = lean.score(faces).z
    results: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        sizes = (1, 5, 16)[k % 3]
        results[k] = np.concatenate([lean.score(faces[i:i + sizes]).z for i in range(0, len(faces), sizes)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for z in results.values():
        np.testing.assert_array_equal(z, want)


def test_quantized_input_is_offered_only_for_integer_inputs(lean):
    qin = lean._engine.quantized_input
    d = lean._engine.input_details[0]
    assert (qin.dtype, qin.scale, qin.zero_point, qin.shape) == (np.int8, *d["quantization"], (1, 3, 112, 112))
    x = old_faces_to_tensor(random_faces(2))
    np.testing.assert_array_equal(qin.quantize(x), _quantize(x, d))
    pytest.importorskip("onnxruntime")
    ort = Scorer(ROOT / "sdk/fiqa_sdk/bundles/default-cpu", backend="onnxruntime", detector=None, threads=1)
    assert ort._engine.quantized_input is None and ort._encoder is None
    with pytest.raises(TypeError, match="no quantised input"):
        ort._engine.run_quantized(1, lambda buf: None)

