"""The capture loop's glue: frame -> detect -> track -> align -> score -> measures -> gate -> capture files.

Each stage lives in its own module (``scorer``, ``tracking``, ``gate``, ``capture_io``); this one only wires
them in order, keeps per-stage timings and counts, and makes sure a capture that fails to write is reported
rather than ending the stream. Frames that are not images raise :class:`fiqa_sdk.FrameError`: the caller (a
camera loop) decides whether to skip them.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from fiqa_sdk.capture_io import CaptureFiles, CaptureWriter, DecisionLog
from fiqa_sdk.detection import Detection
from fiqa_sdk.frames import to_bgr
from fiqa_sdk.gate import Capture, CaptureGate, FaceObservation, GateConfig, GateDecision, GateStep
from fiqa_sdk.scorer import FaceResult, Scorer
from fiqa_sdk.tracking import IouTracker

log = logging.getLogger(__name__)


@dataclass
class FrameReport:
    """What one :meth:`CapturePipeline.process` call saw and settled.

    ``faces[i]`` has track id ``track_ids[i]``. ``decisions`` are the gate's final verdicts settled in this
    step, which may concern earlier frames (a window's winner is decided when its window closes); a face of this
    frame without a decision here is a window candidate (see :meth:`pending`). ``skipped``: faces not given to
    the gate, with why. ``written``: each capture stored by the writer, with its files. ``errors``: captures or
    log lines that could not be written.
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

    def _needs_pose(self) -> bool:
        c = self.gate.config
        return any(v is not None for v in (c.max_yaw_deg, c.max_pitch_deg, c.max_roll_deg))

    def process(self, frame: np.ndarray, frame_index: int, timestamp: float) -> FrameReport:
        """Score one frame's faces, update tracks and the gate, write what the gate accepted."""
        t0 = time.perf_counter()
        bgr = to_bgr(frame)
        faces = self.scorer.score_frame(bgr)
        t1 = time.perf_counter()
        step = self.tracker.update([f.detection for f in faces])
        report = FrameReport(frame_index=int(frame_index), timestamp=float(timestamp), faces=faces,
                             track_ids=list(step.ids), ended_tracks=list(step.ended))
        observations = []
        for face, tid in zip(faces, step.ids):
            if face.pose_error is not None and self._needs_pose():
                report.skipped.append((tid, f"pose unavailable from its landmarks: {face.pose_error}"))
                continue
            observations.append(FaceObservation(
                track_id=tid, frame_index=int(frame_index), timestamp=float(timestamp), detection=face.detection,
                aligned_face=face.aligned, scores=face.scores, measures=face.measures,
                crop=face_crop(bgr, face.detection, self.crop_margin)))
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
        report.decisions.extend(step.decisions)
        report.captures.extend(step.captures)
        for d in step.decisions:
            self.counts["accepted" if d.accepted else "rejected"] += 1
            self.reasons.update(r.value for r in d.reasons)
        if self.logger is not None:
            try:
                self.logger.write_step(step)
            except (OSError, ValueError) as e:
                report.errors.append(f"decision log: {e}")
                log.error("could not log gate decisions: %s", e)
        if self.writer is None:
            return
        for capture in step.captures:
            try:
                report.written.append((capture, self.writer.write(capture)))
            except (OSError, ValueError) as e:
                self.counts["write_errors"] += 1
                report.errors.append(f"capture of track {capture.decision.track_id} frame "
                                     f"{capture.decision.frame_index}: {e}")
                log.error("could not write capture of track %d frame %d: %s", capture.decision.track_id,
                          capture.decision.frame_index, e)
