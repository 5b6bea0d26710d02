"""The capture loop's glue: frame -> detect -> track -> align -> score -> measures -> gate -> capture files.

Each stage lives in its own module (``scorer``, ``tracking``, ``gate``, ``capture_io``); this one only wires
them in order, keeps per-stage timings and counts, and makes sure a capture that fails to write is reported
rather than ending the stream. Frames that are not images raise :class:`fiqa_sdk.FrameError`: the caller (a
camera loop) decides whether to skip them.
"""
from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import cv2
import numpy as np

from fiqa_sdk.align import alignment_matrix, transform_points
from fiqa_sdk.capture_io import CaptureFiles, CaptureWriter, DecisionLog
from fiqa_sdk.detection import Detection
from fiqa_sdk.frames import to_bgr
from fiqa_sdk.gate import Capture, CaptureGate, FaceObservation, GateConfig, GateDecision, GateStep
from fiqa_sdk.preprocess import SPEC
from fiqa_sdk.scorer import FaceResult, Scorer
from fiqa_sdk.tracking import IouTracker

log = logging.getLogger(__name__)

# How the reasons a face is kept from the gate begin (FrameReport.skipped): callers tell them apart by these.
SKIP_NON_FINITE = "non-finite score"
SKIP_NO_POSE = "pose unavailable from its landmarks"


class SkippedFace(NamedTuple):
    """A face of this frame that was not given to the gate: its track, why, and the face (box, scores,
    measures) so a caller can log it."""

    track_id: int
    reason: str
    face: FaceResult

    @property
    def box(self) -> list[float]:
        return [float(v) for v in self.face.detection.box]


@dataclass
class FrameReport:
    """What one :meth:`CapturePipeline.process` call saw and settled.

    ``faces[i]`` has track id ``track_ids[i]``. ``decisions`` are the gate's final verdicts settled in this
    step, which may concern earlier frames (a window's winner is decided when its window closes); a face of this
    frame without a decision here is a window candidate (see :meth:`pending`). ``skipped``: ``(track_id, reason)``
    of the faces not given to the gate (no decision is ever logged for them; :meth:`skipped_faces` adds each
    one's box, scores and measures). ``written``: each capture stored by the writer, with its files.
    ``errors``: captures or log lines that could not be written.
    """

    frame_index: int | None
    timestamp: float
    faces: list[FaceResult] = field(default_factory=list)
    track_ids: list[int] = field(default_factory=list)
    decisions: list[GateDecision] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)
    written: list[tuple[Capture, CaptureFiles]] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    ended_tracks: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    def decision_for(self, track_id: int) -> GateDecision | None:
        """This frame's settled decision for a track's face, if the gate settled it in this step."""
        for d in self.decisions:
            if d.track_id == track_id and d.frame_index == self.frame_index:
                return d
        return None

    def pending(self) -> list[int]:
        """Track ids whose face in this frame is still a window candidate (no final decision yet)."""
        skipped = {tid for tid, _ in self.skipped}
        return [t for t in self.track_ids if t not in skipped and self.decision_for(t) is None]

    def skipped_faces(self) -> list[SkippedFace]:
        """The skipped faces with their detections: the gate logs nothing for them, so this is how a caller
        can. (``skipped`` stays ``(track_id, reason)`` pairs so ``dict(report.skipped)`` keeps working.)"""
        faces = dict(zip(self.track_ids, self.faces))
        return [SkippedFace(tid, reason, faces[tid]) for tid, reason in self.skipped]


def face_crop(frame_bgr: np.ndarray, detection: Detection, margin: float = 0.25) -> np.ndarray | None:
    """The detection box grown by ``margin`` of its size on every side, clipped to the frame, copied (frame
    buffers are reused by camera sources). ``None`` when the box lies outside the frame."""
    h, w = frame_bgr.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in detection.box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    a, b = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    c, d = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    if c <= a or d <= b:
        return None
    return frame_bgr[b:d, a:c].copy()


_CROP_GRID = np.stack(np.meshgrid(np.arange(SPEC.size), np.arange(SPEC.size)), -1).reshape(-1, 2).astype(np.float32)


def outside_fraction(frame_shape: tuple[int, ...], landmarks: np.ndarray) -> float:
    """Fraction (0-1) of the aligned crop's pixels that lie outside the frame: the repeated edge pixels
    :func:`fiqa_sdk.align_face` fills in for a face cut by the frame edge (the gate's ``at_edge`` check).

    Measured on the aligned crop rather than on the detection box because the crop is what was scored and what
    the padding corrupts, and because box margins are unreliable at the edge: detectors differ in how they place
    or clip boxes there (RetinaFace put the box of a portrait with 40% of its crop off-frame 3 px inside it), and
    the crop reaches beyond the box by a face-dependent amount.
    """
    h, w = frame_shape[:2]
    to_frame = cv2.invertAffineTransform(alignment_matrix(landmarks, SPEC.size))
    pts = transform_points(_CROP_GRID, to_frame)
    inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5)
    return float(1.0 - inside.mean())


def _non_finite_scores(face: FaceResult) -> str | None:
    """Why a face's 0-100 scores cannot be gated (a NaN/inf from an overflowing or broken model), or None."""
    bad = {k: v for k, v in face.scores.items() if not math.isfinite(float(v))}
    if not bad:
        return None
    return f"{SKIP_NON_FINITE} " + ", ".join(f"{k}={v}" for k, v in bad.items()) + " (model output overflowed?)"


def _gate_scores(face: FaceResult, better: dict[str, float]) -> dict[str, float]:
    """The 0-100 scores plus the raw z-scores, which rank frames tied at the clipped 100 (absent when the
    scorer did not provide them). ``better``: +1 or -1 per score, so a higher z is a better face also for a
    lower-is-better teacher (whose 0-100 scale is flipped)."""
    scores = dict(face.scores)
    for name, z in zip(("utility", "perceptual"), face.z):
        if math.isfinite(float(z)):
            scores[f"{name}_z"] = better.get(name, 1.0) * float(z)
    return scores


def z_signs(scorer: Scorer) -> dict[str, float]:
    """+1 for each higher-is-better score of the scorer's bundle, -1 otherwise (see :func:`face_observation`)."""
    return {s.name: 1.0 if s.higher_is_better else -1.0 for s in scorer.bundle.scores}


def face_observation(face: FaceResult, frame_bgr: np.ndarray, track_id: int, frame_index: int, timestamp: float,
                     z_sign: dict[str, float], crop_margin: float = 0.25) -> FaceObservation:
    """What the gate judges of one scored face: its 0-100 scores (+ oriented z-scores), its measures plus how much
    of its aligned crop lies outside the frame, and a crop of the frame around it for the capture file."""
    measures = {**face.measures, "outside_fraction": outside_fraction(frame_bgr.shape, face.detection.landmarks)}
    return FaceObservation(track_id=int(track_id), frame_index=int(frame_index), timestamp=float(timestamp),
                           detection=face.detection, aligned_face=face.aligned, scores=_gate_scores(face, z_sign),
                           measures=measures, crop=face_crop(frame_bgr, face.detection, crop_margin))


def skip_reason(face: FaceResult, needs_pose: bool) -> str | None:
    """Why a face cannot be given to the gate (it would raise there), or None: non-finite scores, or no pose
    estimate when a pose check is on."""
    bad_scores = _non_finite_scores(face)
    if bad_scores is not None:
        return bad_scores
    if face.pose_error is not None and needs_pose:
        return f"{SKIP_NO_POSE}: {face.pose_error}"
    return None


class CapturePipeline:
    """Run the capture loop on frames you feed it.

    Args:
        scorer: detects, aligns, scores and measures faces.
        gate: a :class:`CaptureGate`, a :class:`GateConfig`, or ``None`` for the thresholds in the scorer's bundle
            manifest (:meth:`fiqa_sdk.bundle.Bundle.gate_config`).
        tracker: gives faces stable ids across frames; ``None``: a default :class:`IouTracker`.
        writer: stores accepted captures; ``None``: captures are only returned.
        logger: appends every gate decision to a JSON-lines file; ``None``: no log.
        crop_margin: the stored capture is the detection box grown by this fraction per side.
    """

    def __init__(self, scorer: Scorer, gate: CaptureGate | GateConfig | None = None,
                 tracker: IouTracker | None = None, writer: CaptureWriter | None = None,
                 logger: DecisionLog | None = None, crop_margin: float = 0.25):
        if crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
        self.scorer = scorer
        self._z_sign = z_signs(scorer)
        if gate is None:
            gate = CaptureGate(scorer.bundle.gate_config())
        elif isinstance(gate, GateConfig):
            gate = CaptureGate(gate)
        self.gate = gate
        self.tracker = tracker if tracker is not None else IouTracker()
        self.writer = writer
        self.logger = logger
        self.crop_margin = float(crop_margin)
        self.counts: Counter = Counter()
        self.reasons: Counter = Counter()
        self._last_ts = 0.0

    def _skip_reason(self, face: FaceResult) -> str | None:
        """Why a face cannot be given to the gate (it would raise there and lose the whole frame), or None."""
        return skip_reason(face, self.gate.config.checks_pose())

    def process(self, frame: np.ndarray, frame_index: int, timestamp: float) -> FrameReport:
        """Score one frame's faces, update tracks and the gate, write what the gate accepted.

        A timestamp the gate would refuse (not finite, or before the last frame's) raises before anything changes:
        the tracker, which ends every track when time goes back, must not retire tracks whose end the gate then
        never hears of."""
        self.gate.check_timestamp(timestamp)
        t0 = time.perf_counter()
        bgr = to_bgr(frame)
        faces = self.scorer.score_frame(bgr)
        t1 = time.perf_counter()
        step = self.tracker.update([f.detection for f in faces], timestamp)
        report = FrameReport(frame_index=int(frame_index), timestamp=float(timestamp), faces=faces,
                             track_ids=list(step.ids), ended_tracks=list(step.ended))
        observations = []
        for face, tid in zip(faces, step.ids):
            why = self._skip_reason(face)
            if why is not None:
                log.info("frame %d: face of track %d not gated: %s", frame_index, tid, why)
                report.skipped.append((tid, why))
                continue
            observations.append(face_observation(face, bgr, tid, frame_index, timestamp, self._z_sign,
                                                 self.crop_margin))
        gate_step = self.gate.update(observations, float(timestamp), ended=step.ended)
        t2 = time.perf_counter()
        self._settle(gate_step, report)
        t3 = time.perf_counter()
        report.timings_ms = {"score_frame": 1e3 * (t1 - t0), "track_gate": 1e3 * (t2 - t1),
                             "write": 1e3 * (t3 - t2), "total": 1e3 * (t3 - t0)}
        self.counts["frames"] += 1
        self.counts["faces"] += len(faces)
        self.counts["skipped"] += len(report.skipped)
        self._last_ts = float(timestamp)
        return report

    def flush(self) -> FrameReport:
        """End of stream: end every track, close every open window, write the last captures."""
        ended = self.tracker.flush()
        report = FrameReport(frame_index=None, timestamp=self._last_ts, ended_tracks=ended)
        self._settle(self.gate.flush(), report)
        return report

    def _settle(self, step: GateStep, report: FrameReport) -> None:
        """Count, store and log what one gate update settled: captures first, so an accepted decision's log line
        can name its image file (or why it could not be written) and never promises a file that does not exist."""
        report.decisions.extend(step.decisions)
        report.captures.extend(step.captures)
        for d in step.decisions:
            self.counts["accepted" if d.accepted else "rejected"] += 1
            self.reasons.update(r.value for r in d.reasons)
        stored: dict[tuple[int, int], dict[str, str]] = {}
        for capture in step.captures if self.writer is not None else ():
            key = (capture.decision.track_id, capture.decision.frame_index)
            try:
                files = self.writer.write(capture)
                report.written.append((capture, files))
                stored[key] = {"capture": str(files.image)}
            except (OSError, ValueError) as e:
                self.counts["write_errors"] += 1
                report.errors.append(f"capture of track {key[0]} frame {key[1]}: {e}")
                log.error("could not write capture of track %d frame %d: %s", key[0], key[1], e)
                stored[key] = {"capture_error": str(e)}
        if self.logger is not None:
            try:
                for d in step.decisions:
                    self.logger.write(d, **stored.get((d.track_id, d.frame_index), {}) if d.accepted else {})
            except (OSError, ValueError) as e:
                self.counts["log_errors"] += 1
                report.errors.append(f"decision log: {e}")
                log.error("could not log gate decisions: %s", e)
