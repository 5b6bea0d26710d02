"""Label math: certainty ratio with leave-one-out centres, and the MS-SSIM pseudo-MOS."""
import cv2
import numpy as np
import pytest

from fiqa_compile.labels.perceptual import ms_ssim, pseudo_mos
from fiqa_compile.labels.utility import certainty_ratio


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def test_certainty_ratio_hand_computed():
    # Identity A has two clean photos a0=(1,0), a1=(0.8,0.6); identity B one photo b0=(0,1).
    a0, a1, b0 = _unit([1, 0]), _unit([0.8, 0.6]), _unit([0, 1])
    clean = np.stack([a0, a1, b0])
    ids = np.array(["A", "A", "B"])
    photos = np.array([0, 1, 2])
    # Query: a degraded version of photo 0 with embedding q=(0.6, 0.8).
    q = _unit([0.6, 0.8])
    out = certainty_ratio(q[None], np.array(["A"]), np.array([0]), clean, ids, photos)
    # Leave-one-out centre of A for photo 0 is a1 alone: CCS = q.a1 = 0.48 + 0.48 = 0.96.
    # B's centre is b0: NNCCS = q.b0 = 0.8.  CR = 0.96 / (0.8 + 1 + 1e-9).
    assert out["ccs"][0] == pytest.approx(0.96)
    assert out["nnccs"][0] == pytest.approx(0.8)
    assert out["cr"][0] == pytest.approx(0.96 / 1.8)


def test_certainty_ratio_single_photo_identity_has_no_label():
    clean = np.stack([_unit([1, 0]), _unit([0, 1])])
    out = certainty_ratio(clean[1:], np.array(["B"]), np.array([1]), clean, np.array(["A", "B"]), np.array([0, 1]))
    assert np.isnan(out["cr"][0])


def test_certainty_ratio_falls_as_embedding_drifts_towards_impostor():
    clean = np.stack([_unit([1, 0, 0]), _unit([0.9, 0.1, 0]), _unit([0, 1, 0])])
    ids, photos = np.array(["A", "A", "B"]), np.array([0, 1, 2])
    drift = np.stack([_unit([1 - t, t, 0]) for t in np.linspace(0, 0.9, 6)])
    cr = certainty_ratio(drift, np.array(["A"] * 6), np.zeros(6, int), clean, ids, photos)["cr"]
    assert np.all(np.diff(cr) < 0)


def _texture(seed=0, size=112):
    rng = np.random.default_rng(seed)
    img = cv2.resize(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)
    return img


def test_ms_ssim_identity_and_blur_monotone():
    ref = _texture()
    assert ms_ssim(ref, ref) == pytest.approx(1.0)
    assert pseudo_mos(ref, ref) == pytest.approx(100.0)
    values = [ms_ssim(cv2.GaussianBlur(ref, (0, 0), s), ref) for s in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert 0.0 <= values[-1] < 0.9


def test_ms_ssim_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        ms_ssim(_texture(size=112), _texture(size=96))


def test_strong_downscale_alignment_is_anti_aliased():
    """A big face (shrunk > 2x into the crop) must not gain false detail from aliasing."""
    from fiqa_sdk.align import warp_to_crop

    rng = np.random.default_rng(0)
    fine = rng.integers(0, 256, (600, 600, 3), dtype=np.uint8)  # pixel-level texture: pure aliasing bait
    m = np.array([[0.2, 0.0, 0.0], [0.0, 0.2, 0.0]])  # 5x shrink of the top-left 560 px into 112
    out = warp_to_crop(fine, m, 112)
    naive = cv2.warpAffine(fine, m.astype(np.float32), (112, 112), flags=cv2.INTER_LINEAR)
    expect = cv2.resize(fine[:560, :560], (112, 112), interpolation=cv2.INTER_AREA)
    # Area averaging of random pixels is smooth; naive bilinear sampling keeps the full pixel variance.
    assert out.std() < 0.5 * naive.std()
    # ... and is close to an ideal area resize (the two-stage warp keeps a little more texture than it).
    assert naive.std() > 2.5 * expect.std() and out.std() < 1.6 * expect.std()
    # A gentle scale is left to the plain warp, bit for bit.
    gentle = np.array([[0.9, 0.0, 3.0], [0.0, 0.9, 2.0]])
    assert np.array_equal(warp_to_crop(fine, gentle, 112),
                          cv2.warpAffine(fine, gentle.astype(np.float32), (112, 112), flags=cv2.INTER_LINEAR))
