"""Distillation augmentation: seeded, leaves the rows it does not pick untouched, changes the ones it does."""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_compile.train.augment import AugmentConfig, augment_batch, mix_faces
from fiqa_sdk import create_detector, load_sample
from fiqa_sdk.align import align_face


@pytest.fixture(scope="module")
def crops():
    img = load_sample("t1")
    faces = [align_face(img, d.landmarks) for d in create_detector("retinaface")(img)]
    return np.stack(faces * 4)


def test_augment_is_seeded_and_keeps_unpicked_rows(crops):
    cfg = AugmentConfig(fraction=0.5)
    a, mask_a = augment_batch(crops, cfg, np.random.default_rng([0, 1, 2]))
    b, mask_b = augment_batch(crops, cfg, np.random.default_rng([0, 1, 2]))
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    assert 0 < mask_a.sum() < len(crops)
    assert a.shape == crops.shape and a.dtype == np.uint8
    assert np.array_equal(a[~mask_a], crops[~mask_a])
    diff = np.abs(a[mask_a].astype(int) - crops[mask_a].astype(int)).mean(axis=(1, 2, 3))
    assert (diff > 1.0).all()
    c, _ = augment_batch(crops, cfg, np.random.default_rng([0, 1, 3]))
    assert not np.array_equal(a, c)


def test_augment_fraction_bounds(crops):
    assert not augment_batch(crops, AugmentConfig(fraction=0.0), np.random.default_rng(0))[1].any()
    assert augment_batch(crops, AugmentConfig(fraction=1.0), np.random.default_rng(0))[1].all()
    with pytest.raises(ValueError, match="fraction"):
        AugmentConfig(fraction=1.5)


def test_mix_faces_blends_picked_rows_with_another_face_of_the_batch():
    crops = np.random.default_rng(0).integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)
    out, mask = mix_faces(crops, 0.5, np.random.default_rng([0, 1, 2, 1]))
    again, mask_again = mix_faces(crops, 0.5, np.random.default_rng([0, 1, 2, 1]))
    assert np.array_equal(out, again) and np.array_equal(mask, mask_again)
    assert 0 < mask.sum() < len(crops)
    assert np.array_equal(out[~mask], crops[~mask])
    f = crops.astype(np.float64)
    for i in np.where(mask)[0]:
        # each mixed row is (1 - lam) * its own face + lam * one other face of the batch, to rounding
        fits = []
        for j in (k for k in range(len(crops)) if k != i):
            d = f[j] - f[i]
            lam = float(((out[i] - f[i]) * d).sum() / (d * d).sum())
            fits.append(np.abs(f[i] + lam * d - out[i]).max() <= 1.0 and 0.0 <= lam <= 1.0)
        assert sum(fits) == 1


def test_mix_faces_bounds():
    crops = np.zeros((4, 8, 8, 3), np.uint8)
    assert not mix_faces(crops, 0.0, np.random.default_rng(0))[1].any()
    assert mix_faces(crops, 1.0, np.random.default_rng(0))[1].all()
    assert not mix_faces(crops[:1], 1.0, np.random.default_rng(0))[1].any()   # nothing to blend with
    with pytest.raises(ValueError, match="mixup share"):
        mix_faces(crops, 1.5, np.random.default_rng(0))
