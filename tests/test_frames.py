"""Frame validation: every accepted layout becomes HxWx3 uint8 BGR; everything else is a clear FrameError."""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_sdk import FrameError, to_bgr


def test_bgr_uint8_passes_through_untouched():
    f = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert to_bgr(f) is f


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1)])
def test_grayscale_is_replicated_to_three_channels(shape):
    f = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = to_bgr(f)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], f.reshape(5, 7))


def test_bgra_drops_alpha_and_keeps_colour_order():
    f = np.zeros((4, 4, 4), np.uint8)
    f[..., 0], f[..., 1], f[..., 2], f[..., 3] = 10, 20, 30, 0
    out = to_bgr(f)
    assert out.shape == (4, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_float_frames_in_unit_range_are_scaled_to_uint8(dtype):
    f = np.array([[0.0, 0.5, 1.0]], dtype=dtype)
    out = to_bgr(f)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


@pytest.mark.parametrize("frame,match", [
    (np.zeros((0, 10, 3), np.uint8), "empty"),
    (np.zeros((10, 0), np.uint8), "empty"),
    (np.full((4, 4, 3), 255.0, np.float32), r"\[0, 1\]"),
    (np.full((4, 4, 3), -0.1, np.float32), r"\[0, 1\]"),
    (np.zeros((4, 4, 3), np.int16), "dtype int16"),
    (np.zeros((4, 4, 3), np.uint16), "dtype uint16"),
    (np.zeros((4, 4, 3), bool), "dtype bool"),
    (np.zeros((4, 4, 2), np.uint8), "expected HxW"),
    (np.zeros((4, 4, 5), np.uint8), "expected HxW"),
    (np.zeros((2, 4, 4, 3), np.uint8), "expected HxW"),
    (np.zeros(16, np.uint8), "expected HxW"),
    ([[0, 1], [2, 3]], "numpy array"),
    (None, "numpy array"),
])
def test_bad_frames_raise_frame_error_naming_the_problem(frame, match):
    with pytest.raises(FrameError, match=match):
        to_bgr(frame)


def _with(value: float) -> np.ndarray:
    f = np.full((4, 4, 3), 0.5, np.float32)
    f[1, 2, 0] = value
    return f


@pytest.mark.parametrize("frame", [_with(np.nan), _with(np.inf), _with(-np.inf)], ids=["nan", "inf", "-inf"])
def test_non_finite_pixels_of_a_float_frame_are_an_error_not_black(frame):
    """A NaN pixel used to become a black one (and the frame was scored); an inf was called out of [0, 1]."""
    with pytest.raises(FrameError, match=r"float frame holds 1 NaN or infinite value\(s\) \(of 48\), which would be "
                                         r"scored as black pixels; fix what produced them \(np.isfinite"):
        to_bgr(frame)


@pytest.mark.parametrize("shape, hint", [
    ((3, 48, 64), r"this looks channels-first \(CxHxW, a model's layout\): pass frame.transpose\(1, 2, 0\)"),
    ((1, 3, 48, 64), r"this looks like a model's NCHW tensor of one frame: pass frame\[0\].transpose\(1, 2, 0\)"),
    ((1, 48, 64, 3), r"this is a batch of one frame: pass frame\[0\]$"),
    ((2, 48, 64, 3), "this is a batch of 2 frames: pass them one at a time"),
    ((48, 64, 2), r"2 channels is gray \+ alpha: pass the gray plane, frame\[\.\.\., 0\]"),
])
def test_a_refused_layout_gets_the_hint_that_applies_to_it(shape, hint):
    with pytest.raises(FrameError, match=rf"frame of shape .* is not an image: expected HxW .*\(BGRA\); {hint}"):
        to_bgr(np.zeros(shape, np.uint8))


def test_detectors_reject_bad_frames_with_frame_error(retinaface_ort, dlib_detector):
    for det in (retinaface_ort, dlib_detector):
        with pytest.raises(FrameError, match="empty"):
            det(np.zeros((0, 0, 3), np.uint8))
        with pytest.raises(FrameError, match="numpy array"):
            det("photo.jpg")


def test_frame_error_is_a_value_error():
    """Callers that already catch ValueError for bad input keep working."""
    assert issubclass(FrameError, ValueError)


@pytest.mark.parametrize("det_fixture", ["retinaface_ort", "dlib_detector"])
def test_non_contiguous_views_are_accepted(request, samples, det_fixture):
    det = request.getfixturevalue(det_fixture)
    img = samples["astronaut"]
    flipped = img[:, ::-1]  # a negative-stride view, as a mirrored camera gives
    found = det(flipped)
    assert len(found) == 1
    x1, _, x2, _ = det(img)[0].box
    w = img.shape[1]
    np.testing.assert_allclose(sorted([w - x1, w - x2]), sorted(found[0].box[[0, 2]]), atol=4.0)
