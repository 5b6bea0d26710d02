"""Calibration-set selection: stratification, device preprocessing, and refusing sets that would calibrate wrong."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fiqa_calibration.calibration_set import (
    CalibrationSet,
    CalibrationSetError,
    build_calibration_set,
    quality_levels,
    stratified_indices,
)
from fiqa_sdk import load_sample
from fiqa_sdk.preprocess import faces_to_tensor
from student_fixtures import face_pool


@pytest.fixture(scope="module")
def pool():
    return face_pool()


@pytest.fixture(scope="module")
def calib(pool, retinaface_ort):
    return build_calibration_set(pool.faces, pool.kinds, pool.severity, size=300, seed=0, detector=retinaface_ort)


def test_builds_a_stratified_set_of_real_faces(pool, calib):
    assert len(calib) == 300
    strata = calib.strata()
    # 12 degradation types x 3 severity levels + the clean faces: every stratum is represented...
    assert len(strata) == 37 and "clean/L0" in strata
    # ...and they are drawn evenly (round-robin): no stratum has more than one face more than another,
    # except strata that ran out of faces (clean has only 9).
    full = [c for k, c in strata.items() if k != "clean/L0"]
    assert max(full) - min(full) <= 1, strata
    assert calib.meta["redetect"]["found"] / calib.meta["redetect"]["checked"] >= 0.7
    assert calib.meta["redetect"]["median_landmark_err_px"] < 10
    np.testing.assert_array_equal(calib.faces, pool.faces[calib.source_index])


def test_tensors_are_the_device_preprocessing(calib):
    t = calib.tensors
    assert t.shape == (300, 3, 112, 112) and t.dtype == np.float32
    # by hand, not through faces_to_tensor (which builds them): RGB order, NCHW, (x - 127.5) / 127.5
    rgb = calib.faces[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_allclose(t, (rgb - 127.5) / 127.5, atol=1e-6)
    assert -1.0 <= t.min() and t.max() <= 1.0


def test_save_load_round_trip_and_spec_check(calib, tmp_path):
    path = calib.save(tmp_path / "calib.npz")
    back = CalibrationSet.load(path)
    np.testing.assert_array_equal(back.faces, calib.faces)
    np.testing.assert_array_equal(back.kinds, calib.kinds)
    assert back.meta["strata"] == calib.meta["strata"]
    # A set made for another preprocessing spec must not be used to calibrate this one.
    calib.meta["spec"] = {**calib.meta["spec"], "mean": 0.0}
    try:
        bad = calib.save(tmp_path / "other.npz")
    finally:
        calib.meta["spec"]["mean"] = 127.5
    with pytest.raises(ValueError, match="spec mismatch"):
        CalibrationSet.load(bad)


def test_seeded_and_deterministic(pool):
    kinds, levels = pool.kinds, quality_levels(pool.severity)
    a = stratified_indices(kinds, levels, 120, seed=3)
    assert np.array_equal(a, stratified_indices(kinds, levels, 120, seed=3))
    assert not np.array_equal(a, stratified_indices(kinds, levels, 120, seed=4))


def test_quality_levels_put_clean_faces_at_level_zero():
    lv = quality_levels(np.array([0, 0, 0.1, 0.2, 0.5, 0.9, 1.0, 0.3]), num_levels=4)
    assert list(lv[:2]) == [0, 0] and lv[2:].min() >= 1 and lv.max() == 3
    assert (np.diff(lv[[2, 3, 4, 5]]) >= 0).all()  # worse faces never get a better level
    with pytest.raises(CalibrationSetError, match="severity"):
        quality_levels(np.array([0.1, -1.0]))


def test_refuses_too_few_faces(pool, retinaface_ort):
    with pytest.raises(CalibrationSetError, match=r"only 40 aligned faces .* at least 100"):
        build_calibration_set(pool.faces[:40], detector=retinaface_ort)


def test_refuses_random_noise(retinaface_ort):
    noise = np.random.default_rng(0).integers(0, 256, (150, 112, 112, 3), dtype=np.uint8)
    with pytest.raises(CalibrationSetError, match="re-detect as faces aligned"):
        build_calibration_set(noise, size=150, detector=retinaface_ort)


def test_refuses_flat_images(pool, retinaface_ort):
    faces = pool.faces[:150].copy()
    faces[:30] = 128  # a fifth of the pool is blank frames
    with pytest.raises(CalibrationSetError, match="30 of 150 images are uniform"):
        build_calibration_set(faces, size=150, detector=retinaface_ort)


def test_refuses_unaligned_photos(retinaface_ort):
    # Whole photos squeezed to 112x112: faces, but not where the ArcFace template puts them.
    photos = [cv2.resize(load_sample(n), (112, 112), interpolation=cv2.INTER_AREA)
              for n in ("t1", "grace_hopper", "astronaut")]
    shifted = [np.roll(load_sample("tom_hanks"), 30, axis=1)]  # aligned once, then shifted by 30 px
    with pytest.raises(CalibrationSetError, match="not aligned"):
        build_calibration_set(np.stack((photos + shifted) * 30), size=120, detector=retinaface_ort)


def test_refuses_tensors_instead_of_crops(pool):
    with pytest.raises(CalibrationSetError, match="uint8"):
        build_calibration_set(pool.faces.astype(np.float32), verify=False)
    with pytest.raises(CalibrationSetError, match="shape"):
        build_calibration_set(faces_to_tensor(pool.faces[:120]), verify=False)
