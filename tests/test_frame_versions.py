"""Faces degraded in the whole frame and detected again (fiqa_calibration.crops.frame_versions), the eval chains of
fiqa_compile.labels.frame_set, and box_iou; on real photos with the project's RetinaFace."""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_calibration.crops import (ARCFACE_EYE_DISTANCE, MIN_SAME_FACE_IOU, box_iou, central_face,
                                    frame_versions)
from fiqa_calibration.degradations import Chain, Step
from fiqa_compile.labels.frame_set import EVAL_FAMILIES, EVAL_SEVERITY, chains_for, family_of
from fiqa_sdk import align_face
from fiqa_sdk.detection import Detection

BLUR = Chain((Step("gaussian_blur", 1.0, 11),))
DARK = Chain((Step("underexposure", 1.0, 12), Step("low_light", 1.0, 13)))  # 4 stops under, then 9 stops of light


def _scale(face: Detection) -> float:
    return max(float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])) / ARCFACE_EYE_DISTANCE, 0.25)


def test_clean_version_is_the_photos_central_detection(samples, retinaface_ort, retina_dets):
    img = samples["t1"]  # six people: the clean face is the most central one, every version is of that face
    versions, failure = frame_versions(img, retinaface_ort, 7, [BLUR])
    assert failure is None and [v.version for v in versions] == [0, 1]
    clean = versions[0]
    face = central_face(retina_dets["t1"], img.shape)
    assert len(retina_dets["t1"]) >= 5 and clean.frame is img
    assert clean.chain is None and clean.kind == "clean" and clean.severity == 0.0
    np.testing.assert_array_equal(clean.detection.box, face.box)
    np.testing.assert_array_equal(clean.detection.landmarks, face.landmarks)
    others = [d for d in retina_dets["t1"] if d is not face]
    blurred = versions[1].detection
    assert box_iou(blurred.box, face.box) > 0.7
    assert all(box_iou(blurred.box, face.box) > box_iou(blurred.box, d.box) for d in others)


@pytest.mark.parametrize("name", [
    "grace_hopper",
    pytest.param("tom_hanks", marks=pytest.mark.xfail(strict=True, reason=(
        "FrameVersion.crop warps with warp_to_crop's default BORDER_CONSTANT: a face whose crop reaches past the "
        "frame edge gets black borders, where the device's align_face repeats the edge pixels"))),
])
def test_clean_crop_is_the_devices_crop(name, samples, retinaface_ort):
    img = samples[name]
    versions, _ = frame_versions(img, retinaface_ort, 0, [])
    np.testing.assert_array_equal(versions[0].crop, align_face(img, versions[0].detection.landmarks))


def test_strong_blur_is_still_found_and_scaled_to_the_face(samples, retinaface_ort):
    img = samples["grace_hopper"]
    motion = Chain((Step("motion_blur", 0.9, 5), Step("jpeg", 0.6, 6)))
    versions, failure = frame_versions(img, retinaface_ort, 3, [BLUR, motion])
    assert failure is None and len(versions) == 3
    face = versions[0].detection
    scale = _scale(face)
    assert scale > 1.5  # a large face: pixel parameters grow with it
    for v, chain in zip(versions[1:], (BLUR, motion)):
        assert v.chain == chain and v.kind == "+".join(s.kind for s in chain.steps)
        assert v.severity == pytest.approx(chain.severity)
        np.testing.assert_array_equal(v.frame, chain.apply(img, scale=scale))  # degraded in the frame, face-scaled
        assert not np.array_equal(v.frame, chain.apply(img))
        assert v.detection is not None and box_iou(v.detection.box, face.box) > 0.8
        assert v.crop.shape == (112, 112, 3) and v.crop.dtype == np.uint8
    sharp = lambda c: float(np.var(np.diff(c.astype(float), axis=1)))  # noqa: E731
    assert sharp(versions[1].crop) < 0.25 * sharp(versions[0].crop)  # the crop is of the blurred frame


def test_a_frame_too_dark_to_find_loses_the_face(samples, retinaface_ort):
    img = samples["grace_hopper"]
    versions, failure = frame_versions(img, retinaface_ort, 0, [DARK])
    assert failure is None and len(versions) == 2
    lost = versions[1]
    assert lost.frame.mean() < 0.25 * img.mean()
    assert lost.detection is None and lost.crop is None and lost.kind == "underexposure+low_light"


def _det(box, score=0.99) -> Detection:
    x1, y1, x2, y2 = box
    lm = np.array([[x1 + .3 * (x2 - x1), y1 + .4 * (y2 - y1)], [x1 + .7 * (x2 - x1), y1 + .4 * (y2 - y1)],
                   [(x1 + x2) / 2, y1 + .6 * (y2 - y1)], [x1 + .35 * (x2 - x1), y1 + .8 * (y2 - y1)],
                   [x1 + .65 * (x2 - x1), y1 + .8 * (y2 - y1)]], np.float32)
    return Detection(np.array(box, np.float32), lm, score)


class _Scripted:
    """A detector answering from a script: the clean frame's faces first, then one list per degraded frame."""

    def __init__(self, *answers):
        self.answers = list(answers)

    def __call__(self, frame):
        return self.answers.pop(0)


def test_only_the_same_face_counts_as_found():
    frame = np.full((200, 300, 3), 128, np.uint8)
    face = _det((130, 70, 170, 130))  # the central face
    aside = _det((10, 10, 50, 60))
    near = _det((134, 74, 174, 134))  # the same face, a few pixels off
    chains = [Chain((Step("jpeg", 0.3, i),)) for i in range(4)]
    versions, failure = frame_versions(frame, _Scripted([aside, face], [], [aside], [aside, near], [face]), 0, chains)
    assert failure is None
    assert versions[0].detection is face
    assert versions[1].detection is None  # nothing found
    assert versions[2].detection is None  # only another face: the device would score someone else
    assert versions[3].detection is near  # the best overlap among several
    assert versions[4].detection is face
    assert box_iou(aside.box, face.box) < MIN_SAME_FACE_IOU < box_iou(near.box, face.box)
    # no face in the clean frame: no versions, a reason instead of an exception
    assert frame_versions(frame, _Scripted([]), 0, chains) == ([], "no face detected")


def test_eval_chains_are_one_step_per_family_and_seeded():
    chains = chains_for("eval", photo=5, versions=99, seed=1)  # versions is the train protocol's
    assert len(chains) == len(EVAL_FAMILIES) == 5
    for chain, (family, kinds) in zip(chains, EVAL_FAMILIES.items()):
        assert len(chain.steps) == 1
        step = chain.steps[0]
        assert step.kind in kinds and family_of(step.kind) == family
        assert EVAL_SEVERITY[0] <= step.severity <= EVAL_SEVERITY[1]
    assert chains_for("eval", 5, 99, 1) == chains
    assert chains_for("eval", 5, 99, 2) != chains
    assert chains_for("eval", 6, 99, 1) != chains
    # over many photos every kind of a family is drawn
    drawn = {c.steps[0].kind for p in range(60) for c in chains_for("eval", p, 0, 0)}
    assert drawn == {k for kinds in EVAL_FAMILIES.values() for k in kinds}
    train = chains_for("train", 5, 4, 1)
    assert len(train) == 4 and all(1 <= len(c.steps) <= 2 for c in train) and chains_for("train", 5, 4, 1) == train
    assert family_of("clean") == "clean" and family_of("jpeg+downscale") == "mixed"


def test_box_iou():
    a = np.array([0, 0, 2, 2], float)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, np.array([1, 0, 3, 2], float)) == pytest.approx(2 / 6)
    assert box_iou(np.array([0, 0, 4, 4], float), np.array([1, 1, 3, 3], float)) == pytest.approx(4 / 16)
    assert box_iou(a, np.array([2, 0, 4, 2], float)) == 0.0  # touching edges
    assert box_iou(a, np.array([5, 5, 6, 6], float)) == 0.0
    assert box_iou(np.array([1, 1, 1, 1], float), np.array([1, 1, 1, 1], float)) == 0.0  # no area
    assert box_iou(np.array([0, 0, 2, 2, 0.9]), np.array([1, 0, 3, 2, 0.5])) == pytest.approx(1 / 3)  # score ignored
    b = np.array([1, 0, 3, 2], float)
    assert box_iou(a, b) == box_iou(b, a)
