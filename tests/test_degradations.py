"""Degradation library: exact identity at severity 0, bit-exact seeding, monotone strength, physics, chains, errors.

Monotonicity is checked on real aligned faces (pip-shipped photos, plus two LFW faces when ../shared has them),
because labels are made from faces, and flat or synthetic images hide non-monotone corners.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
from skimage.metrics import structural_similarity

import fiqa_sdk
from fiqa_calibration.degradations import (DEGRADATION_TYPES, DEGRADATION_VERSION, EXPOSURE_TYPES, RANDOM_TYPES, Chain,
                                           Step, degrade, parameters, sample_chain)

LADDER = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
SHARPNESS_KINDS = ("gaussian_blur", "motion_blur", "defocus", "downscale")
PIXEL_SIZE_KINDS = ("gaussian_blur", "motion_blur", "defocus", "downscale", "occlusion")
LFW = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-dev"


def _photo_paths() -> list[Path]:
    import insightface  # installed --no-deps for its sample images only

    return [Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
            Path(insightface.__file__).parent / "data" / "images" / "t1.jpg"]


@pytest.fixture(scope="module")
def faces() -> list[np.ndarray]:
    """Aligned 112x112 faces: Grace Hopper, the two largest faces of t1.jpg, and two LFW faces when present."""
    det = fiqa_sdk.create_detector()
    out = []
    for path in _photo_paths():
        frame = cv2.imread(str(path))
        assert frame is not None, path
        dets = sorted(det(frame), key=lambda d: -d.size)[:2]
        assert dets, f"no face in {path}"
        out += [fiqa_sdk.align_face(frame, d.landmarks) for d in dets]
    if LFW.is_dir():
        for path in sorted(LFW.glob("*/*.jpg"))[:2]:
            frame = cv2.imread(str(path))
            dets = det(frame)
            if dets:
                out.append(fiqa_sdk.align_face(frame, dets[0].landmarks))
    return out


@pytest.fixture(scope="module")
def face(faces) -> np.ndarray:
    return faces[0]


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2 if a.ndim == 3 else None, data_range=255))


def _gray(x: np.ndarray) -> np.ndarray:
    return (cv2.cvtColor(x, cv2.COLOR_BGR2GRAY) if x.ndim == 3 else x).astype(np.float64)


def _laplacian_var(x: np.ndarray) -> float:
    return float(cv2.Laplacian(_gray(x), cv2.CV_64F).var())


def _detail_kept(clean: np.ndarray, x: np.ndarray) -> float:
    """Share of the clean image's high-pass detail still present (projection onto the clean Laplacian)."""
    a, b = cv2.Laplacian(_gray(clean), cv2.CV_64F), cv2.Laplacian(_gray(x), cv2.CV_64F)
    return float((a * b).sum() / (a * a).sum())


def _strictly_falling(values: list[float]) -> bool:
    return all(a > b for a, b in zip(values, values[1:]))


# ------------------------------------------------------------------------------------------- basic contract
def test_type_list_is_the_published_api():
    assert DEGRADATION_TYPES == ("gaussian_blur", "motion_blur", "defocus", "gaussian_noise", "poisson_noise",
                                 "jpeg", "downscale", "underexposure", "overexposure", "low_light", "contrast",
                                 "occlusion")
    assert RANDOM_TYPES < set(DEGRADATION_TYPES) and EXPOSURE_TYPES < set(DEGRADATION_TYPES)


@pytest.mark.parametrize("kind", DEGRADATION_TYPES)
def test_severity_zero_is_an_exact_copy(face, kind):
    out = degrade(face, kind, 0.0, seed=123)
    assert np.array_equal(out, face) and not np.shares_memory(out, face)
    gray = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(degrade(gray, kind, 0, seed=5), gray)


@pytest.mark.parametrize("kind", DEGRADATION_TYPES)
def test_shape_dtype_kept_input_untouched_and_something_changes(face, kind):
    # Non-square, odd-sized crop catches width/height mix-ups; gray must work as HxW.
    rect = np.ascontiguousarray(face[5:100, 10:107])
    for img in (face, rect, cv2.cvtColor(rect, cv2.COLOR_BGR2GRAY)):
        before = img.copy()
        out = degrade(img, kind, 0.5, seed=9)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert np.array_equal(img, before), "input was modified in place"
        assert not np.array_equal(out, img), f"{kind} at severity 0.5 changed nothing"


@pytest.mark.parametrize("kind", DEGRADATION_TYPES)
def test_seed_reproducibility(face, kind):
    a = degrade(face, kind, 0.7, seed=42)
    assert np.array_equal(a, degrade(face.copy(), kind, 0.7, seed=42))
    b = degrade(face, kind, 0.7, seed=43)
    if kind in RANDOM_TYPES:
        assert not np.array_equal(a, b), f"{kind} ignores its seed"
    else:
        assert np.array_equal(a, b), f"{kind} is listed as deterministic but depends on the seed"


# ------------------------------------------------------------------------------------------- monotonicity
@pytest.mark.parametrize("kind", DEGRADATION_TYPES)
def test_ssim_to_clean_strictly_falls_with_severity(faces, kind):
    for i, f in enumerate(faces):
        for seed in (0, 1):
            ssims = [_ssim(f, degrade(f, kind, s, seed)) for s in LADDER]
            assert _strictly_falling(ssims), f"{kind} face {i} seed {seed}: SSIM {np.round(ssims, 4)}"


@pytest.mark.parametrize("kind", SHARPNESS_KINDS)
def test_sharpness_strictly_falls_for_blur_and_resolution_loss(faces, kind):
    for i, f in enumerate(faces):
        lap = [_laplacian_var(degrade(f, kind, s, seed=3)) for s in LADDER]
        assert _strictly_falling(lap), f"{kind} face {i}: Laplacian variance {np.round(lap, 1)}"


def test_jpeg_removes_detail_monotonically(faces):
    # Raw Laplacian variance is the wrong meter for JPEG: 8x8 blocking ADDS high-frequency energy at block
    # edges (on soft LFW faces it rises with severity). What JPEG removes is the image's own detail.
    for i, f in enumerate(faces):
        kept = [_detail_kept(f, degrade(f, "jpeg", s, seed=0)) for s in LADDER]
        assert _strictly_falling(kept), f"face {i}: detail kept {np.round(kept, 3)}"
        assert kept[-1] < 0.6 * kept[0]


@pytest.mark.parametrize("kind,gets_darker", [("underexposure", True), ("low_light", True), ("overexposure", False)])
def test_brightness_moves_monotonically(faces, kind, gets_darker):
    for i, f in enumerate(faces):
        means = [float(degrade(f, kind, s, seed=4).mean()) for s in LADDER]
        assert _strictly_falling(means if gets_darker else [-m for m in means]), f"{kind} face {i}: {means}"


@pytest.mark.parametrize("kind", ["gaussian_noise", "poisson_noise", "low_light"])
def test_noise_std_rises_with_severity(faces, kind):
    for i, f in enumerate(faces):
        if kind == "low_light":  # remove the (deterministic) darkening: compare with the noise-free exposure
            stds = []
            for s in LADDER[1:]:
                stops = parameters(kind, s)["output_stops"]
                lin = (f / 255.0) ** 2.2 * 2.0 ** stops
                ref = 255.0 * lin ** (1 / 2.2)
                stds.append(float((degrade(f, kind, s, seed=6) - ref).std()))
        else:
            stds = [float((degrade(f, kind, s, seed=6).astype(np.float64) - f).std()) for s in LADDER]
        assert _strictly_falling([-v for v in stds]), f"{kind} face {i}: noise std {np.round(stds, 2)}"


# ---------------------------------------------------------------------------------------------- physics
def test_gaussian_noise_has_the_advertised_sigma():
    flat = np.full((200, 200, 3), 128, np.uint8)
    for s in (0.25, 1.0):
        noise = degrade(flat, "gaussian_noise", s, seed=1).astype(np.float64) - 128
        assert abs(noise.mean()) < 0.5
        assert noise.std() == pytest.approx(parameters("gaussian_noise", s)["sigma_levels"], rel=0.03)


def test_poisson_noise_is_shot_noise_in_linear_light():
    # For a Poisson count the variance equals the mean; recover photon counts from the output to check it.
    for level in (60, 128, 220):
        flat = np.full((300, 300), level, np.uint8)
        photons = parameters("poisson_noise", 1.0)["photons_full_scale"]
        counts = (degrade(flat, "poisson_noise", 1.0, seed=2) / 255.0) ** 2.2 * photons
        expected = (level / 255.0) ** 2.2 * photons
        assert counts.mean() == pytest.approx(expected, rel=0.05)
        assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.12)


def test_exposure_is_a_stop_change_in_linear_light():
    ramp = np.tile(np.arange(256, dtype=np.uint8), (8, 1))
    dark = degrade(ramp, "underexposure", 0.5, seed=0).astype(np.float64)  # -2 stops: linear / 4
    expect = 255.0 * (((np.arange(256) / 255.0) ** 2.2) / 4.0) ** (1 / 2.2)
    assert np.abs(dark[0] - expect).max() <= 0.5 + 1e-9
    bright = degrade(ramp, "overexposure", 1.0, seed=0)  # +3 stops: everything above linear 1/8 clips
    clip_from = int(np.ceil(255.0 * (1 / 8) ** (1 / 2.2)))
    assert (bright[0, clip_from:] == 255).all() and (bright[0, : clip_from - 2] < 255).all()


def test_contrast_blends_to_the_mean(face):
    out = degrade(face, "contrast", 1.0, seed=0).astype(np.float64)
    assert out.mean() == pytest.approx(face.mean(), abs=0.6)
    assert out.std() == pytest.approx(face.std() * parameters("contrast", 1.0)["contrast_kept"], rel=0.02)


def test_jpeg_and_downscale_parameter_curves():
    assert parameters("jpeg", 1e-6)["quality"] == 95 and parameters("jpeg", 1.0)["quality"] == 5
    qualities = [parameters("jpeg", s)["quality"] for s in LADDER[1:]]
    assert _strictly_falling(qualities)
    assert parameters("downscale", 1.0)["face_px"] == pytest.approx(14.0)
    assert parameters("downscale", 1.0, scale=2.0)["factor"] == pytest.approx(16.0)


def test_downscale_never_upsamples_an_already_small_face(face):
    # scale 0.5: the face is 56 px; severity 0.3 asks for 112/8**0.3 = 60 px, which it already lacks.
    assert parameters("downscale", 0.3, scale=0.5)["factor"] == 1.0
    assert np.array_equal(degrade(face, "downscale", 0.3, seed=0, scale=0.5), face)


def test_occluder_grows_in_place_up_to_the_advertised_area():
    rng = np.random.default_rng(0)
    busy = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)  # every occluder colour differs from it
    for seed in range(20):
        half = np.any(degrade(busy, "occlusion", 0.5, seed) != busy, axis=2)
        full = np.any(degrade(busy, "occlusion", 1.0, seed) != busy, axis=2)
        assert not (half & ~full).any(), f"seed {seed}: occluder at 0.5 is not inside the one at 1.0"
        assert 0.27 <= full.mean() <= 0.44, f"seed {seed}: covers {full.mean():.2f} of the crop"
        assert 0.4 < half.sum() / full.sum() < 0.65


@pytest.mark.parametrize("kind", PIXEL_SIZE_KINDS)
def test_scale_makes_a_bigger_face_look_equally_degraded(face, kind):
    # Degrading a 224 px face with scale=2 then aligning to 112 should match degrading the 112 crop.
    big = cv2.resize(face, (224, 224), interpolation=cv2.INTER_CUBIC)
    ref = cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA)
    for s in (0.3, 0.8):
        small = degrade(ref, kind, s, seed=1)
        scaled = cv2.resize(degrade(big, kind, s, seed=1, scale=2.0), (112, 112), interpolation=cv2.INTER_AREA)
        unscaled = cv2.resize(degrade(big, kind, s, seed=1), (112, 112), interpolation=cv2.INTER_AREA)
        gap = abs(_ssim(ref, scaled) - _ssim(ref, small))
        assert gap < 0.02, f"{kind}@{s}: SSIM {_ssim(ref, scaled):.3f} vs {_ssim(ref, small):.3f}"
        assert gap < abs(_ssim(ref, unscaled) - _ssim(ref, small)), "scale had no effect"


# ----------------------------------------------------------------------------------------------- chains
def test_chain_round_trips_through_json_and_replays_bit_exactly(face):
    chain = Chain((Step("gaussian_blur", 0.4, 1), Step("gaussian_noise", 0.3, 7), Step("jpeg", 0.7, 2)))
    record = json.loads(json.dumps(chain.to_dict()))
    again = Chain.from_dict(record)
    assert again == chain and record["version"] == DEGRADATION_VERSION
    assert np.array_equal(again.apply(face), chain.apply(face))
    manual = degrade(degrade(degrade(face, "gaussian_blur", 0.4, 1), "gaussian_noise", 0.3, 7), "jpeg", 0.7, 2)
    assert np.array_equal(chain.apply(face), manual)
    assert chain.describe() == "gaussian_blur@0.40+gaussian_noise@0.30+jpeg@0.70"
    assert chain.severity == pytest.approx(1 - 0.6 * 0.7 * 0.3)


def test_empty_chain_is_clean(face):
    chain = Chain(())
    assert chain.describe() == "clean" and chain.severity == 0.0
    out = chain.apply(face)
    assert np.array_equal(out, face) and not np.shares_memory(out, face)


def test_chain_records_from_another_version_or_malformed_are_refused():
    rec = Chain((Step("jpeg", 0.5, 0),)).to_dict()
    with pytest.raises(ValueError, match="version"):
        Chain.from_dict({**rec, "version": DEGRADATION_VERSION + 1})
    with pytest.raises(ValueError, match="exactly kind, severity, seed"):
        Chain.from_dict({**rec, "steps": [{"kind": "jpeg", "severity": 0.5}]})
    with pytest.raises(ValueError, match="unknown degradation kind"):
        Chain.from_dict({**rec, "steps": [{"kind": "blur", "severity": 0.5, "seed": 0}]})
    with pytest.raises(ValueError, match="Step objects"):
        Chain(({"kind": "jpeg", "severity": 0.5, "seed": 0},))


def test_sample_chain_is_reproducible_ordered_and_respects_limits(face):
    stage = ["occlusion", "contrast", "defocus", "motion_blur", "gaussian_blur", "underexposure", "overexposure",
             "low_light", "poisson_noise", "gaussian_noise", "downscale", "jpeg"]
    a = [sample_chain(np.random.default_rng(11), max_steps=3) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    rng = np.random.default_rng(5)
    lengths = set()
    for _ in range(300):
        c = sample_chain(rng, max_steps=3, severity_range=(0.2, 0.6))
        kinds = [s.kind for s in c.steps]
        lengths.add(len(kinds))
        assert len(set(kinds)) == len(kinds) and len(EXPOSURE_TYPES & set(kinds)) <= 1
        assert kinds == sorted(kinds, key=stage.index)
        assert all(0.2 <= s.severity <= 0.6 for s in c.steps)
    assert lengths == {1, 2, 3}
    sub = sample_chain(np.random.default_rng(1), max_steps=2, kinds=("jpeg", "defocus"))
    assert {s.kind for s in sub.steps} <= {"jpeg", "defocus"}
    c = sample_chain(np.random.default_rng(2))
    assert np.array_equal(Chain.from_dict(json.loads(json.dumps(c.to_dict()))).apply(face), c.apply(face))


@pytest.mark.parametrize("kwargs,match", [
    ({"max_steps": 0}, "max_steps"),
    ({"max_steps": 3, "kinds": ("underexposure", "low_light", "jpeg")}, "at most 2"),
    ({"kinds": ()}, "kinds is empty"),
    ({"kinds": ("jpeg", "jpeg")}, "duplicates"),
    ({"kinds": ("sharpen",)}, "unknown degradation kind"),
    ({"severity_range": (0.7, 0.2)}, "lo > hi"),
    ({"severity_range": (0.0, 1.5)}, r"\[0, 1\]"),
])
def test_sample_chain_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_chain(np.random.default_rng(0), **kwargs)


def test_sample_chain_needs_a_generator():
    with pytest.raises(ValueError, match="default_rng"):
        sample_chain(0)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------- errors
_IMG = np.zeros((32, 32, 3), np.uint8)


@pytest.mark.parametrize("args,match", [
    ((_IMG, "blur", 0.5, 0), "unknown degradation kind.*gaussian_blur"),
    ((_IMG, "jpeg", -0.1, 0), r"severity must be in \[0, 1\]"),
    ((_IMG, "jpeg", 1.5, 0), r"severity must be in \[0, 1\]"),
    ((_IMG, "jpeg", float("nan"), 0), r"severity must be in \[0, 1\]"),
    ((_IMG, "jpeg", "0.5", 0), "severity must be a number"),
    ((_IMG, "jpeg", True, 0), "severity must be a number"),
    ((_IMG, "jpeg", 0.5, -1), "seed must be a non-negative int"),
    ((_IMG, "jpeg", 0.5, 1.5), "seed must be a non-negative int"),
    ((_IMG.astype(np.float32), "jpeg", 0.5, 0), "uint8.*np.clip"),
    ((_IMG.tolist(), "jpeg", 0.5, 0), "numpy array"),
    ((np.zeros((32, 32, 4), np.uint8), "jpeg", 0.5, 0), "COLOR_BGRA2BGR"),
    ((np.zeros((32, 32, 1), np.uint8), "jpeg", 0.5, 0), "HxW gray"),
    ((np.zeros((4, 4, 3), np.uint8), "jpeg", 0.5, 0), "at least 8x8"),
    ((np.zeros(64, np.uint8), "jpeg", 0.5, 0), "HxWx3 BGR or HxW gray"),
])
def test_bad_inputs_raise_value_errors_naming_the_fix(args, match):
    with pytest.raises(ValueError, match=match):
        degrade(*args)


@pytest.mark.parametrize("scale", [0, -1.0, float("inf"), float("nan")])
def test_bad_scale_is_refused(scale):
    with pytest.raises(ValueError, match="face_px / 112"):
        degrade(_IMG, "gaussian_blur", 0.5, 0, scale=scale)


def test_bad_arguments_fail_even_at_severity_zero():
    with pytest.raises(ValueError, match="unknown degradation kind"):
        degrade(_IMG, "sharpen", 0.0, 0)
    with pytest.raises(ValueError, match="seed"):
        Step("jpeg", 0.0, -3)
