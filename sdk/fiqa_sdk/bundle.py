"""Deployment bundles: the directory ``fiqa-compile`` writes and the device loads (numpy only, no torch).

A bundle is a folder holding one or more student models (TFLite and/or ONNX), a ``manifest.json`` sidecar that
describes them, and reports/plots. Model files are never modified: all metadata lives in the manifest, and every
file is hashed there, so :func:`load_bundle` can refuse a bundle that was damaged in transit (SD cards, OTA
updates) before a single byte of a model reaches an inference engine.

Manifest (``manifest.json``, ``schema_version`` 1, 2 or 3)::

    {
      "schema_version": 3,                 # refused if newer than SCHEMA_VERSION (upgrade fiqa-sdk); 2 when
                                           # mirror_average is on, 3 when a score has a calibrated scale: an older
                                           # reader would silently skip either
      "kind": "fiqa-bundle",
      "bundle_id": "<16 hex>",             # bundle_id_for(): sha256 over the (file, sha256) pairs and the rest of
                                           # this manifest, first 16 hex: an edited threshold or scale is refused
      "target": "jetson-orin" | "android-arm64" | "raspberry-pi" | "cpu",
      "created_utc": "2025-01-31T12:00:00Z",
      "models": [                          # in the compiler's order of preference (the tie-break for pick_model)
        {"name": "tflite_int8", "file": "student_int8.tflite", "sha256": "<64 hex>",
         "format": "tflite" | "onnx", "precision": "int8" | "fp32" | "int8-qdq",
         "backends": ["litert", "tflite-runtime"],   # fiqa_runtimes backend names that may run this file
         "input": "<input tensor name in this file>", "output": "<output tensor name in this file>"}, ...],
      "backend_preference": ["tensorrt", "litert", "tflite-runtime", "onnxruntime", "opencv"],
      "input": {"name": "faces", "shape": [null, 3, 112, 112], "dtype": "float32", "layout": "NCHW"},
      "preprocessing": fiqa_sdk.preprocess.SPEC.to_dict(),     # must equal this SDK's spec (check_spec)
      "mirror_average": true | false,      # score = mean of the model on the face and on its mirror image
                                           # (fiqa_sdk.preprocess.mirror_mean); absent = false
      "scores": [                          # model output column `index` -> a 0-100 device score
        {"name": "utility", "index": 0, "teacher": "vit_fiqa_tiny", "mean": m, "std": s, "lo": p01, "hi": p99,
         "range": [0, 100], "higher_is_better": true, "meaning": "...",
         "scale": {"kind": "isotonic", "x": [z...], "y": [0-100...], "meaning": "100 x P(...)",   # optional
                   "fr_models": ["dlib", "mobilefacenet"], "fmr": 0.001, "fitted_on": {...},
                   "per_fr_model": {"dlib": {"x": [...], "y": [...]}, ...}}},
        {"name": "perceptual", "index": 1, ..., "scale": {"kind": "percentile", "meaning": "...", "fitted_on": {...}}}],
      "thresholds": {"utility_accept": 60, ...},     # required (may be {}): fiqa_sdk.gate.GateConfig keys
                                           # (GateConfig.from_manifest)
      "tensorrt": null | {"onnx": "student_qdq.onnx",   # the `file` of one ONNX entry in "models"
                          "calibration_cache": "trt_calibration.cache" | null,   # a key of "files"
                          "build": {"precision": "int8", "fp16_fallback": true, "max_batch": 16, "opt_batch": 1,
                                    "workspace_mb": 256}},
      "files": {"report.md": "<sha256>", "plots/edc.png": "<sha256>", ...},   # every non-model file, hashed
      "provenance": {"command": ..., "teachers": {...}, "student": {...}, "tools": {...}}
    }

Model ``input``/``output`` are the tensor names *inside that file*: ONNX students use ``faces``/``scores``, while
TFLite converters rename tensors (e.g. ``serving_default_args_0``), so the compiler records what the file really
exposes and the scorer addresses tensors by those names only.

Score scale: the student emits z-scores of the teacher's score. For output column ``index``, the teacher-scale
value is ``t = z * std + mean`` and the device score is ``clip(100 * (t - lo) / (hi - lo), 0, 100)``, ``lo``/``hi``
being the teacher's 1st/99th percentiles on the student's distillation set (recorded in its ``student.json``). The 0-100 scale is always higher-is-better:
``higher_is_better`` describes the teacher's own scale, and a lower-is-better teacher is flipped
(``100 * (hi - t) / (hi - lo)``). That percentile scale is a rank, not a probability ("uncalibrated"). A score whose
``scale`` is ``"isotonic"`` is calibrated instead: ``np.interp(z, x, y)`` over its knots (:class:`ScaleSpec`; for
the utility score, 100 x the chance that a comparison with a clean photo of the same person matches at the
scale's FMR). The scale section says what the 0-100 means either way and is verified on load like every field
(kind, knots finite, x strictly increasing, y monotone within 0-100, at most :data:`MAX_SCALE_KNOTS`, text and
record lengths bounded); a manifest without one keeps the percentile scale.

Unknown keys are ignored (a newer compiler may add optional fields without bumping ``schema_version``), except in
``preprocessing``, where a key this SDK does not know is a step it would not apply; a newer ``schema_version`` is
refused. So is what the JSON module would take but no fiqa-compile writes: a key twice in one object (the last
would silently win), NaN or Infinity, nesting deeper than Python's JSON reader goes, a file that is a symlink out
of the bundle folder, TensorRT build settings outside what the engine takes, and score scales whose 1st/99th
percentiles lie absurdly far from the mean (:data:`MAX_SCALE_Z`) or too close together (:data:`MIN_SCALE_SPAN_Z`).
The model bytes an engine gets are hashed as they are read (:meth:`Bundle.model_bytes`), so a model file edited
after :func:`load_bundle` is refused rather than run under the verified ``bundle_id``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping, Sequence

import numpy as np

from fiqa_sdk.preprocess import SPEC, check_spec

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: "mirror_average"; 3: a calibrated score scale (scores[].scale, kind "isotonic"): a reader
                    # that skipped either would score differently
KIND = "fiqa-bundle"
MANIFEST = "manifest.json"
TARGETS = ("jetson-orin", "android-arm64", "raspberry-pi", "cpu")
MODEL_FORMATS = ("tflite", "onnx")
PRECISIONS = ("int8", "fp32", "int8-qdq")
SCORE_NAMES = ("utility", "perceptual")
DEFAULT_BACKEND_PREFERENCE = ("tensorrt", "litert", "tflite-runtime", "onnxruntime", "opencv")
BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"
DEFAULT_BUNDLES = {"android-arm64": "default-android-arm64", "cpu": "default-cpu"}
_TFLITE_BACKENDS = ("litert", "tflite-runtime")
MAX_SCALE_Z = 100.0  # |lo - mean| / std and |hi - mean| / std at most (ScoreSpec)
MIN_SCALE_SPAN_Z = 1e-3  # (hi - lo) / std at least (ScoreSpec)
SCALE_KINDS = ("percentile", "isotonic")  # scores[].scale.kind (ScaleSpec)
MAX_SCALE_KNOTS = 256  # knots of an isotonic scale at most (fiqa-compile writes up to 64)
MAX_SCALE_TEXT = 2000  # characters of a scale's meaning at most
MAX_SCALE_FR_MODELS = 8  # FR models a scale may be averaged over
MAX_SCALE_RECORD = 8000  # characters of a scale's fitted_on record (as compact JSON) at most
TRT_PRECISIONS = ("int8", "fp16", "fp32")
TRT_MAX_BATCH = 1024  # faces; the engine's input and output buffers for 1,024 faces are ~154 MB of device memory
TRT_MAX_WORKSPACE_MB = 65536  # the largest Jetson (AGX Orin 64 GB) has this much memory in all
_REBUILD_HINT = "rebuild it with fiqa-compile, or copy the bundle folder again from its source"


class BundleError(ValueError):
    """A folder that is not a usable bundle (missing manifest, malformed field, spec mismatch)."""


class BundleIntegrityError(BundleError):
    """A file of the bundle is missing or its sha256 differs from the manifest's."""


class UnsupportedBundleVersion(BundleError):
    """The manifest was written by a newer fiqa-compile than this fiqa-sdk understands."""


# -- hashing ----------------------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (models can be tens of MB on a device with little RAM)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundle_id_for(hashes: Mapping[str, str], manifest: Mapping[str, Any] | None = None) -> str:
    """The bundle id: first 16 hex of sha256 over ``"<file>\\t<sha256>\\n"`` lines sorted by file name, then
    (when ``manifest`` is given) a ``"manifest\\t<sha256>\\n"`` line over the manifest's canonical JSON without
    its ``bundle_id``.

    It names the exact models *and* the score scales, thresholds and build settings shipped with them, so capture
    sidecars and decision logs can say what produced them, and a hand-edited manifest is refused at load (tune
    the gate in code instead: ``GateConfig.from_manifest(manifest, **overrides)``).
    """
    text = "".join(f"{name}\t{digest}\n" for name, digest in sorted(hashes.items()))
    if manifest is not None:
        content = {k: v for k, v in manifest.items() if k != "bundle_id"}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        text += f"manifest\t{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}\n"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_relative_name(name: str, what: str) -> str:
    """A bundle-relative POSIX path that cannot escape the bundle folder or shadow the manifest."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{what} must be a non-empty relative file name, got {name!r}")
    p = PurePosixPath(name)
    if p.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in name.split("/")):
        raise BundleError(f"{what} {name!r} must be a plain relative path inside the bundle (no '..', no leading "
                          "'/', forward slashes only)")
    if name == MANIFEST:
        raise BundleError(f"{what} may not be named {MANIFEST!r}: that name is the bundle's manifest")
    return name


# -- manifest sections ------------------------------------------------------------------------------------------------

def _need(d: Mapping[str, Any], key: str, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise BundleError(f"{where} must be a JSON object, got {type(d).__name__}")
    if key not in d:
        raise BundleError(f"{where} lacks the required key {key!r}; {_REBUILD_HINT}")
    return d[key]


def _number(d: Mapping[str, Any], key: str, where: str) -> float:
    v = _need(d, key, where)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise BundleError(f"{where}.{key} must be a finite number, got {v!r}")
    return float(v)


def _string(d: Mapping[str, Any], key: str, where: str, choices: Sequence[str] | None = None) -> str:
    v = _need(d, key, where)
    if not isinstance(v, str) or not v:
        raise BundleError(f"{where}.{key} must be a non-empty string, got {v!r}")
    if choices is not None and v not in choices:
        raise BundleError(f"{where}.{key}={v!r} is not one of {list(choices)}")
    return v


# What a score on a percentile scale (or one without a scale section) means, in one line.
UNCALIBRATED_SUMMARY = ("uncalibrated: a rank on its training data (0 / 100: its 1st / 99th percentile), "
                        "not a probability")


def _knots(d: Mapping[str, Any], where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """An isotonic map's knots, checked: 2..MAX_SCALE_KNOTS finite numbers each, x strictly increasing within
    +-MAX_SCALE_Z (they are the model's z outputs), y non-decreasing within 0..100."""
    pts = []
    for key in ("x", "y"):
        v = _need(d, key, where)
        if not isinstance(v, list) or not 2 <= len(v) <= MAX_SCALE_KNOTS:
            size = len(v) if isinstance(v, list) else type(v).__name__
            raise BundleError(f"{where}.{key} must be a list of 2 to {MAX_SCALE_KNOTS} numbers, got {size}; "
                              f"{_REBUILD_HINT}")
        if any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) for t in v):
            raise BundleError(f"{where}.{key} must hold finite numbers only; {_REBUILD_HINT}")
        pts.append(tuple(float(t) for t in v))
    x, y = pts
    if len(x) != len(y):
        raise BundleError(f"{where}: x has {len(x)} knots and y {len(y)}; each knot is one (x, y) pair")
    if any(b <= a for a, b in zip(x, x[1:])):
        raise BundleError(f"{where}.x must be strictly increasing (the model's raw outputs at the knots)")
    if max(abs(x[0]), abs(x[-1])) > MAX_SCALE_Z:
        raise BundleError(f"{where}.x spans {x[0]:.3g}..{x[-1]:.3g}: the model's outputs are z-scores, within "
                          f"+-{MAX_SCALE_Z:g}; {_REBUILD_HINT}")
    if any(b < a for a, b in zip(y, y[1:])):
        raise BundleError(f"{where}.y must not decrease: the scale is monotone (a higher raw output never means a "
                          f"lower score); {_REBUILD_HINT}")
    if y[0] < 0 or y[-1] > 100:
        raise BundleError(f"{where}.y spans {y[0]:.3g}..{y[-1]:.3g}, outside the 0-100 device scale")
    return x, y


def _text(d: Mapping[str, Any], key: str, where: str) -> str:
    v = _string(d, key, where)
    if len(v) > MAX_SCALE_TEXT:
        raise BundleError(f"{where}.{key} is {len(v)} characters; at most {MAX_SCALE_TEXT}")
    return v


@dataclass(frozen=True)
class ScaleSpec:
    """What a score's 0-100 means, and (``kind`` "isotonic") the calibrated map the device applies.

    * ``"percentile"``: uncalibrated. The score is the linear map of :class:`ScoreSpec` between the teacher's 1st
      and 99th percentiles on the data the student learnt from: a rank on that data, not a probability.
      ``meaning`` says so and on what it was fitted; nothing else is read.
    * ``"isotonic"``: calibrated. ``score = np.interp(z, x, y)`` for the model's raw output ``z`` (clamped to
      ``y[0]``/``y[-1]`` outside the knots): a monotone map fitted to an observed outcome, which ``meaning``
      states (for the utility score: 100 x the chance that a comparison with a clean photo of the same person
      matches at ``fmr``, averaged over ``fr_models``). ``per_fr_model`` may hold each FR model's own map
      (``{"dlib": {"x": [...], "y": [...]}}``) for a site that runs only that one. ``fitted_on``: a JSON record of
      the fit (data, people, comparisons), for people, not read by the scorer.
    """

    kind: str
    meaning: str
    x: tuple[float, ...] = ()
    y: tuple[float, ...] = ()
    fr_models: tuple[str, ...] = ()
    fmr: float | None = None
    fitted_on: dict[str, Any] = field(default_factory=dict)
    per_fr_model: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return self.kind == "isotonic"

    @classmethod
    def from_dict(cls, d: Any, where: str = "scale") -> ScaleSpec:
        if not isinstance(d, Mapping):
            raise BundleError(f"{where} must be a JSON object, got {type(d).__name__}")
        kind = _string(d, "kind", where, SCALE_KINDS)
        meaning = _text(d, "meaning", where)
        fitted_on = d.get("fitted_on", {})
        if not isinstance(fitted_on, Mapping):
            raise BundleError(f"{where}.fitted_on must be a JSON object, got {type(fitted_on).__name__}")
        if len(json.dumps(fitted_on, separators=(",", ":"))) > MAX_SCALE_RECORD:
            raise BundleError(f"{where}.fitted_on is longer than {MAX_SCALE_RECORD} characters of JSON: it records "
                              "a fit, it does not hold its data; " + _REBUILD_HINT)
        if kind == "percentile":
            extra = sorted(k for k in ("x", "y", "per_fr_model") if k in d)
            if extra:
                raise BundleError(f"{where}: a percentile scale has no knots, but it holds {extra}: either the kind "
                                  f"or the knots are wrong; {_REBUILD_HINT}")
            return cls(kind=kind, meaning=meaning, fitted_on=dict(fitted_on))
        x, y = _knots(d, where)
        models = _need(d, "fr_models", where)
        if (not isinstance(models, list) or not 1 <= len(models) <= MAX_SCALE_FR_MODELS
                or not all(isinstance(m, str) and m and len(m) <= 64 for m in models) or len(set(models)) != len(models)):
            raise BundleError(f"{where}.fr_models must list 1 to {MAX_SCALE_FR_MODELS} distinct FR model names, got "
                              f"{models!r}")
        fmr = _number(d, "fmr", where)
        if not 0.0 < fmr < 1.0:
            raise BundleError(f"{where}.fmr={fmr} must be a false-match rate between 0 and 1")
        per = d.get("per_fr_model", {})
        if not isinstance(per, Mapping) or not set(per) <= set(models):
            raise BundleError(f"{where}.per_fr_model must map some of fr_models {models} to their own knots, got "
                              f"{sorted(per) if isinstance(per, Mapping) else type(per).__name__}")
        own = {m: _knots(k, f"{where}.per_fr_model[{m!r}]") for m, k in per.items()}
        return cls(kind=kind, meaning=meaning, x=x, y=y, fr_models=tuple(models), fmr=fmr,
                   fitted_on=dict(fitted_on), per_fr_model=own)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "meaning": self.meaning}
        if self.calibrated:
            out.update(x=list(self.x), y=list(self.y), fr_models=list(self.fr_models), fmr=self.fmr)
            if self.per_fr_model:
                out["per_fr_model"] = {m: {"x": list(x), "y": list(y)} for m, (x, y) in self.per_fr_model.items()}
        out["fitted_on"] = dict(self.fitted_on)
        return out

    def apply(self, z: np.ndarray, fr_model: str | None = None) -> np.ndarray:
        """Raw model outputs -> the calibrated 0-100 score (``fr_model``: that model's own map, where the scale
        has one). Only for an isotonic scale."""
        if not self.calibrated:
            raise ValueError(f"a {self.kind} scale has no calibrated map; use ScoreSpec.to_0_100")
        x, y = (self.x, self.y) if fr_model is None else self.per_fr_model.get(fr_model, (None, None))
        if x is None:
            raise KeyError(f"this scale has no map of its own for FR model {fr_model!r}; it has "
                           f"{sorted(self.per_fr_model)} (fr_model=None: the average over {list(self.fr_models)})")
        return np.interp(np.asarray(z, dtype=np.float64), x, y)

    def summary(self) -> str:
        """One line for command-line output and Scorer.info: what a score on this scale means."""
        if not self.calibrated:
            return UNCALIBRATED_SUMMARY
        models = " / ".join(self.fr_models) + (" averaged" if len(self.fr_models) > 1 else "")
        return (f"calibrated: 90 = about 9 in 10 comparisons with a clean photo of the same person match at FMR "
                f"{self.fmr:g} ({models})")


@dataclass(frozen=True)
class ScoreSpec:
    """How one model output column becomes a 0-100 device score (see the module docstring)."""

    name: str
    index: int
    teacher: str
    mean: float
    std: float
    lo: float
    hi: float
    higher_is_better: bool = True
    meaning: str = ""
    scale: ScaleSpec | None = None  # what the 0-100 means; an isotonic one replaces the percentile map

    def __post_init__(self) -> None:
        where = f"scores[{self.name!r}]"
        if self.scale is not None and not isinstance(self.scale, ScaleSpec):
            raise BundleError(f"{where}.scale must be a ScaleSpec, got {type(self.scale).__name__}")
        if self.name not in SCORE_NAMES:
            raise BundleError(f"{where}: score name must be one of {list(SCORE_NAMES)}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or self.index < 0:
            raise BundleError(f"{where}.index must be an integer >= 0, got {self.index!r}")
        for k in ("mean", "std", "lo", "hi"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise BundleError(f"{where}.{k} must be a finite number, got {v!r}")
        if self.std <= 0:
            raise BundleError(f"{where}.std={self.std} must be > 0 (it un-normalises the model's z-score)")
        if self.hi <= self.lo:
            raise BundleError(f"{where}: hi={self.hi} must be above lo={self.lo} (they are the teacher's "
                              "1st/99th percentiles)")
        # In the model's z units the 0-100 scale runs from z_lo to z_hi. For percentiles and moments of one set of
        # scores both lie within 10 of 0 (Cantelli's inequality); 100 leaves room for hand-set wide limits.
        if not math.isfinite(self.hi - self.lo):
            raise BundleError(f"{where}: hi - lo overflows (lo={self.lo}, hi={self.hi}): no scale fits in floating "
                              f"point; {_REBUILD_HINT}")
        z_lo, z_hi = (self.lo - self.mean) / self.std, (self.hi - self.mean) / self.std
        if not (math.isfinite(z_lo) and math.isfinite(z_hi)) or max(abs(z_lo), abs(z_hi)) > MAX_SCALE_Z:
            raise BundleError(f"{where}: lo={self.lo} and hi={self.hi} lie {z_lo:.3g} and {z_hi:.3g} standard "
                              f"deviations from mean={self.mean} (std={self.std}); as the teacher's 1st/99th "
                              f"percentiles and its mean/std they lie within 10, so this scale is not one fiqa-compile "
                              f"wrote (beyond {MAX_SCALE_Z:g} it is refused); {_REBUILD_HINT}")
        if z_hi - z_lo < MIN_SCALE_SPAN_Z:
            raise BundleError(f"{where}: hi - lo = {self.hi - self.lo:.3g} is {(z_hi - z_lo):.3g} standard deviations "
                              f"(std={self.std}), under {MIN_SCALE_SPAN_Z:g}: a step, not a scale (every face would "
                              f"score 0 or 100); {_REBUILD_HINT}")
        if not isinstance(self.higher_is_better, bool):
            raise BundleError(f"{where}.higher_is_better must be true or false, got {self.higher_is_better!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ScoreSpec:
        name = _string(d, "name", "scores[]")
        where = f"scores[{name!r}]"
        rng = d.get("range", [0, 100])
        if not isinstance(rng, list) or rng != [0, 100]:
            raise BundleError(f"{where}.range={rng!r}: schema 1 defines the device scale as [0, 100]")
        index = _need(d, "index", where)
        scale = d.get("scale")
        return cls(name=name, index=index, teacher=str(_need(d, "teacher", where)),
                   mean=_number(d, "mean", where), std=_number(d, "std", where), lo=_number(d, "lo", where),
                   hi=_number(d, "hi", where), higher_is_better=d.get("higher_is_better", True),
                   meaning=str(d.get("meaning", "")),
                   scale=None if scale is None else ScaleSpec.from_dict(scale, f"{where}.scale"))

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "index": self.index, "teacher": self.teacher, "mean": self.mean, "std": self.std,
               "lo": self.lo, "hi": self.hi, "range": [0, 100], "higher_is_better": self.higher_is_better,
               "meaning": self.meaning}
        if self.scale is not None:
            out["scale"] = self.scale.to_dict()
        return out

    @property
    def calibrated(self) -> bool:
        """Whether the 0-100 is a calibrated scale (an isotonic map) rather than the percentile one."""
        return self.scale is not None and self.scale.calibrated

    def scale_summary(self) -> str:
        """What this score's 0-100 means, in one line (command lines, Scorer.info)."""
        return self.scale.summary() if self.scale is not None else UNCALIBRATED_SUMMARY

    def teacher_scale(self, z: np.ndarray) -> np.ndarray:
        """Model z-scores -> the teacher's own score scale."""
        return np.asarray(z, dtype=np.float64) * self.std + self.mean

    def to_0_100(self, z: np.ndarray) -> np.ndarray:
        """Model z-scores -> the device's 0-100, higher-is-better scale: the calibrated map where the score has an
        isotonic scale (np.interp over its knots), else linear between the percentiles (clipped there)."""
        if self.calibrated:
            return np.clip(self.scale.apply(z), 0.0, 100.0)
        t = self.teacher_scale(z)
        frac = (t - self.lo) / (self.hi - self.lo) if self.higher_is_better else (self.hi - t) / (self.hi - self.lo)
        return np.clip(100.0 * frac, 0.0, 100.0)


@dataclass(frozen=True)
class ModelEntry:
    """One model file of the bundle. ``input``/``output``: tensor names inside that file."""

    name: str
    file: str
    sha256: str
    format: str
    precision: str
    backends: tuple[str, ...]
    input: str
    output: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], i: int) -> ModelEntry:
        where = f"models[{i}]"
        backends = _need(d, "backends", where)
        if not isinstance(backends, list) or not backends or not all(isinstance(b, str) and b for b in backends):
            raise BundleError(f"{where}.backends must be a non-empty list of backend names, got {backends!r}")
        return cls(name=_string(d, "name", where), file=check_relative_name(_string(d, "file", where), f"{where}.file"),
                   sha256=_sha(_need(d, "sha256", where), f"{where}.sha256"),
                   format=_string(d, "format", where, MODEL_FORMATS),
                   precision=_string(d, "precision", where, PRECISIONS), backends=tuple(backends),
                   input=_string(d, "input", where), output=_string(d, "output", where))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "file": self.file, "sha256": self.sha256, "format": self.format,
                "precision": self.precision, "backends": list(self.backends), "input": self.input,
                "output": self.output}


@dataclass(frozen=True)
class TensorRTSpec:
    """How a Jetson builds its engine: which bundled ONNX, optional calibration cache, builder settings."""

    onnx: str
    calibration_cache: str | None
    build: dict[str, Any]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorRTSpec:
        onnx = check_relative_name(_string(d, "onnx", "tensorrt"), "tensorrt.onnx")
        cache = d.get("calibration_cache")
        if cache is not None:
            cache = check_relative_name(cache, "tensorrt.calibration_cache")
        build = d.get("build", {})
        if not isinstance(build, Mapping):
            raise BundleError(f"tensorrt.build must be a JSON object, got {type(build).__name__}")
        _check_build(build)
        return cls(onnx=onnx, calibration_cache=cache, build=dict(build))

    def backend_options(self) -> dict[str, Any]:
        """Keyword options for :class:`fiqa_runtimes.tensorrt_backend.TensorRTBackend` from ``build``.

        ``fp16_fallback`` lets TensorRT < 11 run the layers outside Q/DQ pairs in fp16; TensorRT 11 is strongly
        typed and follows the ONNX's own types.
        """
        keys = ("precision", "fp16_fallback", "max_batch", "opt_batch", "workspace_mb")
        return {k: self.build[k] for k in keys if k in self.build}

    def to_dict(self) -> dict[str, Any]:
        return {"onnx": self.onnx, "calibration_cache": self.calibration_cache, "build": dict(self.build)}


def _check_build(build: Mapping[str, Any]) -> None:
    """The builder settings a Jetson would build its engine with: known keys of the types and ranges
    :class:`fiqa_runtimes.tensorrt_backend.TensorRTBackend` takes (a TensorRT build from a bad one fails after
    minutes, or allocates device memory for a million faces)."""
    where = "tensorrt.build"
    if "precision" in build and build["precision"] not in TRT_PRECISIONS:
        raise BundleError(f"{where}.precision={build['precision']!r} is not one of {list(TRT_PRECISIONS)}; "
                          f"{_REBUILD_HINT}")
    if "fp16_fallback" in build and not isinstance(build["fp16_fallback"], bool):
        raise BundleError(f"{where}.fp16_fallback must be true or false, got {build['fp16_fallback']!r}")
    limits = {"max_batch": TRT_MAX_BATCH, "opt_batch": TRT_MAX_BATCH, "workspace_mb": TRT_MAX_WORKSPACE_MB}
    for key, most in limits.items():
        v = build.get(key, 1)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= most:
            raise BundleError(f"{where}.{key} must be an integer from 1 to {most}, got {v!r}; {_REBUILD_HINT}")
    if "opt_batch" in build and build["opt_batch"] > build.get("max_batch", build["opt_batch"]):
        raise BundleError(f"{where}: opt_batch={build['opt_batch']} is above max_batch={build['max_batch']} (the "
                          "batch size kernels are tuned for must be one the engine takes)")


def _sha(v: Any, where: str) -> str:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise BundleError(f"{where} must be a 64-character lowercase hex sha256, got {v!r}")
    return v


# -- the bundle -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelChoice:
    """A model file and the backend that will run it."""

    model: ModelEntry
    backend: str
    path: Path
    options: dict[str, Any] = field(default_factory=dict)  # extra backend options (TensorRT build settings)


@dataclass
class LoadedModel:
    """A model loaded into an engine, plus the candidates tried before it and why they were passed over."""

    choice: ModelChoice
    backend: Any  # fiqa_runtimes.Backend
    skipped: list[tuple[ModelChoice, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Bundle:
    """A verified bundle (only :func:`load_bundle` builds one). ``manifest`` is the raw JSON for extra keys."""

    path: Path
    manifest: dict[str, Any]
    bundle_id: str
    target: str
    created_utc: str
    models: tuple[ModelEntry, ...]
    backend_preference: tuple[str, ...]
    scores: tuple[ScoreSpec, ...]
    thresholds: dict[str, Any]
    tensorrt: TensorRTSpec | None
    files: dict[str, str]
    provenance: dict[str, Any]
    mirror_average: bool = False

    # -- scores ------------------------------------------------------------------------------------------------
    @property
    def score_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.scores)

    def score(self, name: str) -> ScoreSpec:
        for s in self.scores:
            if s.name == name:
                return s
        raise KeyError(f"bundle has no score {name!r}; it has {list(self.score_names)}")

    def to_0_100(self, z: np.ndarray) -> np.ndarray:
        """Raw model output [N, K] -> [N, len(scores)] device scores, columns in :attr:`score_names` order."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim != 2:
            raise ValueError(f"model output must be [N, K], got shape {z.shape}")
        need = max(s.index for s in self.scores) + 1
        if z.shape[1] < need:
            raise ValueError(f"model output has {z.shape[1]} columns but the manifest reads column {need - 1}")
        return np.stack([s.to_0_100(z[:, s.index]) for s in self.scores], axis=1)

    def gate_config(self, **overrides: Any):
        """The capture gate's configuration from this bundle's ``thresholds`` (keyword overrides win)."""
        from fiqa_sdk.gate import GateConfig

        return GateConfig.from_manifest(self.manifest, **overrides)

    # -- models ------------------------------------------------------------------------------------------------
    def model_path(self, model: ModelEntry) -> Path:
        return self.path / model.file

    def model_bytes(self, model: ModelEntry) -> bytes:
        """The model file's bytes, hashed again as they are read: what :meth:`load_model` hands an engine is what the
        manifest's sha256 names, even when the file was replaced or edited after :func:`load_bundle` verified it
        (no engine reads the file itself, so nothing can change between this check and the load)."""
        path = _inside(self.path, model.file)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BundleError(f"bundle {self.path}: cannot read model file {model.file} ({e.strerror or e}); check "
                              "that it is still there and this user may read it") from e
        actual = hashlib.sha256(data).hexdigest()
        if actual != model.sha256:
            raise BundleIntegrityError(
                f"bundle {self.path}: model file {model.file} changed after the bundle was verified (sha256 now "
                f"{actual}, the manifest's {model.sha256}), so it was not loaded. Something edited or replaced it "
                f"on disk; load the bundle again once its files are back as compiled, or {_REBUILD_HINT}")
        return data

    def candidates(self, backend: str = "auto", model: str | None = None) -> list[ModelChoice]:
        """(model, backend) pairs to try, best first.

        ``auto``: backends in ``backend_preference`` order, keeping those ``fiqa_runtimes`` reports installed for
        the model's format and that the model lists; models in manifest order within a backend. A named backend:
        every model that lists it (installed or not: loading it then says what is missing). ``model`` restricts
        the choice to one model entry by name.
        """
        from fiqa_runtimes import available_backends

        models = list(self.models)
        if model is not None:
            models = [m for m in models if m.name == model]
            if not models:
                raise BundleError(f"bundle {self.path} has no model named {model!r}; it has "
                                  f"{[m.name for m in self.models]}")
        if backend == "auto":
            out = []
            installed = {fmt: set(available_backends(fmt)) for fmt in MODEL_FORMATS}
            for b in self.backend_preference:
                for m in models:
                    if b in m.backends and b in installed[m.format] and self._usable(m, b):
                        out.append(self._choice(m, b))
            return out
        listed = [m for m in models if backend in m.backends and self._usable(m, backend)]
        if not listed and backend == "tensorrt" and self.tensorrt is None:
            raise BundleError(f"bundle {self.path} (target {self.target}) has no TensorRT build section, so no "
                              "engine can be built from it; compile one with `fiqa-compile --target jetson-orin`, "
                              "or use backend='auto'")
        if not listed:
            offered = sorted({b for m in models for b in m.backends})
            raise BundleError(f"no model in bundle {self.path} is meant for backend {backend!r}; its models list "
                              f"{offered} (use backend='auto' or one of those)")
        return [self._choice(m, backend) for m in listed]

    def _usable(self, m: ModelEntry, backend: str) -> bool:
        # TensorRT builds from the ONNX the manifest's "tensorrt" section names, with its build settings.
        return backend != "tensorrt" or (self.tensorrt is not None and m.file == self.tensorrt.onnx)

    def _choice(self, m: ModelEntry, backend: str) -> ModelChoice:
        options: dict[str, Any] = {}
        if backend == "tensorrt" and self.tensorrt is not None:
            options = self.tensorrt.backend_options()
        elif backend == "opencv":
            options = {"input_names": [m.input]}  # OpenCV DNN cannot list a graph's input names itself
        return ModelChoice(model=m, backend=backend, path=self.model_path(m), options=options)

    def pick_model(self, backend: str = "auto", model: str | None = None) -> ModelChoice:
        """The first candidate of :meth:`candidates` (what :meth:`load_model` tries first); loads nothing."""
        found = self.candidates(backend, model)
        if not found:
            from fiqa_runtimes import available_backends

            raise BundleError(
                f"no installed runtime can run any model of bundle {self.path}: its models need "
                f"{sorted({b for m in self.models for b in m.backends})}, installed are {available_backends()}; "
                "pip install ai-edge-litert (LiteRT) or onnxruntime (ONNX Runtime): fiqa-sdk's 'tflite' / 'onnx' "
                "extras")
        return found[0]

    def load_model(self, backend: str = "auto", threads: int | None = None, model: str | None = None) -> LoadedModel:
        """Load the best model into its engine.

        With ``auto``, a candidate whose engine turns out unusable (``BackendUnavailable``: e.g. ``tensorrt``
        importable but no CUDA bindings or GPU) is skipped with a warning and the next one is tried; the reasons
        are kept in :attr:`LoadedModel.skipped`. A named backend is tried alone and its error is raised.
        """
        from fiqa_runtimes import BackendUnavailable, load_backend

        cands = self.candidates(backend, model)
        if not cands:
            self.pick_model(backend, model)  # raises, naming what to install
        skipped: list[tuple[ModelChoice, str]] = []
        for c in cands:
            data = self.model_bytes(c.model)
            try:
                engine = load_backend(data, c.model.format, backend=c.backend, threads=threads, **c.options)
            except BackendUnavailable as e:
                if backend != "auto":  # the same error, saying which bundle and file the named engine failed on
                    raise type(e)(f"bundle {self.path}: model file {c.model.file} on backend {c.backend}: {e}") from e
                log.warning("bundle %s (%s): backend %s unavailable for %s (%s); trying the next one",
                            self.path, self.bundle_id, c.backend, c.model.file, e)
                skipped.append((c, str(e)))
                continue
            return LoadedModel(choice=c, backend=engine, skipped=skipped)
        tried = "; ".join(f"{c.backend}/{c.model.file}: {why}" for c, why in skipped)
        raise BackendUnavailable(f"no backend could load a model of bundle {self.path}: {tried}")


# -- loading ----------------------------------------------------------------------------------------------------------

class _StrictJSONError(ValueError):
    """Valid for Python's json module, but not a manifest: a key given twice, NaN or Infinity."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json ``object_pairs_hook``: a key given twice would silently keep its last value (e.g. a second
    ``utility_accept`` that the bundle id's canonical JSON never shows twice)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _StrictJSONError(f"key {key!r} appears twice in one JSON object")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    """json ``parse_constant``: NaN and Infinity are not JSON, and no manifest value may be non-finite."""
    raise _StrictJSONError(f"it holds {name}, which is not JSON")


def _inside(root: Path, name: str) -> Path:
    """``root / name``, refused when it resolves (through a symlink) outside the bundle folder: a bundle is the
    files in its folder, and a link out would load whatever the link's target holds at the time."""
    path = root / name
    try:
        real, top = path.resolve(), root.resolve()
    except RuntimeError as e:  # a symlink loop (Python < 3.13 says so this way; later ones raise OSError)
        raise BundleError(f"bundle {root}: {name} cannot be resolved ({e}); {_REBUILD_HINT}") from e
    if not real.is_relative_to(top):
        raise BundleError(f"bundle {root}: {name} is a symlink to {real}, outside the bundle folder; a bundle must "
                          f"be self-contained: copy the real file in (cp -L) or {_REBUILD_HINT}")
    return path


def _read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    if path.is_file() and path.name == MANIFEST:
        path = path.parent
    if not path.exists():
        raise BundleError(f"bundle folder {path} does not exist")
    if not path.is_dir():
        raise BundleError(f"{path} is not a bundle folder (a bundle is a directory holding {MANIFEST})")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{path} is not a fiqa bundle: it has no {MANIFEST}. Point to the folder fiqa-compile "
                          "wrote (fiqa-compile --target cpu --out <folder>)")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys,
                              parse_constant=_no_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath} is not valid JSON ({e}); {_REBUILD_HINT}") from e
    except _StrictJSONError as e:
        raise BundleError(f"{mpath}: {e}; fiqa-compile never writes one, so the manifest was edited by hand; "
                          f"{_REBUILD_HINT}") from e
    except RecursionError as e:
        raise BundleError(f"{mpath} nests its JSON deeper than this Python can read (a fiqa manifest is a few "
                          f"levels deep); {_REBUILD_HINT}") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{mpath} must hold a JSON object, got {type(manifest).__name__}")
    return path, manifest


def _check_header(manifest: dict[str, Any], mpath: Path) -> None:
    if manifest.get("kind") != KIND:
        raise BundleError(f"{mpath} is not a fiqa bundle manifest (kind={manifest.get('kind')!r}, expected {KIND!r})")
    version = manifest.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{mpath}: schema_version must be a positive integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise UnsupportedBundleVersion(
            f"{mpath} uses bundle schema_version {version}, but this fiqa-sdk reads up to {SCHEMA_VERSION}; upgrade "
            "fiqa-sdk (pip install --upgrade fiqa-sdk) or rebuild the bundle with the fiqa-compile matching this SDK")


def _verify_files(root: Path, hashes: Mapping[str, str]) -> None:
    problems = []
    for name, expected in sorted(hashes.items()):
        p = _inside(root, name)
        if not p.is_file():
            problems.append(f"{name}: missing (expected sha256 {expected})")
            continue
        actual = sha256_file(p)
        if actual != expected:
            problems.append(f"{name}: corrupt, sha256 is {actual}, manifest expects {expected}")
    if problems:
        raise BundleIntegrityError(f"bundle {root} failed verification; nothing was loaded:\n  "
                                   + "\n  ".join(problems) + f"\nThe bundle is damaged or was edited; {_REBUILD_HINT}")


def _check_input(section: Any) -> None:
    expect = {"name": "faces", "shape": [None, 3, SPEC.size, SPEC.size], "dtype": SPEC.dtype, "layout": SPEC.layout}
    if not isinstance(section, Mapping):
        raise BundleError(f"manifest 'input' must be a JSON object, got {type(section).__name__}")
    wrong = {k: section.get(k) for k in expect if section.get(k) != expect[k]}
    if wrong:
        raise BundleError(f"manifest 'input' has {wrong}; this fiqa-sdk feeds {expect}. Recompile the bundle with a "
                          "matching fiqa-compile")


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle: header, every field this SDK uses, every file's sha256, the bundle id and the
    preprocessing spec, before anything is loaded. Raises :class:`BundleError` (or a subclass) naming the fix,
    also for a folder or file that cannot be read (permissions, a name too long for the filesystem)."""
    try:
        return _load_bundle(Path(path))
    except OSError as e:  # whichever file of the bundle it was: one place, so no read on the way can escape raw
        where = e.filename if e.filename is not None else path
        raise BundleError(f"bundle {path}: cannot read {os.fsdecode(where)} ({e.strerror or e}); check the path, "
                          "and that this user may read the bundle folder and every file in it") from e


def _load_bundle(path: Path) -> Bundle:
    root, m = _read_manifest(path)
    mpath = root / MANIFEST
    _check_header(m, mpath)

    models_raw = _need(m, "models", "manifest")
    if not isinstance(models_raw, list) or not models_raw:
        raise BundleError(f"{mpath}: 'models' must be a non-empty list")
    models = tuple(ModelEntry.from_dict(d, i) for i, d in enumerate(models_raw))
    files_raw = m.get("files", {})
    if not isinstance(files_raw, Mapping):
        raise BundleError(f"{mpath}: 'files' must map file names to sha256, got {type(files_raw).__name__}")
    files = {check_relative_name(k, "files key"): _sha(v, f"files[{k!r}]") for k, v in files_raw.items()}
    hashes: dict[str, str] = {}
    for entry in models:
        if entry.file in hashes:
            raise BundleError(f"{mpath}: model file {entry.file!r} is listed twice")
        hashes[entry.file] = entry.sha256
    for name, digest in files.items():
        if name in hashes:
            raise BundleError(f"{mpath}: {name!r} is listed both as a model and under 'files'")
        hashes[name] = digest
    if len({e.name for e in models}) != len(models):
        raise BundleError(f"{mpath}: model names must be unique, got {[e.name for e in models]}")

    bundle_id = _string(m, "bundle_id", "manifest")
    try:
        check_spec(_need(m, "preprocessing", "manifest"))
    except ValueError as e:
        raise BundleError(f"bundle {root}: {e}") from e
    _check_input(_need(m, "input", "manifest"))

    scores_raw = _need(m, "scores", "manifest")
    if not isinstance(scores_raw, list):
        raise BundleError(f"{mpath}: 'scores' must be a list")
    scores = tuple(ScoreSpec.from_dict(d) for d in scores_raw)
    if sorted(s.name for s in scores) != sorted(SCORE_NAMES) or len({s.index for s in scores}) != len(scores):
        raise BundleError(f"{mpath}: 'scores' must describe {list(SCORE_NAMES)} once each on distinct output "
                          f"columns, got {[(s.name, s.index) for s in scores]}")
    scores = tuple(sorted(scores, key=lambda s: SCORE_NAMES.index(s.name)))
    calibrated = [s.name for s in scores if s.calibrated]
    if calibrated and m["schema_version"] < 3:  # schema-2 readers would skip the map and score on percentiles
        raise BundleError(f"{mpath}: scores {calibrated} have a calibrated (isotonic) scale, which needs "
                          f"schema_version 3; the manifest says {m['schema_version']}; {_REBUILD_HINT}")

    pref = m.get("backend_preference", list(DEFAULT_BACKEND_PREFERENCE))
    if not isinstance(pref, list) or not all(isinstance(b, str) for b in pref):
        raise BundleError(f"{mpath}: 'backend_preference' must be a list of backend names, got {pref!r}")
    if "thresholds" not in m:  # every fiqa-compile writes one (maybe {}); the capture gate cannot run without it
        raise BundleError(f"{mpath} has no 'thresholds' section, which the capture gate (CapturePipeline, fiqa-score, "
                          f"examples/capture_gate.py) reads; {_REBUILD_HINT}")
    thresholds = m["thresholds"]
    if not isinstance(thresholds, Mapping):
        raise BundleError(f"{mpath}: 'thresholds' must be a JSON object, got {type(thresholds).__name__}")
    trt = m.get("tensorrt")
    tensorrt = TensorRTSpec.from_dict(trt) if trt is not None else None
    if tensorrt is not None:
        onnx_files = [e.file for e in models if e.format == "onnx"]
        if tensorrt.onnx not in onnx_files:
            raise BundleError(f"{mpath}: tensorrt.onnx={tensorrt.onnx!r} is not one of the bundle's ONNX models "
                              f"{onnx_files}")
        if tensorrt.calibration_cache is not None and tensorrt.calibration_cache not in files:
            raise BundleError(f"{mpath}: tensorrt.calibration_cache={tensorrt.calibration_cache!r} is not listed "
                              "(and hashed) under 'files'")
    provenance = m.get("provenance", {})
    mirror = m.get("mirror_average", False)
    if not isinstance(mirror, bool):
        raise BundleError(f"{mpath}: 'mirror_average' must be true or false, got {mirror!r}")
    if mirror and m["schema_version"] < 2:  # schema-1 readers would skip it and score differently
        raise BundleError(f"{mpath}: 'mirror_average' needs schema_version 2, the manifest says "
                          f"{m['schema_version']}; {_REBUILD_HINT}")
    bundle = Bundle(path=root, manifest=m, bundle_id=bundle_id,
                    target=_string(m, "target", "manifest", TARGETS), created_utc=str(m.get("created_utc", "")),
                    models=models, backend_preference=tuple(pref), scores=scores, thresholds=dict(thresholds),
                    tensorrt=tensorrt, files=files, provenance=provenance if isinstance(provenance, dict) else {},
                    mirror_average=mirror)
    if thresholds:
        try:  # a threshold the gate cannot use fails here, not on the first frame of a capture run
            bundle.gate_config()
        except (TypeError, ValueError) as e:
            raise BundleError(f"{mpath}: 'thresholds' are not a valid gate configuration: {e}") from e
    # Last, after every field made sense: the id covers the file list and the manifest's content, then the files.
    expected = bundle_id_for(hashes, m)
    if bundle_id != expected:
        why = ("it covers only the file list: the bundle was written by an older fiqa-compile, before the id covered "
               "the scales and thresholds" if bundle_id == bundle_id_for(hashes) else
               "the manifest was edited after it was compiled (models, scales, thresholds or settings)")
        raise BundleIntegrityError(f"{mpath}: bundle_id {bundle_id!r} does not match its files and settings "
                                   f"(computed {expected!r}): {why}; {_REBUILD_HINT}")
    _verify_files(root, hashes)
    return bundle


# -- embedded defaults ------------------------------------------------------------------------------------------------

def default_bundle_paths(bundles_dir: str | os.PathLike | None = None, backend: str = "auto") -> list[Path]:
    """The embedded bundles, best fit first for the installed runtimes or the runtime asked for.

    With LiteRT (or tflite-runtime) installed, the ``android-arm64`` bundle first: its full-INT8 TFLite runs on
    XNNPACK's int8 kernels on ARM and x86 alike (about 2x faster than the fp32 ONNX in ONNX Runtime on x86 in our
    measurements), then ``cpu``. Otherwise ``cpu`` first. A named ``backend`` puts first the bundle whose models it
    runs (ONNX engines: ``cpu``; TFLite interpreters: ``android-arm64``). Only bundles that exist are listed.
    "Installed" means found, not imported: a runtime that turns out broken when loaded is why the second exists
    (:class:`~fiqa_sdk.scorer.Scorer` falls back to it).
    """
    from fiqa_runtimes import available_backends

    root = Path(bundles_dir) if bundles_dir is not None else BUNDLES_DIR
    if backend in _TFLITE_BACKENDS:
        has_tflite = True
    elif backend != "auto":
        has_tflite = False  # onnxruntime, opencv, tensorrt: ONNX models
    else:
        has_tflite = any(b in available_backends("tflite") for b in _TFLITE_BACKENDS)
    order = ["android-arm64", "cpu"] if has_tflite else ["cpu", "android-arm64"]
    return [root / DEFAULT_BUNDLES[t] for t in order if (root / DEFAULT_BUNDLES[t] / MANIFEST).is_file()]


def default_bundle_path(bundles_dir: str | os.PathLike | None = None, backend: str = "auto") -> Path:
    """The embedded bundle that best fits the installed runtimes, or the runtime asked for: the first of
    :func:`default_bundle_paths`."""
    found = default_bundle_paths(bundles_dir, backend)
    if not found:
        root = Path(bundles_dir) if bundles_dir is not None else BUNDLES_DIR
        raise BundleError(f"no embedded default bundle in {root} (looked for {sorted(DEFAULT_BUNDLES.values())}): "
                          "this fiqa-sdk build ships none yet. Build one with `fiqa-compile --target cpu --out "
                          "<folder>` and pass Scorer(bundle='<folder>')")
    return found[0]
