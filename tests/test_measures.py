"""Device-side image and landmark measures on real detected + aligned faces from pip-shipped photos."""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

import fiqa_sdk
from fiqa_sdk.align import alignment_matrix, transform_points
from fiqa_sdk.samples import sample_path
from fiqa_sdk.measures import (
    exposure_fractions, head_pose, image_measures, inter_ocular_distance, landmark_measures, laplacian_variance,
    mean_brightness, rms_contrast, tenengrad,
)
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112


def _grace_hopper_path() -> Path:
    return sample_path("grace_hopper")  # required, not skipped: SampleUnavailable names the pip command


def _insightface_image(name: str) -> Path:
    assert name == "t1.jpg", name
    return sample_path("t1")


@pytest.fixture(scope="module")
def detector() -> fiqa_sdk.Detector:
    return fiqa_sdk.create_detector()


@pytest.fixture(scope="module")
def grace(detector) -> tuple[np.ndarray, np.ndarray]:
    """The Grace Hopper photo and her detected five landmarks (frame pixels)."""
    frame = cv2.imread(str(_grace_hopper_path()))
    faces = detector(frame)
    assert len(faces) == 1
    return frame, faces[0].landmarks.astype(np.float64)


@pytest.fixture(scope="module")
def aligned(grace) -> np.ndarray:
    frame, landmarks = grace
    return fiqa_sdk.align_face(frame, landmarks)


# --------------------------------------------------------------------------------------------- image measures
def test_hand_computed_two_tone_image() -> None:
    # Left half black, right half white: mean luma 127.5, half the pixels clipped each way, luma/255 std 0.5.
    img = np.zeros((40, 40, 3), np.uint8)
    img[:, 20:] = 255
    assert mean_brightness(img) == pytest.approx(127.5)
    assert exposure_fractions(img) == (0.5, 0.5)
    assert rms_contrast(img) == pytest.approx(0.5)
    flat = np.full((40, 40, 3), 90, np.uint8)
    assert laplacian_variance(flat) == 0.0 and tenengrad(flat) == 0.0 and rms_contrast(flat) == 0.0
    assert laplacian_variance(img) > 0 and tenengrad(img) > 0


def test_luma_weights_are_bt601() -> None:
    # Pure blue, green, red (BGR order) -> 0.114, 0.587, 0.299 of 255.
    for channel, weight in ((0, 0.114), (1, 0.587), (2, 0.299)):
        img = np.zeros((8, 8, 3), np.uint8)
        img[..., channel] = 255
        assert mean_brightness(img) == pytest.approx(255 * weight, abs=1e-3)


def test_blur_lowers_sharpness(aligned) -> None:
    blurred = cv2.GaussianBlur(aligned, (0, 0), 1.5)
    assert laplacian_variance(blurred) < 0.3 * laplacian_variance(aligned)
    assert tenengrad(blurred) < 0.6 * tenengrad(aligned)
    more = cv2.GaussianBlur(aligned, (0, 0), 3.0)
    assert laplacian_variance(more) < laplacian_variance(blurred)  # monotone in blur strength
    assert tenengrad(more) < tenengrad(blurred)


def test_darkening_and_brightening(aligned) -> None:
    base = mean_brightness(aligned)
    under0, over0 = exposure_fractions(aligned)
    dark = (aligned.astype(np.float32) * 0.3).round().astype(np.uint8)
    assert mean_brightness(dark) == pytest.approx(0.3 * base, rel=0.02)
    assert exposure_fractions(dark)[0] > under0 + 0.1
    bright = cv2.add(aligned, np.full_like(aligned, 140))  # saturating add
    assert mean_brightness(bright) > base
    assert exposure_fractions(bright)[1] > over0 + 0.3


def test_contrast_reduction(aligned) -> None:
    # Blending 30% image + 70% its mean grey scales luma deviations, hence RMS contrast, by 0.3.
    img = aligned.astype(np.float32)
    washed = (0.3 * img + 0.7 * img.mean()).round().astype(np.uint8)
    assert rms_contrast(washed) == pytest.approx(0.3 * rms_contrast(aligned), rel=0.03)


def test_input_formats_agree(aligned) -> None:
    gray = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    gray_bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    assert laplacian_variance(gray) == pytest.approx(laplacian_variance(gray_bgr))
    bgra = cv2.cvtColor(aligned, cv2.COLOR_BGR2BGRA)
    assert image_measures(bgra) == image_measures(aligned)
    assert image_measures(aligned)["sharpness"] == laplacian_variance(aligned)
    assert mean_brightness(aligned.astype(np.float32) / 255.0) == pytest.approx(mean_brightness(aligned), abs=1e-3)
    with pytest.raises(fiqa_sdk.FrameError):
        mean_brightness(np.zeros((4, 4, 3), np.int32))
    with pytest.raises(ValueError, match="under < over"):
        exposure_fractions(aligned, under=200, over=100)


# ------------------------------------------------------------------------------------------ landmark measures
def test_template_is_frontal() -> None:
    pose = head_pose(ARCFACE_TEMPLATE_112)
    assert pose.yaw == pytest.approx(0.0, abs=1e-9) and pose.pitch == pytest.approx(0.0, abs=1e-9)
    dy = ARCFACE_TEMPLATE_112[1, 1] - ARCFACE_TEMPLATE_112[0, 1]
    dx = ARCFACE_TEMPLATE_112[1, 0] - ARCFACE_TEMPLATE_112[0, 0]
    assert pose.roll == pytest.approx(-math.degrees(math.atan2(dy, dx)))


def test_face_size_scales_with_the_image(detector, grace) -> None:
    frame, landmarks = grace
    iod = inter_ocular_distance(landmarks)
    assert iod == pytest.approx(float(np.linalg.norm(landmarks[1] - landmarks[0])))
    small = cv2.resize(frame, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    (face,) = detector(small)
    assert inter_ocular_distance(face.landmarks) == pytest.approx(0.5 * iod, rel=0.05)
    # Alignment normalises face size away: on the 112x112 crop the eye distance is near the template's (35.2 px;
    # 39.3 here, the least-squares fit also matching nose and mouth) whatever the frame resolution.
    on_crop = inter_ocular_distance(transform_points(landmarks, alignment_matrix(landmarks)))
    on_small_crop = inter_ocular_distance(transform_points(face.landmarks, alignment_matrix(face.landmarks)))
    assert on_crop == pytest.approx(35.2, rel=0.15) and on_small_crop == pytest.approx(on_crop, rel=0.06)


@pytest.mark.parametrize("angle", [-30.0, 12.0, 25.0])
def test_rotated_landmarks_give_the_rotation_as_roll(grace, angle: float) -> None:
    _, landmarks = grace
    rot = cv2.getRotationMatrix2D((250.0, 300.0), angle, 1.0)  # counter-clockwise as displayed
    before, after = head_pose(landmarks), head_pose(transform_points(landmarks, rot).astype(np.float64))
    assert after.roll - before.roll == pytest.approx(angle, abs=1e-3)
    assert after.yaw == pytest.approx(before.yaw, abs=1e-3)  # in-plane rotation is not yaw or pitch
    assert after.pitch == pytest.approx(before.pitch, abs=1e-3)


def test_mirrored_landmarks_flip_yaw_and_roll(grace) -> None:
    frame, landmarks = grace
    width = frame.shape[1]
    mirrored = landmarks.copy()
    mirrored[:, 0] = width - 1 - mirrored[:, 0]
    mirrored = mirrored[[1, 0, 2, 4, 3]]  # the detector reports eyes / mouth corners in image order
    a, b = head_pose(landmarks), head_pose(mirrored)
    assert abs(a.yaw) > 1.0  # otherwise the sign test below would be vacuous
    assert b.yaw == pytest.approx(-a.yaw, abs=1e-3)  # exact but for the template's 1e-6 asymmetry
    assert b.roll == pytest.approx(-a.roll, abs=1e-6)
    assert b.pitch == pytest.approx(a.pitch, abs=1e-6)


def test_nose_position_drives_yaw_and_pitch() -> None:
    base = ARCFACE_TEMPLATE_112.astype(np.float64)
    iod = inter_ocular_distance(base)
    right, up, down = base.copy(), base.copy(), base.copy()
    right[2, 0] += 0.2 * iod
    up[2, 1] -= 0.1 * iod
    down[2, 1] += 0.1 * iod
    # Offset 0.2 IOD with the assumed nose depth 0.5 IOD -> atan(0.4) = 21.8 degrees.
    assert head_pose(right).yaw == pytest.approx(math.degrees(math.atan(0.2 / 0.5)), abs=0.5)
    assert head_pose(up).pitch > 5.0 and head_pose(down).pitch < -5.0
    assert head_pose(up).yaw == pytest.approx(0.0, abs=0.5)


def test_rotated_photo_roll_and_flipped_photo_yaw(detector, grace) -> None:
    """End to end on real detections: rotate the photo -> roll follows; mirror a group photo -> yaws flip."""
    frame, landmarks = grace
    h, w = frame.shape[:2]
    for angle in (-20.0, 20.0):
        rot = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        (face,) = detector(cv2.warpAffine(frame, rot, (w, h), borderMode=cv2.BORDER_REPLICATE))
        # The measure is exact (see above); the tolerance is RetinaFace's landmark error on rotated faces (~3-4 deg).
        assert head_pose(face.landmarks).roll - head_pose(landmarks).roll == pytest.approx(angle, abs=5.0)

    group = cv2.imread(str(_insightface_image("t1.jpg")))
    faces, mirrored = detector(group), detector(group[:, ::-1].copy())
    turned = [f for f in faces if abs(head_pose(f.landmarks).yaw) > 15.0]
    assert len(turned) >= 2
    for f in turned:
        cx = group.shape[1] - 1 - (f.box[0] + f.box[2]) / 2
        twin = min(mirrored, key=lambda m: abs((m.box[0] + m.box[2]) / 2 - cx) + abs(m.box[1] - f.box[1]))
        assert np.sign(head_pose(twin.landmarks).yaw) == -np.sign(head_pose(f.landmarks).yaw)


def test_landmark_measures_and_bad_landmarks(grace) -> None:
    _, landmarks = grace
    m = landmark_measures(landmarks)
    assert set(m) == {"iod_px", "yaw", "pitch", "roll"}  # the keys fiqa_sdk.gate reads
    assert 60 < m["iod_px"] < 110 and abs(m["roll"]) < 10 and abs(m["yaw"]) < 30
    with pytest.raises(ValueError, match="5x2"):
        head_pose(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        inter_ocular_distance(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="coincide"):
        head_pose(np.array([[1, 1], [1, 1], [2, 3], [1, 5], [2, 5]], float))
    with pytest.raises(ValueError, match="landmark order"):
        head_pose(ARCFACE_TEMPLATE_112[[3, 4, 2, 0, 1]])  # mouth and eyes swapped
