"""Seeded, severity-parameterised image degradations for quality labels, distillation and calibration sets.

Every degradation models one physical cause of a bad face capture (optics, motion, sensor, exposure,
compression, resolution, occluders) and is a pure function of ``(image, kind, severity, seed, scale)``:

* ``severity`` in [0, 1]: 0 returns an exact copy; the strength grows monotonically with it. The random
  draws (motion angle, noise fields, occluder placement) depend on the seed only, never on the severity,
  so a severity ladder with one seed degrades the *same* way, only harder.
* ``seed``: the only randomness (``np.random.default_rng(seed)``); same inputs -> bit-identical output on
  the same platform and library versions (OpenCV float filters may differ in the last ulp across CPUs).
* ``scale``: pixel-size multiplier. Pixel parameters are tuned for a 112x112 aligned face; to degrade a
  whole frame whose face is ``face_px`` wide pass ``face_px / 112`` (e.g. inter-ocular distance / 35.24)
  so the face looks as degraded as its aligned crop would.

:data:`DEGRADATION_VERSION` goes into every serialised :class:`Chain`: labels made with one version
cannot be silently reproduced with another.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

DEGRADATION_VERSION = 1

DEGRADATION_TYPES: tuple[str, ...] = (
    "gaussian_blur", "motion_blur", "defocus", "gaussian_noise", "poisson_noise",
    "jpeg", "downscale", "underexposure", "overexposure", "low_light", "contrast", "occlusion")

# Kinds whose output depends on the seed; the others ignore it (their output is a function of severity).
RANDOM_TYPES: frozenset[str] = frozenset(
    {"motion_blur", "gaussian_noise", "poisson_noise", "low_light", "occlusion"})

# At most one of these per sampled chain: stacking two exposure errors is not a capture that happens.
EXPOSURE_TYPES: frozenset[str] = frozenset({"underexposure", "overexposure", "low_light"})

# Capture-pipeline order used by sample_chain: scene -> optics -> exposure/sensor -> resampling -> codec.
_STAGE: dict[str, int] = {k: i for i, k in enumerate((
    "occlusion", "contrast", "defocus", "motion_blur", "gaussian_blur", "underexposure", "overexposure",
    "low_light", "poisson_noise", "gaussian_noise", "downscale", "jpeg"))}

# Maxima at severity 1 for a 112x112 aligned face (scale 1). Chosen so severity 1 is a capture a
# face-quality gate must reject, but the face is still visibly there.
GAUSS_SIGMA_PX = 4.0          # Gaussian blur sigma
MOTION_LENGTH_PX = 15.0       # motion-blur streak length
DEFOCUS_RADIUS_PX = 6.0       # defocus disk radius (per-axis std = radius / 2)
NOISE_SIGMA_LEVELS = 40.0     # additive Gaussian read noise, 8-bit levels
SHOT_PHOTONS_FULL_SCALE = 25.0  # photons collected at white at severity 1 (shot-noise SNR 5 at white)
JPEG_QUALITY = (95, 5)        # quality at severity ~0 and 1
DOWNSCALE_FACTOR = 8.0        # face resolution divided by up to 8 (112 px -> 14 px)
UNDER_STOPS = 4.0             # exposure stops removed
OVER_STOPS = 3.0              # exposure stops added (then clipped)
LOW_LIGHT_STOPS = 9.0         # light lost at the sensor (photon budget / 512)
LOW_LIGHT_DARKEN_STOPS = 3.0  # of which the camera's gain does not make up (output is darker)
LOW_LIGHT_FULL_WELL = 20000.0  # photons at white in good light
LOW_LIGHT_READ_NOISE_E = 3.0  # read noise in electrons, typical of a phone/CMOS sensor
CONTRAST_LOSS = 0.85          # fraction of contrast removed
OCCLUSION_AREA = 0.40         # fraction of the (112 * scale)^2 face area covered
GAMMA = 2.2                   # display gamma used to reach linear light

_TO_LINEAR = ((np.arange(256, dtype=np.float64) / 255.0) ** GAMMA).astype(np.float32)

# Plausible occluder colours (BGR): sunglasses, dark fabric, white / blue / green masks, hands of several
# skin tones, a grey phone/scarf.
_OCCLUDER_COLOURS_BGR = np.array([
    (22, 20, 20), (60, 40, 40), (232, 234, 236), (225, 200, 170), (170, 190, 150),
    (105, 172, 224), (36, 85, 141), (172, 219, 255), (128, 128, 128)], dtype=np.float32)


class DegradationError(ValueError):
    """Bad arguments to a degradation; the message names the fix."""


# ----------------------------------------------------------------------------------------------- validation
def _check_kind(kind: Any) -> str:
    if not isinstance(kind, str) or kind not in DEGRADATION_TYPES:
        raise DegradationError(f"unknown degradation kind {kind!r}; use one of {', '.join(DEGRADATION_TYPES)}")
    return kind


def _check_severity(severity: Any) -> float:
    if isinstance(severity, (bool, np.bool_)) or not isinstance(severity, (int, float, np.integer, np.floating)):
        raise DegradationError(f"severity must be a number in [0, 1], got {type(severity).__name__} {severity!r}")
    s = float(severity)
    if not (0.0 <= s <= 1.0):  # also rejects NaN
        raise DegradationError(f"severity must be in [0, 1], got {severity!r}; clip or rescale it (0 = clean)")
    return s


def _check_seed(seed: Any) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DegradationError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_scale(scale: Any) -> float:
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(scale)) or float(scale) <= 0:
        raise DegradationError(f"scale must be a positive finite number (face_px / 112; 1.0 for aligned "
                               f"112x112 crops), got {scale!r}")
    return float(scale)


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise DegradationError(f"image must be a numpy array, got {type(image).__name__}; decode it with cv2.imread")
    if image.dtype != np.uint8:
        raise DegradationError(f"image dtype must be uint8, got {image.dtype}; convert with "
                               "np.clip(np.rint(x), 0, 255).astype(np.uint8) (scale [0, 1] floats by 255 first)")
    if image.ndim == 3 and image.shape[2] == 4:
        raise DegradationError("image has 4 channels; drop alpha with cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)")
    if image.ndim == 3 and image.shape[2] == 1:
        raise DegradationError("image is HxWx1; pass it as HxW gray (image[:, :, 0])")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise DegradationError(f"image must be HxWx3 BGR or HxW gray, got shape {image.shape}")
    if min(image.shape[:2]) < 8:
        raise DegradationError(f"image is {image.shape[1]}x{image.shape[0]}; degradations need at least 8x8 pixels")
    return np.ascontiguousarray(image)


# ------------------------------------------------------------------------------------------------- helpers
def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _encode(linear: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] (clipped) -> gamma-encoded uint8."""
    return _to_uint8(255.0 * np.power(np.clip(linear, 0.0, 1.0), 1.0 / GAMMA, dtype=np.float32))


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    return cv2.LUT(image, _to_uint8(table))


def _filter(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    out = cv2.filter2D(image.astype(np.float32), -1, kernel.astype(np.float32), borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(out)


def motion_kernel(length_px: float, angle_rad: float) -> np.ndarray:
    """Normalised straight-streak PSF of a given length, anti-aliased so it grows smoothly with length."""
    half = length_px / 2.0
    size = 2 * int(math.ceil(half + 1.0)) + 1
    c = size // 2
    t = np.linspace(-half, half, max(2, int(math.ceil(length_px * 4)) + 1))
    xs, ys = c + t * math.cos(angle_rad), c + t * math.sin(angle_rad)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    k = np.zeros((size, size), np.float64)
    for dx, dy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), w)
    return k / k.sum()


def disk_kernel(radius_px: float) -> np.ndarray:
    """Normalised defocus PSF: a disk whose edge is anti-aliased (coverage ~ radius + 0.5 - distance)."""
    r = int(math.ceil(radius_px + 0.5))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = np.clip(radius_px + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return k / k.sum()


# ---------------------------------------------------------------------------------------- parameterisation
def parameters(kind: str, severity: float, scale: float = 1.0) -> dict[str, float]:
    """Physical parameters a (kind, severity, scale) maps to, e.g. ``{"sigma_px": 1.6}``.

    The one place the severity -> strength curves live; degrade() uses it and plots/reports print it.
    """
    kind, s, scale = _check_kind(kind), _check_severity(severity), _check_scale(scale)
    if kind == "gaussian_blur":
        return {"sigma_px": GAUSS_SIGMA_PX * s * scale}
    if kind == "motion_blur":
        return {"length_px": MOTION_LENGTH_PX * s * scale}
    if kind == "defocus":
        return {"radius_px": DEFOCUS_RADIUS_PX * s * scale}
    if kind == "gaussian_noise":
        return {"sigma_levels": NOISE_SIGMA_LEVELS * s}
    if kind == "poisson_noise":
        # Shot-noise SNR at white = sqrt(photons) falls linearly with severity, like the Gaussian sigma rises.
        return {"photons_full_scale": math.inf if s == 0 else SHOT_PHOTONS_FULL_SCALE / s ** 2}
    if kind == "jpeg":
        # Geometric in quality: artefacts grow far faster below q~30 than above, so a linear map would put
        # most of the visible damage in the last fifth of the severity range.
        hi, lo = JPEG_QUALITY
        return {"quality": float(round(hi * (lo / hi) ** s))}
    if kind == "downscale":
        # The face ends up 112 / 8**s px wide whatever its size in the frame; never upsample.
        return {"factor": max(1.0, scale * DOWNSCALE_FACTOR ** s), "face_px": 112.0 / DOWNSCALE_FACTOR ** s}
    if kind == "underexposure":
        return {"stops": -UNDER_STOPS * s}
    if kind == "overexposure":
        return {"stops": OVER_STOPS * s}
    if kind == "low_light":
        return {"light_stops": -LOW_LIGHT_STOPS * s, "output_stops": -LOW_LIGHT_DARKEN_STOPS * s,
                "photons_full_scale": LOW_LIGHT_FULL_WELL * 2.0 ** (-LOW_LIGHT_STOPS * s),
                "read_noise_e": LOW_LIGHT_READ_NOISE_E}
    if kind == "contrast":
        return {"contrast_kept": 1.0 - CONTRAST_LOSS * s}
    return {"area_fraction": OCCLUSION_AREA * s, "area_px": OCCLUSION_AREA * s * (112.0 * scale) ** 2}


# ----------------------------------------------------------------------------------------- implementations
_Impl = Callable[[np.ndarray, dict, np.random.Generator, float], np.ndarray]


def _gaussian_blur(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    sigma = p["sigma_px"]
    k = 2 * int(math.ceil(3.0 * sigma)) + 1
    out = cv2.GaussianBlur(img.astype(np.float32), (k, k), sigma, sigma, borderType=cv2.BORDER_REFLECT_101)
    return _to_uint8(out)


def _motion_blur(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    angle = rng.uniform(0.0, math.pi)  # drawn first, independent of severity
    return _filter(img, motion_kernel(p["length_px"], angle))


def _defocus(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    return _filter(img, disk_kernel(p["radius_px"]))


def _gaussian_noise(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    z = rng.standard_normal(img.shape, dtype=np.float32)  # one field per seed: severity only scales it
    return _to_uint8(img.astype(np.float32) + np.float32(p["sigma_levels"]) * z)


def _poisson_noise(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Shot noise lives in linear light (photon counts), so dark regions get relatively noisier after gamma.
    photons = p["photons_full_scale"]
    lam = _TO_LINEAR[img].astype(np.float64) * photons
    return _encode((rng.poisson(lam) / photons).astype(np.float32))


def _jpeg(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(p["quality"])])
    if not ok:
        raise RuntimeError("cv2.imencode('.jpg') failed; this OpenCV build lacks a JPEG encoder")
    flag = cv2.IMREAD_GRAYSCALE if img.ndim == 2 else cv2.IMREAD_COLOR
    return cv2.imdecode(buf, flag)


def _downscale(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    f = p["factor"]
    sw, sh = max(1, round(w / f)), max(1, round(h / f))
    if (sw, sh) == (w, h):
        return img.copy()
    small = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _exposure(img: np.ndarray, stops: float) -> np.ndarray:
    return _lut(img, 255.0 * np.clip(_TO_LINEAR * 2.0 ** stops, 0.0, 1.0) ** (1.0 / GAMMA))


def _underexposure(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    return _exposure(img, p["stops"])


def _overexposure(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    return _exposure(img, p["stops"])  # values pushed past white clip per channel: blown highlights


def _low_light(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    # A dim scene: few photons (shot noise) plus read noise, black-clipped, then the camera's gain lifts
    # the signal back up except for LOW_LIGHT_DARKEN_STOPS: the result is darker AND noisy.
    photons = p["photons_full_scale"]
    lam = _TO_LINEAR[img].astype(np.float64) * photons
    electrons = rng.poisson(lam) + p["read_noise_e"] * rng.standard_normal(img.shape)
    linear = np.maximum(electrons, 0.0) / photons * 2.0 ** p["output_stops"]
    return _encode(linear.astype(np.float32))


def _contrast(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    mean = float(img.mean())  # one grey level for all channels: washes out colour too, like haze/flare
    return _lut(img, mean + (np.arange(256, dtype=np.float64) - mean) * p["contrast_kept"])


def _occlusion(img: np.ndarray, p: dict, rng: np.random.Generator, scale: float) -> np.ndarray:
    # Every random draw comes first and independent of severity: the occluder only grows with it, in place.
    h, w = img.shape[:2]
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    ellipse = bool(rng.integers(2))
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    theta = math.radians(rng.uniform(-30.0, 30.0))
    colour = _OCCLUDER_COLOURS_BGR[rng.integers(len(_OCCLUDER_COLOURS_BGR))] + rng.normal(0.0, 10.0, 3)
    textured = rng.uniform() < 0.7
    blotch_amp, grain_amp = rng.uniform(0.05, 0.25) * textured, rng.uniform(2.0, 8.0) * textured
    shade_dir, shade_amp = rng.uniform(0.0, 2 * math.pi), rng.uniform(0.0, 0.2)
    blotches = rng.standard_normal((5, 5)).astype(np.float32)

    def half_axes(area: float) -> tuple[float, float]:
        if ellipse:
            return math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
        return math.sqrt(area * aspect) / 2.0, math.sqrt(area / aspect) / 2.0

    # Work inside the bounding box of the severity-1 occluder, so texture and grain are fixed per seed.
    a1, b1 = half_axes(OCCLUSION_AREA * (112.0 * scale) ** 2)
    reach = math.hypot(a1, b1) + 2.0 * scale
    x0, x1 = max(0, int(cx - reach)), min(w, int(math.ceil(cx + reach)) + 1)
    y0, y1 = max(0, int(cy - reach)), min(h, int(math.ceil(cy + reach)) + 1)
    bw = bh = int(math.ceil(2 * reach)) + 4
    grain = rng.standard_normal((bh, bw)).astype(np.float32)[: y1 - y0, : x1 - x0]
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = -dx * math.sin(theta) + dy * math.cos(theta)

    a, b = half_axes(p["area_px"])
    if ellipse:
        rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        grad = np.sqrt((u / a ** 2) ** 2 + (v / b ** 2) ** 2) / np.maximum(rho, 1e-6)
        dist = (1.0 - rho) / np.maximum(grad, 1e-6)  # signed distance to the edge in px (first order)
    else:
        dist = np.minimum(a - np.abs(u), b - np.abs(v))
    alpha = np.clip(dist / max(scale, 0.5) + 0.5, 0.0, 1.0)[..., None]  # ~1 px (x scale) soft edge

    field = cv2.resize(blotches, (bw, bh), interpolation=cv2.INTER_CUBIC)[: y1 - y0, : x1 - x0]
    shade = (dx * math.cos(shade_dir) + dy * math.sin(shade_dir)) / reach
    gain = 1.0 + blotch_amp * field + shade_amp * shade
    tex = colour[None, None, :] * gain[..., None] + grain_amp * grain[..., None]
    out = img.copy()
    if img.ndim == 2:
        tex = tex @ np.array([0.114, 0.587, 0.299], np.float32)[:, None]  # BGR -> luma
        region = out[y0:y1, x0:x1, None].astype(np.float32)
        out[y0:y1, x0:x1] = _to_uint8(region * (1 - alpha) + tex * alpha)[..., 0]
    else:
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = _to_uint8(region * (1 - alpha) + tex * alpha)
    return out


_IMPLS: dict[str, _Impl] = {
    "gaussian_blur": _gaussian_blur, "motion_blur": _motion_blur, "defocus": _defocus,
    "gaussian_noise": _gaussian_noise, "poisson_noise": _poisson_noise, "jpeg": _jpeg, "downscale": _downscale,
    "underexposure": _underexposure, "overexposure": _overexposure, "low_light": _low_light,
    "contrast": _contrast, "occlusion": _occlusion,
}
assert set(_IMPLS) == set(DEGRADATION_TYPES)


# ----------------------------------------------------------------------------------------------- public API
def degrade(image: np.ndarray, kind: str, severity: float, seed: int, scale: float = 1.0) -> np.ndarray:
    """Degrade a uint8 BGR (HxWx3) or gray (HxW) image; same shape and dtype out, severity 0 -> exact copy."""
    img = _check_image(image)
    params = parameters(kind, severity, scale)
    seed = _check_seed(seed)
    if float(severity) == 0.0:
        return img.copy()
    out = _IMPLS[kind](img, params, np.random.default_rng(seed), float(scale))
    assert out.shape == img.shape and out.dtype == np.uint8, (kind, out.shape, out.dtype)
    return out


@dataclass(frozen=True)
class Step:
    """One degradation with its severity and seed; validated on construction so a bad chain fails early."""

    kind: str
    severity: float
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _check_kind(self.kind))
        object.__setattr__(self, "severity", _check_severity(self.severity))
        object.__setattr__(self, "seed", _check_seed(self.seed))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "severity": self.severity, "seed": self.seed}


@dataclass(frozen=True)
class Chain:
    """Degradations applied in order; serialisable so a label can always be regenerated from its record."""

    steps: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        steps = tuple(self.steps)
        bad = [s for s in steps if not isinstance(s, Step)]
        if bad:
            raise DegradationError(f"Chain steps must be Step objects, got {type(bad[0]).__name__}; "
                                   "build them with Step(kind, severity, seed) or Chain.from_dict")
        object.__setattr__(self, "steps", steps)

    def apply(self, image: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """Run every step in order on ``image`` (not modified); an empty chain returns a copy."""
        out = _check_image(image).copy()
        _check_scale(scale)
        for st in self.steps:
            out = degrade(out, st.kind, st.severity, st.seed, scale)
        return out

    @property
    def severity(self) -> float:
        """Overall severity 1 - prod(1 - s_i): any one step at 1 gives 1; independent steps compound."""
        return float(1.0 - np.prod([1.0 - s.severity for s in self.steps]))

    def describe(self) -> str:
        """Short human label, e.g. ``gaussian_blur@0.40+jpeg@0.70``; ``clean`` for no steps."""
        return "+".join(f"{s.kind}@{s.severity:.2f}" for s in self.steps) or "clean"

    def to_dict(self) -> dict:
        return {"version": DEGRADATION_VERSION, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Chain":
        """Inverse of :meth:`to_dict`; refuses records from another library version (outputs would differ)."""
        if not isinstance(d, Mapping) or "steps" not in d:
            raise DegradationError(f"not a chain record (need a mapping with 'steps' and 'version'): {d!r}")
        version = d.get("version")
        if version != DEGRADATION_VERSION:
            raise DegradationError(f"chain record has degradation version {version!r} but this library is version "
                                   f"{DEGRADATION_VERSION}; regenerate the labels or install the matching fiqa-sdk")
        steps = []
        for i, st in enumerate(d["steps"]):
            if not isinstance(st, Mapping) or set(st) != {"kind", "severity", "seed"}:
                raise DegradationError(f"chain step {i} must be a mapping with exactly kind, severity, seed: {st!r}")
            steps.append(Step(st["kind"], st["severity"], st["seed"]))
        return cls(tuple(steps))


def sample_chain(rng: np.random.Generator, max_steps: int = 2, kinds: Sequence[str] | None = None,
                 severity_range: tuple[float, float] = (0.0, 1.0)) -> Chain:
    """Draw 1..max_steps distinct degradations (at most one exposure error) in capture-pipeline order.

    Severities are uniform in ``severity_range``; seeds are drawn from ``rng`` so the chain is fully
    determined by the generator's state and can be replayed from :meth:`Chain.to_dict`.
    """
    if not isinstance(rng, np.random.Generator):
        raise DegradationError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got {type(rng).__name__}")
    pool = list(DEGRADATION_TYPES if kinds is None else kinds)
    if not pool:
        raise DegradationError("kinds is empty; pass None for all DEGRADATION_TYPES or a non-empty subset")
    for k in pool:
        _check_kind(k)
    if len(set(pool)) != len(pool):
        raise DegradationError(f"kinds has duplicates: {pool}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise DegradationError(f"max_steps must be an int >= 1, got {max_steps!r}")
    possible = len([k for k in pool if k not in EXPOSURE_TYPES]) + min(1, len(EXPOSURE_TYPES & set(pool)))
    if max_steps > possible:
        raise DegradationError(f"max_steps={max_steps} but kinds {pool} allow at most {possible} distinct steps "
                               "(one exposure type per chain); lower max_steps or add kinds")
    try:
        lo, hi = (_check_severity(v) for v in severity_range)
    except (TypeError, ValueError) as e:
        raise DegradationError(f"severity_range must be (lo, hi) within [0, 1]: {e}") from None
    if lo > hi:
        raise DegradationError(f"severity_range {severity_range} has lo > hi; pass (lo, hi)")

    n = int(rng.integers(1, max_steps + 1))
    chosen: list[str] = []
    for _ in range(n):
        k = pool[int(rng.integers(len(pool)))]
        chosen.append(k)
        pool = [c for c in pool if c != k and not (k in EXPOSURE_TYPES and c in EXPOSURE_TYPES)]
    sev = rng.uniform(lo, hi, n) if hi > lo else np.full(n, lo)
    seeds = rng.integers(0, 2 ** 31, n)
    steps = sorted((Step(k, float(s), int(sd)) for k, s, sd in zip(chosen, sev, seeds)), key=lambda st: _STAGE[st.kind])
    return Chain(tuple(steps))
