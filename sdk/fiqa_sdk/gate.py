"""Capture gating: decide, per tracked face, which frame to keep and say why every other frame was dropped.

The gate is pure logic over :class:`FaceObservation` objects that already carry the model scores (``utility``,
``perceptual``, both 0-100) and the cheap image measures from :mod:`fiqa_sdk.measures`. It never looks at pixels,
so it is deterministic, fast and testable without a model.

Per track it applies, in this order of priority (the order of :class:`Reason`):

* ``too_small``      ``measures["iod_px"] < min_iod_px``: the 112-px aligned crop would be upsampled.
* ``at_edge``        ``measures["outside_fraction"] > max_outside_fraction``: the face is cut by the frame edge, so
                     part of the aligned crop is padding (edge pixels repeated): its scores are not to be trusted,
                     and the stored picture misses part of the face.
* ``turned_away``    ``|yaw| > max_yaw_deg`` or ``|pitch| > max_pitch_deg`` or ``|roll| > max_roll_deg``.
* ``blurred``        ``sharpness < min_sharpness`` (hard limit), or the perceptual score is failing and
                     ``sharpness < explain_blur_below``.
* ``too_dark``       ``brightness < min_brightness``, or perceptual failing and ``brightness < explain_dark_below``.
* ``too_bright``     ``brightness > max_brightness``, or perceptual failing and ``brightness > explain_bright_above``.
* ``low_utility``    the utility score is outside its hysteresis band (see below).
* ``low_perceptual`` the perceptual score is outside its band AND no measure explains it (none of blurred /
                     too_dark / too_bright applies): a failing perceptual score is reported by its cause when the
                     measures show one, because "too dark" tells the operator what to fix and "low_perceptual" does
                     not. The hard limits reject on their own; the ``explain_*`` limits only name a cause.
* ``not_best_in_window`` the frame passed every check but a better frame of the same track won its window.
* ``cooldown``       the track already had ``max_accepts`` captures within the last ``cooldown_s`` seconds.

Hysteresis: a score enters the good band at ``*_accept`` and leaves it only below ``*_release`` (<= accept), per
track, so a score hovering at the threshold does not flicker between accepted and rejected.

Best-of-N: the first frame that passes every check opens a window for its track; the window closes after
``window_s`` seconds or ``window_frames`` frames of that track, or when the track ends, and its best frame is
accepted: highest utility (then its raw ``utility_z``: the 0-100 scores clip at 100, so several good frames tie
there and the z-score still tells them apart), then perceptual (then ``perceptual_z``), then the larger ``iod_px``.
Every observation receives exactly one final :class:`GateDecision`: rejected frames and beaten candidates at once,
the window's winner when the window closes.
"""
from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from fiqa_sdk.detection import Detection


class Reason(str, Enum):
    """Why a frame was not captured. Definition order is reporting priority (most fundamental first)."""

    TOO_SMALL = "too_small"
    AT_EDGE = "at_edge"
    TURNED_AWAY = "turned_away"
    BLURRED = "blurred"
    TOO_DARK = "too_dark"
    TOO_BRIGHT = "too_bright"
    LOW_UTILITY = "low_utility"
    LOW_PERCEPTUAL = "low_perceptual"
    NOT_BEST_IN_WINDOW = "not_best_in_window"
    COOLDOWN = "cooldown"


_PRIORITY = {r: i for i, r in enumerate(Reason)}


@dataclass
class FaceObservation:
    """One scored face of one frame, as the Scorer hands it to the gate.

    ``scores``: ``utility`` and ``perceptual`` on 0-100, optionally the model's raw ``utility_z`` and
    ``perceptual_z`` (only used to rank frames that tie on the clipped 0-100 scores). ``measures``: ``iod_px``,
    ``yaw``/``pitch``/``roll`` (degree-like proxies), ``brightness`` (0-255) and ``sharpness``, i.e.
    ``{**measures.image_measures(aligned_face), **measures.landmark_measures(detection.landmarks)}``, and
    ``outside_fraction`` (:func:`fiqa_sdk.pipeline.outside_fraction`; the edge check is skipped for observations
    without it, so observations built by the recipe above keep working); extra keys are carried into logs
    untouched. Only the keys an enabled check needs must be present. ``crop``: optional BGR crop of the face from
    the original frame, kept for the capture file (the aligned face is what was scored).
    """

    track_id: int
    frame_index: int
    timestamp: float
    detection: Detection | None
    aligned_face: np.ndarray | None
    scores: dict[str, float]
    measures: dict[str, float]
    crop: np.ndarray | None = None


@dataclass(frozen=True)
class GateDecision:
    """The final verdict on one observation. ``reasons`` is empty exactly when ``accepted``."""

    track_id: int
    frame_index: int
    timestamp: float
    accepted: bool
    reasons: tuple[Reason, ...]
    scores: dict[str, float]
    measures: dict[str, float]
    detection: Detection | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (used by the decision log and capture sidecars)."""
        d: dict[str, Any] = {
            "track_id": int(self.track_id), "frame_index": int(self.frame_index),
            "timestamp": round(float(self.timestamp), 6), "accepted": bool(self.accepted),
            "reasons": [r.value for r in self.reasons],
            "scores": {k: round(float(v), 4) for k, v in self.scores.items()},
            "measures": {k: round(float(v), 4) for k, v in self.measures.items()},
        }
        if self.detection is not None:
            d["detection"] = self.detection.to_dict()
        return d


@dataclass(frozen=True)
class Capture:
    """An accepted face: the winning observation, its decision, and the window it won."""

    observation: FaceObservation
    decision: GateDecision
    window_start: float
    candidates: int

    @property
    def image(self) -> np.ndarray:
        """The picture to store: the frame crop when the Scorer kept one, else the aligned face."""
        img = self.observation.crop if self.observation.crop is not None else self.observation.aligned_face
        if img is None:
            raise ValueError(f"capture of track {self.observation.track_id} frame {self.observation.frame_index} "
                             "has neither crop nor aligned_face; the Scorer must keep one of them")
        return img


@dataclass(frozen=True)
class GateStep:
    """What one :meth:`CaptureGate.update` call settled: decisions (possibly about earlier frames) and captures."""

    decisions: list[GateDecision] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)


@dataclass(frozen=True)
class GateConfig:
    """Gate thresholds. Scores are 0-100; any limit set to ``None`` disables that check (``*_accept=None``
    disables the score check, whatever its release; ``*_release=None`` means no hysteresis).

    Defaults: utility 60/50 and perceptual 50/40 (accept/release) are mid-scale starting points until a bundle
    ships calibrated values in its manifest. ``min_iod_px`` 28: the ArcFace template puts the eyes ~35 px apart in
    112 px, so smaller faces are upsampled more than 1.25x. Pose (the degree-like landmark proxies of
    :func:`fiqa_sdk.measures.head_pose`): yaw 40, pitch 35, which clear the proxies' spread on frontal LFW faces
    (5th-95th percentile about -28..+23 yaw, -28..+18 pitch) so only clearly turned heads are rejected; roll 40
    (alignment removes roll, so it is only a guard against bad landmarks).
    Brightness (:func:`fiqa_sdk.measures.mean_brightness` of the aligned face, 0-255): hard limits 40 / 220,
    explanation limits 80 / 185 (the 5th / 95th percentiles of LFW faces lie near 80 / 155). Sharpness
    (:func:`fiqa_sdk.measures.laplacian_variance` of the 112x112 aligned face): hard limit 15 (what a Gaussian
    blur of sigma 2 px leaves of a typical LFW face), explanation limit 40 (below the ~57-65 5th percentile of
    sharp LFW faces). ``max_outside_fraction`` 0.05 (of the aligned crop lying outside the frame): a photo
    pushed past the frame edge shows whole padded columns in its crop from about 0.1, while a face merely near
    the edge reaches ~0.02 with a padded corner. Window 1 s / 30 frames; 1 capture per track per 10 s.
    """

    utility_accept: float | None = 60.0
    utility_release: float | None = 50.0
    perceptual_accept: float | None = 50.0
    perceptual_release: float | None = 40.0
    min_iod_px: float | None = 28.0
    max_outside_fraction: float | None = 0.05
    max_yaw_deg: float | None = 40.0
    max_pitch_deg: float | None = 35.0
    max_roll_deg: float | None = 40.0
    min_brightness: float | None = 40.0
    max_brightness: float | None = 220.0
    explain_dark_below: float | None = 80.0
    explain_bright_above: float | None = 185.0
    min_sharpness: float | None = 15.0
    explain_blur_below: float | None = 40.0
    window_s: float = 1.0
    window_frames: int = 30
    max_accepts: int = 1
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in _INTEGER_KEYS:
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise ValueError(f"GateConfig.{f.name} must be an integer >= 1, got {v!r}")
                continue
            nullable = f.name not in ("window_s", "cooldown_s")
            if v is None and nullable:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"GateConfig.{f.name} must be a finite number{' or None' if nullable else ''}, "
                                 f"got {v!r}")
            if v < 0:
                raise ValueError(f"GateConfig.{f.name} must be >= 0, got {v}")
        for score in ("utility", "perceptual"):
            acc, rel = getattr(self, f"{score}_accept"), getattr(self, f"{score}_release")
            if acc is not None and acc > 100:
                raise ValueError(f"GateConfig.{score}_accept={acc} is above the 0-100 score scale")
            if acc is not None and rel is not None and rel > acc:
                raise ValueError(f"GateConfig.{score}_release={rel} must be <= {score}_accept={acc} "
                                 "(leave the good band below where you enter it)")
        if self.max_outside_fraction is not None and self.max_outside_fraction > 1:
            raise ValueError(f"GateConfig.max_outside_fraction={self.max_outside_fraction} is a fraction of the "
                             "aligned crop and must be <= 1")
        if self.min_brightness is not None and self.max_brightness is not None \
                and self.min_brightness >= self.max_brightness:
            raise ValueError(f"GateConfig.min_brightness={self.min_brightness} must be below "
                             f"max_brightness={self.max_brightness}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def checks_pose(self) -> bool:
        """Whether any head-pose limit is on (then a face needs a pose estimate to be judged)."""
        return any(v is not None for v in (self.max_yaw_deg, self.max_pitch_deg, self.max_roll_deg))

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], **overrides: Any) -> GateConfig:
        """Read a bundle manifest's ``thresholds`` section; keyword overrides win over the manifest.

        Keys not in the section keep their defaults; unknown keys raise so a typo never silently disables a check.
        An override of a score's ``*_accept`` alone moves its ``*_release`` with it, keeping the bundle's gap
        (never below 0): lowering ``utility_accept`` below the bundle's release must not need a second override.
        """
        if not isinstance(manifest, Mapping) or "thresholds" not in manifest:
            raise ValueError("manifest has no 'thresholds' section; pass GateConfig(...) explicitly for a bundle "
                             "without calibrated thresholds")
        section = manifest["thresholds"]
        if not isinstance(section, Mapping):
            raise ValueError(f"manifest 'thresholds' must be a mapping, got {type(section).__name__}")
        known = set(cls.keys())
        for source, keys in (("manifest thresholds", section), ("overrides", overrides)):
            unknown = sorted(set(keys) - known)
            if unknown:
                raise ValueError(f"unknown {source} key(s) {unknown}; known keys: {sorted(known)}")
        merged = {**dict(section), **overrides}
        for score in ("utility", "perceptual"):
            acc, rel = f"{score}_accept", f"{score}_release"
            old_acc, old_rel = section.get(acc), section.get(rel)
            if overrides.get(acc) is not None and rel not in overrides and \
                    isinstance(old_acc, (int, float)) and isinstance(old_rel, (int, float)):
                merged[rel] = max(0.0, float(overrides[acc]) - (float(old_acc) - float(old_rel)))
        return cls(**merged)


_INTEGER_KEYS = {"window_frames": "frames", "max_accepts": "captures"}  # the GateConfig keys that count things


def parse_overrides(items: Sequence[str]) -> dict[str, float | int | None]:
    """``["utility_accept=70", "max_yaw_deg=off"]`` -> GateConfig keyword overrides (``off``/``none``: the check is
    disabled). What the command lines' ``--gate KEY=VALUE`` accepts; a typo'd key or a non-number raises, naming the
    known keys, rather than silently leaving a check as it was."""
    known = GateConfig.keys()
    out: dict[str, float | int | None] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key or not text:
            raise ValueError(f"gate override {item!r} is not KEY=VALUE (e.g. utility_accept=70, max_yaw_deg=off)")
        if key not in known:
            raise ValueError(f"unknown gate key {key!r}; known keys: {', '.join(known)}")
        if text.lower() in ("off", "none"):
            out[key] = None
            continue
        if key in _INTEGER_KEYS:
            try:
                out[key] = int(text)
            except ValueError:
                raise ValueError(f"gate override {item!r}: {key} counts {_INTEGER_KEYS[key]}, so it must be a whole "
                                 f"number such as {key}=2, not {text!r}") from None
            continue
        try:
            out[key] = float(text)
        except ValueError:
            raise ValueError(f"gate override {item!r}: {text!r} is not a number (or 'off')") from None
    return out


@dataclass
class _Window:
    opened_at: float
    best: FaceObservation
    frames: int = 0
    candidates: int = 0


@dataclass
class _TrackState:
    in_band: dict[str, bool] = field(default_factory=dict)
    window: _Window | None = None
    accepts: deque = field(default_factory=deque)
    last_seen: float = -math.inf


def _finite_or_lowest(values: Mapping[str, float], key: str) -> float:
    """A ranking key: absent or non-finite values rank last (NaN would make every comparison False)."""
    v = float(values.get(key, -math.inf))
    return v if math.isfinite(v) else -math.inf


def _rank(obs: FaceObservation) -> tuple[float, ...]:
    """Best-of-N order: utility first, then perceptual, then the larger face (more pixels in the stored crop).
    Each 0-100 score clips at 100 and is a monotone map of its raw z-score (the pipeline orients z so that higher
    is better), so each is followed by its z, which tells frames tied at 100 apart (and changes nothing below the
    clip)."""
    return (*(_finite_or_lowest(obs.scores, k) for k in ("utility", "utility_z", "perceptual", "perceptual_z")),
            _finite_or_lowest(obs.measures, "iod_px"))


class CaptureGate:
    """Stateful per-track gate. Feed it every frame (also frames without faces, so windows close on time)."""

    def __init__(self, config: GateConfig | None = None):
        self.config = config or GateConfig()
        self._tracks: dict[int, _TrackState] = {}
        self._now = -math.inf

    # -- public ---------------------------------------------------------------------------------------------------
    def check_timestamp(self, timestamp: float) -> None:
        """Raise, changing nothing, unless :meth:`update` would take ``timestamp``: finite and not before the last
        frame's. A caller that changes other state per frame (the pipeline's tracker) asks first."""
        if isinstance(timestamp, bool) or not isinstance(timestamp, numbers.Real) or not math.isfinite(timestamp):
            raise ValueError(f"timestamp must be a finite number of seconds, got {timestamp!r}")
        if timestamp < self._now:
            raise ValueError(f"timestamp went backwards ({timestamp} < {self._now}); sources must give "
                             "non-decreasing timestamps")

    def update(self, observations: Sequence[FaceObservation], timestamp: float,
               ended: Iterable[int] = ()) -> GateStep:
        """Process one frame's observations at ``timestamp`` (seconds, non-decreasing).

        ``ended``: track ids the tracker retired this frame; their open windows close now.
        """
        self.check_timestamp(timestamp)
        ids = [o.track_id for o in observations]
        if len(ids) != len(set(ids)):
            raise ValueError(f"two observations share a track id in one frame: {ids}; each face needs its own track")
        # Judge every observation before any state changes (the clock included): a bad value raises with the gate
        # untouched, so a window due to close in this step is not settled and then lost with the step.
        judged = [(obs, *self._check(obs, self._tracks.get(obs.track_id))) for obs in observations]
        self._now = float(timestamp)
        step = GateStep()
        for tid, st in self._tracks.items():
            if st.window is not None and timestamp >= st.window.opened_at + self.config.window_s:
                self._close(tid, st, step)
        for obs, reasons, bands in judged:
            self._observe(obs, reasons, bands, step)
        for tid in ended:
            st = self._tracks.pop(tid, None)
            if st is not None and st.window is not None:
                self._close(tid, st, step)
        self._forget_idle()
        return step

    def assess(self, observation: FaceObservation) -> GateDecision:
        """The verdict on one face by itself: a still photo, with no track history, best-of-N window or cooldown.

        The quality checks are the ones :meth:`update` applies to every frame (size, edge, pose, exposure, blur,
        utility and perceptual at their accept thresholds); the gate's state is neither read nor changed.
        """
        reasons, _ = self._check(observation, None)
        return self._decision(observation, reasons)

    def flush(self) -> GateStep:
        """Close every open window (end of stream) and forget all tracks."""
        step = GateStep()
        for tid, st in self._tracks.items():
            if st.window is not None:
                self._close(tid, st, step)
        self._tracks.clear()
        return step

    @property
    def open_windows(self) -> dict[int, int]:
        """Track id -> frames seen in its open window (for overlays and debugging)."""
        return {tid: st.window.frames for tid, st in self._tracks.items() if st.window is not None}

    # -- internals --------------------------------------------------------------------------------------------------
    def _value(self, obs: FaceObservation, table: str, key: str, why: str) -> float:
        values = obs.scores if table == "scores" else obs.measures
        if key not in values:
            raise ValueError(f"observation of track {obs.track_id} frame {obs.frame_index} lacks {table}[{key!r}], "
                             f"needed by {why}; provide it or disable that check in GateConfig")
        v = float(values[key])
        if not math.isfinite(v):
            raise ValueError(f"{table}[{key!r}] of track {obs.track_id} frame {obs.frame_index} is {v}")
        return v

    def _in_band(self, obs: FaceObservation, st: _TrackState | None, score: str, bands: dict[str, bool]) -> bool:
        """Hysteresis test against the track's current band state; the new state goes into ``bands`` (applied
        by :meth:`_observe`), so judging a frame changes nothing."""
        accept = getattr(self.config, f"{score}_accept")
        if accept is None:
            return True
        release = getattr(self.config, f"{score}_release")
        release = accept if release is None else release
        v = self._value(obs, "scores", score, f"{score}_accept")
        was_in = st is not None and st.in_band.get(score, False)
        bands[score] = v >= (release if was_in else accept)
        return bands[score]

    def _at_edge(self, obs: FaceObservation) -> bool:
        limit = self.config.max_outside_fraction
        if limit is None or "outside_fraction" not in obs.measures:
            return False
        return self._value(obs, "measures", "outside_fraction", "max_outside_fraction") > limit

    def _check(self, obs: FaceObservation, st: _TrackState | None) -> tuple[list[Reason], dict[str, bool]]:
        """The quality reasons of one frame and its track's new band state. Pure: raises on a missing or
        non-finite value before :meth:`update` changes anything."""
        c = self.config
        reasons: list[Reason] = []
        bands: dict[str, bool] = {}
        if c.min_iod_px is not None and self._value(obs, "measures", "iod_px", "min_iod_px") < c.min_iod_px:
            reasons.append(Reason.TOO_SMALL)
        if self._at_edge(obs):
            reasons.append(Reason.AT_EDGE)
        for axis in ("yaw", "pitch", "roll"):
            limit = getattr(c, f"max_{axis}_deg")
            if limit is not None and abs(self._value(obs, "measures", axis, f"max_{axis}_deg")) > limit:
                reasons.append(Reason.TURNED_AWAY)
                break
        utility_ok = self._in_band(obs, st, "utility", bands)
        perceptual_ok = self._in_band(obs, st, "perceptual", bands)
        causes: list[Reason] = []
        if c.min_sharpness is not None or (not perceptual_ok and c.explain_blur_below is not None):
            sharp = self._value(obs, "measures", "sharpness", "the blur checks")
            if (c.min_sharpness is not None and sharp < c.min_sharpness) or \
                    (not perceptual_ok and c.explain_blur_below is not None and sharp < c.explain_blur_below):
                causes.append(Reason.BLURRED)
        needs_brightness = any(v is not None for v in (c.min_brightness, c.max_brightness)) or (
            not perceptual_ok and any(v is not None for v in (c.explain_dark_below, c.explain_bright_above)))
        if needs_brightness:
            b = self._value(obs, "measures", "brightness", "the exposure checks")
            if (c.min_brightness is not None and b < c.min_brightness) or \
                    (not perceptual_ok and c.explain_dark_below is not None and b < c.explain_dark_below):
                causes.append(Reason.TOO_DARK)
            if (c.max_brightness is not None and b > c.max_brightness) or \
                    (not perceptual_ok and c.explain_bright_above is not None and b > c.explain_bright_above):
                causes.append(Reason.TOO_BRIGHT)
        reasons += causes
        if not utility_ok:
            reasons.append(Reason.LOW_UTILITY)
        if not perceptual_ok and not causes:
            reasons.append(Reason.LOW_PERCEPTUAL)
        return reasons, bands

    def _in_cooldown(self, st: _TrackState, t: float) -> bool:
        while st.accepts and st.accepts[0] <= t - self.config.cooldown_s:
            st.accepts.popleft()
        return len(st.accepts) >= self.config.max_accepts

    def _decision(self, obs: FaceObservation, reasons: Iterable[Reason]) -> GateDecision:
        ordered = tuple(sorted(set(reasons), key=_PRIORITY.__getitem__))
        return GateDecision(obs.track_id, obs.frame_index, obs.timestamp, not ordered, ordered,
                            dict(obs.scores), dict(obs.measures), obs.detection)

    def _observe(self, obs: FaceObservation, reasons: list[Reason], bands: dict[str, bool], step: GateStep) -> None:
        st = self._tracks.setdefault(obs.track_id, _TrackState())
        st.last_seen = float(obs.timestamp)
        st.in_band.update(bands)
        if st.window is None and self._in_cooldown(st, obs.timestamp):
            reasons.append(Reason.COOLDOWN)
        if reasons:
            step.decisions.append(self._decision(obs, reasons))
        elif st.window is None:
            st.window = _Window(opened_at=float(obs.timestamp), best=obs, candidates=1)
        else:
            st.window.candidates += 1
            loser = obs
            if _rank(obs) > _rank(st.window.best):
                loser, st.window.best = st.window.best, obs
            step.decisions.append(self._decision(loser, [Reason.NOT_BEST_IN_WINDOW]))
        if st.window is not None:
            st.window.frames += 1
            if st.window.frames >= self.config.window_frames:
                self._close(obs.track_id, st, step)

    def _close(self, tid: int, st: _TrackState, step: GateStep) -> None:
        window, st.window = st.window, None
        decision = self._decision(window.best, [])
        st.accepts.append(float(window.best.timestamp))
        step.decisions.append(decision)
        step.captures.append(Capture(window.best, decision, window.opened_at, window.candidates))

    def _forget_idle(self) -> None:
        horizon = self.config.cooldown_s + self.config.window_s
        idle = [tid for tid, st in self._tracks.items()
                if st.window is None and self._now - st.last_seen > horizon]
        for tid in idle:
            del self._tracks[tid]
