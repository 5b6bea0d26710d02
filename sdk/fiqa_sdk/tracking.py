"""Stable track ids for faces across frames: IoU against a constant-velocity prediction, centre distance as fallback.

The capture gate works per person (best-of-N, cooldown), so it needs to know which detection in frame t is the
same face as in frame t-1. Faces in a doorway or at a kiosk move slowly and rarely overlap for long, so a greedy
matcher over predicted boxes is enough and keeps the device free of scipy/Kalman dependencies. Ids are never
reused: a face that leaves for longer than ``max_missed`` frames (or ``max_missed_seconds``, which does not depend on
the frame rate) comes back as a new track.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from fiqa_sdk.detection import Detection


@dataclass
class Track:
    """One followed face. ``box`` is the last matched box; ``velocity`` its smoothed per-frame motion."""

    track_id: int
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float64))
    hits: int = 1
    missed: int = 0
    last_seen: float | None = None  # timestamp of the last matched frame (when the caller passes timestamps)

    def predicted(self) -> np.ndarray:
        """Where the box should be this frame (one step of constant velocity per missed frame)."""
        return self.box + self.velocity * (self.missed + 1)


@dataclass(frozen=True)
class TrackerStep:
    """``ids[i]`` is the track id of the i-th detection passed to :meth:`IouTracker.update`;
    ``ended`` lists tracks that expired in this step (hand these to the gate so their windows close)."""

    ids: list[int]
    ended: list[int]


def _as_boxes(detections: Sequence[Detection] | np.ndarray) -> np.ndarray:
    if isinstance(detections, np.ndarray):
        boxes = detections.astype(np.float64)
    else:
        boxes = np.array([np.asarray(d.box if isinstance(d, Detection) else d, np.float64) for d in detections],
                         np.float64)
    boxes = boxes.reshape(-1, 4) if boxes.size else np.zeros((0, 4), np.float64)
    if not np.all(np.isfinite(boxes)):
        raise ValueError("detection boxes contain NaN or inf")
    if np.any(boxes[:, 2] <= boxes[:, 0]) or np.any(boxes[:, 3] <= boxes[:, 1]):
        raise ValueError("boxes must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1")
    return boxes


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of two (N, 4) and (M, 4) box arrays."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


class IouTracker:
    """Greedy IoU / centre-distance tracker.

    Each frame, every live track predicts its box; pairs are scored by IoU with the prediction, or, when they
    do not overlap enough (fast motion, low frame rate), by centre distance relative to the face size, which only
    ever ranks below any IoU match. Pairs are taken best-first, one detection per track.

    Args:
        iou_threshold: least IoU with the predicted box to match on overlap.
        max_centre_distance: largest centre distance, in units of the track's box diagonal, to match without overlap.
        max_missed: frames a track may go unmatched before it ends (a face that reappears later gets a new id).
        velocity_smoothing: weight of the newest displacement in the velocity estimate (0 disables prediction).
        max_missed_seconds: when set, a track ends after this long unmatched instead of after ``max_missed``
            frames, so a person who looks away for a moment is the same track at 5 FPS and at 60 FPS (then
            :meth:`update` needs each frame's timestamp). One missed frame never ends a track (a detector's flake
            at a low frame rate); time going backwards (a new clip fed to the same tracker) ends every track.
    """

    def __init__(self, iou_threshold: float = 0.3, max_centre_distance: float = 0.5, max_missed: int = 10,
                 velocity_smoothing: float = 0.5, max_missed_seconds: float | None = None):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if max_centre_distance < 0:
            raise ValueError(f"max_centre_distance must be >= 0, got {max_centre_distance}")
        if max_missed < 0:
            raise ValueError(f"max_missed must be >= 0 frames, got {max_missed}")
        if not 0.0 <= velocity_smoothing <= 1.0:
            raise ValueError(f"velocity_smoothing must be in [0, 1], got {velocity_smoothing}")
        if max_missed_seconds is not None and not 0 <= max_missed_seconds < float("inf"):
            raise ValueError(f"max_missed_seconds must be finite and >= 0 seconds (or None: count frames), got "
                             f"{max_missed_seconds}")
        self.max_missed_seconds = None if max_missed_seconds is None else float(max_missed_seconds)
        self.iou_threshold = float(iou_threshold)
        self.max_centre_distance = float(max_centre_distance)
        self.max_missed = int(max_missed)
        self.velocity_smoothing = float(velocity_smoothing)
        self._tracks: list[Track] = []
        self._next_id = 1
        self._last_timestamp: float | None = None

    @property
    def tracks(self) -> list[Track]:
        """Live tracks (matched this frame or missing for at most ``max_missed`` frames)."""
        return list(self._tracks)

    def _pair_scores(self, predicted: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Higher is better; IoU matches score in [1, 2], distance-only matches in (0, 1), impossible pairs -inf."""
        iou = iou_matrix(predicted, boxes)
        centre_p = (predicted[:, :2] + predicted[:, 2:]) / 2
        centre_b = (boxes[:, :2] + boxes[:, 2:]) / 2
        diag = np.linalg.norm(predicted[:, 2:] - predicted[:, :2], axis=1)
        dist = np.linalg.norm(centre_p[:, None] - centre_b[None], axis=2) / np.maximum(diag[:, None], 1e-9)
        scores = np.full(iou.shape, -np.inf)
        near = dist <= self.max_centre_distance
        scores[near] = 1.0 - dist[near] / (self.max_centre_distance + 1e-9) * 0.999
        overlap = iou >= self.iou_threshold
        scores[overlap] = 1.0 + iou[overlap]
        return scores

    def update(self, detections: Sequence[Detection] | np.ndarray, timestamp: float | None = None) -> TrackerStep:
        """Assign a track id to each detection of this frame (Detections, or an (N, 4) array of x1, y1, x2, y2).

        ``timestamp``: the frame's time in seconds; required with ``max_missed_seconds``.
        """
        if self.max_missed_seconds is not None and (timestamp is None or not np.isfinite(timestamp)):
            raise ValueError(f"this tracker ends tracks after {self.max_missed_seconds} s unmatched: pass each frame's "
                             f"timestamp (seconds) to update(), got {timestamp!r}")
        boxes = _as_boxes(detections)
        restarted = []
        if timestamp is not None and self._last_timestamp is not None and timestamp < self._last_timestamp:
            restarted = self.flush()  # time went back (a new clip): nobody on screen is carried over from the last
        if timestamp is not None:
            self._last_timestamp = float(timestamp)
        ids = [0] * len(boxes)
        matched_tracks: set[int] = set()
        if self._tracks and len(boxes):
            predicted = np.array([t.predicted() for t in self._tracks])
            scores = self._pair_scores(predicted, boxes)
            for flat in np.argsort(-scores, axis=None):
                ti, di = np.unravel_index(flat, scores.shape)
                if not np.isfinite(scores[ti, di]):
                    break
                if ti in matched_tracks or ids[di]:
                    continue
                self._match(self._tracks[ti], boxes[di])
                matched_tracks.add(int(ti))
                ids[di] = self._tracks[ti].track_id
        ended = list(restarted)
        for i, track in enumerate(self._tracks):
            if i in matched_tracks:
                track.last_seen = timestamp
                continue
            track.missed += 1
            if self._expired(track, timestamp):
                ended.append(track.track_id)
        self._tracks = [t for t in self._tracks if t.track_id not in set(ended)]
        for di in range(len(boxes)):
            if not ids[di]:
                track = Track(self._next_id, boxes[di].copy(), last_seen=timestamp)
                self._next_id += 1
                self._tracks.append(track)
                ids[di] = track.track_id
        return TrackerStep(ids=ids, ended=ended)

    def _expired(self, track: Track, timestamp: float | None) -> bool:
        if self.max_missed_seconds is None or track.last_seen is None:
            return track.missed > self.max_missed
        elapsed = timestamp - track.last_seen
        return elapsed < 0 or (track.missed >= 2 and elapsed > self.max_missed_seconds)

    def _match(self, track: Track, box: np.ndarray) -> None:
        step = (box - track.box) / (track.missed + 1)
        a = self.velocity_smoothing
        if a > 0:
            track.velocity = step if track.hits == 1 else a * step + (1 - a) * track.velocity
        track.box = box.copy()
        track.hits += 1
        track.missed = 0

    def flush(self) -> list[int]:
        """End every live track (end of stream); returns their ids."""
        ended = [t.track_id for t in self._tracks]
        self._tracks = []
        return ended
