"""bench/peers: the published edge FIQA baselines (LightQNet, SDD-FIQA) and the alignment that feeds them.

The geometry tests need nothing but numpy and cv2. The real-face test needs the peer models in
/work/shared/peers (next to the repository), their venvs (``bash bench/peers/setup_peers.sh``) and lfw-dev photos,
and skips, naming what is missing, without them.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).parents[1].parent / "shared"
PEER_MODELS = SHARED / "peers"
LFW = SHARED / "data" / "lfw-dev"


def _load_peers():
    # Loaded by path under its own name, like the other bench modules in the tests: putting bench/ on sys.path
    # would let its 'common' shadow any other module of that name for the rest of the session.
    pkg = REPO / "bench" / "peers"
    spec = importlib.util.spec_from_file_location("bench_peers", pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


peers = _load_peers()


def _similarity(angle_deg: float, scale: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return np.hstack([r, [[tx], [ty]]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]


def _splat(frame: np.ndarray, xy, bgr, sigma: float) -> None:
    """Add a Gaussian blob of colour ``bgr`` at ``xy`` (its centroid survives an affine warp)."""
    h, w = frame.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    g = np.exp(-((xx - xy[0]) ** 2 + (yy - xy[1]) ** 2) / (2 * sigma ** 2))
    for c in range(3):
        frame[:, :, c] += g * bgr[c]


def _centroid(weight: np.ndarray) -> np.ndarray:
    w = np.clip(weight, 0, None)
    yy, xx = np.mgrid[0:w.shape[0], 0:w.shape[1]]
    return np.array([(w * xx).sum(), (w * yy).sum()]) / w.sum()


def _frame_with_landmarks(crop_pts: np.ndarray, frame_from_crop: np.ndarray, shape=(360, 420), sigma=4.0):
    """A grey float frame with a red blob at the image-left eye, a green one at the image-right eye and blue ones
    at the mouth corners, placed where ``frame_from_crop`` takes ``crop_pts`` (5x2 in crop coordinates)."""
    lm = _apply(frame_from_crop, crop_pts)
    frame = np.full((*shape, 3), 60.0)
    _splat(frame, lm[0], (0, 0, 190), sigma)
    _splat(frame, lm[1], (0, 190, 0), sigma)
    _splat(frame, lm[3], (190, 0, 0), sigma)
    _splat(frame, lm[4], (190, 0, 0), sigma)
    return np.clip(frame, 0, 255).astype(np.uint8), lm.astype(np.float32)


def _blob_positions(rgb: np.ndarray, split_x: float):
    """Centroids (x, y) of the red, green and the two blue blobs (left/right of split_x) in an RGB crop."""
    f = rgb.astype(np.float64) - 60.0
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    blue = b.copy()
    left, right = blue.copy(), blue.copy()
    left[:, int(np.ceil(split_x)):] = 0
    right[:, :int(np.ceil(split_x))] = 0
    return _centroid(r), _centroid(g), _centroid(left), _centroid(right)


@pytest.mark.parametrize("angle, scale, tx, ty", [(0, 1.0, 0, 0), (17, 1.6, 60, 40), (-24, 0.8, 180, 90)])
def test_lightqnet_input_puts_landmarks_on_the_template(angle, scale, tx, ty):
    t = peers.LIGHTQNET_TEMPLATE_160
    mouth = t[2]
    # mouth corners either side of the template's mouth centre: LightQNet aligns on their mean
    crop_pts = np.array([t[0], t[1], (t[0] + t[1]) / 2 + [0, 20], mouth - [14, 2], mouth + [14, 2]])
    frame, lm = _frame_with_landmarks(crop_pts, _similarity(angle, scale, tx + 80, ty + 60))
    face = peers.lightqnet_input(frame, lm)
    assert face.shape == (96, 96, 3) and face.dtype == np.uint8
    # cv2.resize 160 -> 96 keeps pixel centres: x96 = (x160 + 0.5) * 0.6 - 0.5
    expect = (t + 0.5) * (96 / 160) - 0.5
    red, green, mouth_l, mouth_r = _blob_positions(face, expect[2, 0])
    assert np.abs(red - expect[0]).max() < 1.0, "image-left eye (red, so RGB channel 0) off the template"
    assert np.abs(green - expect[1]).max() < 1.0
    assert np.abs((mouth_l + mouth_r) / 2 - expect[2]).max() < 1.0


def test_lightqnet_matrix_is_skimage_similarity():
    skt = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(3)
    base = np.array([[104.1, 113.0], [146.9, 112.0], [124.9, 136.9], [107.9, 157.6], [143.8, 156.9]])
    for _ in range(5):
        lm = _apply(_similarity(rng.uniform(-30, 30), rng.uniform(0.5, 3), *rng.uniform(-50, 50, 2)), base)
        lm += rng.normal(0, 3, lm.shape)  # not an exact similarity: the least-squares fit is what is compared
        src, dst = peers.lightqnet_points(lm), peers.LIGHTQNET_TEMPLATE_160
        if hasattr(skt.SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
            tform = skt.SimilarityTransform.from_estimate(src, dst)
        else:
            tform = skt.SimilarityTransform()
            tform.estimate(src, dst)
        assert tform
        np.testing.assert_allclose(peers.lightqnet_matrix(lm), tform.params[:2], atol=1e-3)


def test_sdd_fiqa_input_is_arcface_alignment_in_rgb():
    t = ARCFACE_TEMPLATE_112.astype(np.float64)
    frame, lm = _frame_with_landmarks(t, _similarity(12, 1.9, 120, 70))
    face = peers.sdd_fiqa_input(frame, lm)
    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    red, green, mouth_l, mouth_r = _blob_positions(face, t[2, 0])
    for got, want in ((red, t[0]), (green, t[1]), (mouth_l, t[3]), (mouth_r, t[4])):
        assert np.abs(got - want).max() < 1.0


def test_missing_venvs_are_skipped_with_the_fix(tmp_path):
    inputs = {"lightqnet-dm100": np.zeros((1, 96, 96, 3), np.uint8), "sdd_fiqa": np.zeros((1, 112, 112, 3), np.uint8)}
    out = peers.score_peers(list(inputs), inputs, peers_dir=tmp_path / "none")
    for name in inputs:
        assert isinstance(out[name], str) and out[name].startswith("skipped:")
        assert "bash bench/peers/setup_peers.sh" in out[name]
    with pytest.raises(ValueError, match="uint8"):
        peers.score_peers(["sdd_fiqa"], {"sdd_fiqa": np.zeros((1, 96, 96, 3), np.uint8)})


def _lfw_photos(n: int) -> list[Path]:
    people = sorted(d for d in LFW.iterdir() if d.is_dir())
    return [sorted(d.glob("*.jpg"))[0] for d in people[:n]]


def test_peers_score_real_faces_and_blur_lowers_lightqnet(retinaface_ort):
    if not PEER_MODELS.is_dir():
        pytest.skip(f"no peer models at {PEER_MODELS}")
    if not LFW.is_dir():
        pytest.skip(f"no lfw-dev photos at {LFW}")
    missing = {n: why for n in peers.PEER_NAMES if (why := peers.unavailable(n, models_dir=PEER_MODELS))}
    if missing:
        pytest.skip("; ".join(f"{n}: {why}" for n, why in missing.items()))

    clean, blurred = [], []
    for path in _lfw_photos(3):
        frame = cv2.imread(str(path))
        dets = retinaface_ort(frame)
        assert dets, f"no face found in {path}"
        # LFW centres the named person; other faces in the photo are bystanders
        centre = np.array(frame.shape[1::-1]) / 2
        d = min(dets, key=lambda d: np.linalg.norm(d.landmarks.mean(0) - centre))
        clean.append((frame, d.landmarks))
        # same landmarks: only the blur differs between the two crops
        blurred.append((cv2.GaussianBlur(frame, (0, 0), 4), d.landmarks))

    names = list(peers.PEER_NAMES)
    n = len(clean)
    both = {k: np.concatenate([a, b]) for (k, a), b in
            zip(peers.make_inputs(names, clean).items(), peers.make_inputs(names, blurred).values())}
    scores = peers.score_peers(names, both, models_dir=PEER_MODELS)
    for name in names:
        s = scores[name]
        assert isinstance(s, np.ndarray) and s.dtype == np.float32 and s.shape == (2 * n,), (name, s)
        assert np.isfinite(s).all()
    for name in ("lightqnet-dm100", "lightqnet-dm025"):
        s = scores[name]
        assert ((0 < s) & (s < 1)).all(), (name, s)  # a sigmoid confidence
        assert s[:n].mean() > 0.45, (name, s[:n])  # frontal LFW faces: measured ~0.6
        assert s[n:].mean() < s[:n].mean() - 0.1, (name, s)
    s = scores["sdd_fiqa"]
    # its range on faces is about 25-80; sigma-4 blur is not asserted to lower it (it is not monotone in blur)
    assert ((20 < s) & (s < 90)).all(), s
