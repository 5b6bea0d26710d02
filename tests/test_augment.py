"""Distillation augmentation: seeded, leaves the rows it does not pick untouched, changes the ones it does."""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_compile.train.augment import FACE_PARTS, AugmentConfig, augment_batch, mix_faces, part_mask, swap_parts
from fiqa_sdk import create_detector, load_sample
from fiqa_sdk.align import align_face


@pytest.fixture(scope="module")
def crops():
    img = load_sample("t1")
    faces = [align_face(img, d.landmarks) for d in create_detector("retinaface")(img)]
    return np.stack(faces * 4)


def seeded_picks(change, crops: np.ndarray, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``change(crops, rng)`` run twice on one seed: the same result, some rows picked but not all, the rest untouched."""
    out, mask = change(crops, np.random.default_rng(seed))
    again, mask_again = change(crops, np.random.default_rng(seed))
    assert np.array_equal(out, again) and np.array_equal(mask, mask_again)
    assert 0 < mask.sum() < len(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], crops[~mask])
    return out, mask


def test_augment_is_seeded_and_keeps_unpicked_rows(crops):
    cfg = AugmentConfig(fraction=0.5)
    a, mask_a = seeded_picks(lambda c, rng: augment_batch(c, cfg, rng), crops, [0, 1, 2])
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
    out, mask = seeded_picks(lambda c, rng: mix_faces(c, 0.5, rng), crops, [0, 1, 2, 1])
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


def test_part_masks_cover_their_landmarks_and_leave_the_rest_of_the_face():
    from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112 as t

    inside = {"eyes": t[:2], "nose": t[2:3], "mouth": t[3:]}
    for part, points in inside.items():
        w = part_mask(part)
        assert w.shape == (112, 112) and w.min() == 0.0 and w.max() == 1.0
        assert all(w[int(round(y)), int(round(x))] == 1.0 for x, y in points)
        others = [q for q in inside if q != part]
        assert all(w[int(round(y)), int(round(x))] == 0.0 for q in others for x, y in inside[q]), part
        assert w[:10].max() == 0.0 and w[:, :8].max() == 0.0   # forehead top and the cheek edge stay the face's own
    assert part_mask("mouth", 224).sum() > 3.5 * part_mask("mouth").sum()  # scales with the crop
    with pytest.raises(ValueError, match="unknown face part 'ear'"):
        part_mask("ear")


def test_swap_parts_pastes_one_colour_matched_part_of_another_face():
    crops = np.random.default_rng(0).integers(0, 256, (6, 112, 112, 3), dtype=np.uint8)
    out, mask = seeded_picks(lambda c, rng: swap_parts(c, 0.5, rng), crops, [0, 1, 2, 2])
    f = crops.astype(np.float32)
    for i in np.where(mask)[0]:
        fits = []
        for part in FACE_PARTS:
            w = part_mask(part)
            inside = w > 0.5
            for j in (k for k in range(len(crops)) if k != i):
                src = (f[j] - f[j][inside].mean(0)) * ((f[i][inside].std(0) + 1) / (f[j][inside].std(0) + 1))
                want = f[i] + w[..., None] * (src + f[i][inside].mean(0) - f[i])
                fits.append(np.abs(np.clip(want, 0, 255) - out[i]).max() <= 1.0)
        assert sum(fits) == 1   # exactly one part of exactly one other face
    # outside the parts every pixel is the face's own
    outside = sum(part_mask(p) for p in FACE_PARTS) == 0
    assert np.array_equal(out[:, outside], crops[:, outside])


def test_swap_parts_bounds():
    crops = np.zeros((4, 112, 112, 3), np.uint8)
    assert not swap_parts(crops, 0.0, np.random.default_rng(0))[1].any()
    assert swap_parts(crops, 1.0, np.random.default_rng(0))[1].all()
    assert not swap_parts(crops[:1], 1.0, np.random.default_rng(0))[1].any()   # nobody to take a part from
    with pytest.raises(ValueError, match="part-swap share"):
        swap_parts(crops, -0.1, np.random.default_rng(0))
