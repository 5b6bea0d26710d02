"""IouTracker: stable ids on synthetic box sequences, and on real detections in a panning group photo."""
from __future__ import annotations

import numpy as np
import pytest

from fiqa_sdk import create_detector, load_sample
from fiqa_sdk.detection import Detection
from fiqa_sdk.tracking import IouTracker, iou_matrix


def box(cx: float, cy: float, size: float) -> np.ndarray:
    return np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])


def crossing(n: int = 30):
    """Face A walks right, face B walks left, passing in front of each other around frame n/2."""
    for k in range(n):
        yield box(60 + 14 * k, 130, 80), box(470 - 14 * k, 140, 84)


def test_iou_matrix_known_values():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]])


@pytest.mark.parametrize("order", ["ab", "ba", "shuffled"])
def test_two_faces_crossing_keep_their_ids(order):
    rng = np.random.default_rng(0)
    tracker = IouTracker()
    seen_a, seen_b = set(), set()
    for a, b in crossing():
        dets = [("a", a), ("b", b)]
        if order == "ba" or (order == "shuffled" and rng.random() < 0.5):
            dets.reverse()
        step = tracker.update(np.array([d[1] for d in dets]))
        assert step.ended == []
        for (who, _), tid in zip(dets, step.ids):
            (seen_a if who == "a" else seen_b).add(tid)
    assert len(seen_a) == 1 and len(seen_b) == 1 and seen_a != seen_b


def test_crossing_boxes_really_overlap():
    """The scenario is only a test of the motion model if the faces overlap strongly mid-way."""
    best = max(iou_matrix(a[None], b[None])[0, 0] for a, b in crossing())
    assert best > 0.5


def test_without_prediction_crossing_faces_swap():
    """Shows the velocity prediction is what keeps ids through the crossing."""
    tracker = IouTracker(velocity_smoothing=0.0)
    ids_a = set()
    for a, b in crossing():
        ids_a.add(tracker.update(np.array([a, b])).ids[0])
    assert len(ids_a) > 1


def test_leave_and_reenter_gets_new_id_and_end_is_reported_once():
    tracker = IouTracker(max_missed=5)
    ids, ended_at = [], {}
    for frame in range(40):
        present = frame < 10 or frame >= 26
        step = tracker.update(np.array([box(200, 200, 100)]) if present else np.zeros((0, 4)))
        ids.extend(step.ids)
        for tid in step.ended:
            assert tid not in ended_at
            ended_at[tid] = frame
    assert set(ids[:10]) == {1}
    assert set(ids[10:]) == {2}
    assert ended_at == {1: 15}  # missing on frames 10..15: the 6th miss exceeds max_missed=5
    assert tracker.flush() == [2]
    assert tracker.tracks == []


def test_short_occlusion_of_moving_face_keeps_id():
    tracker = IouTracker(max_missed=5)
    ids = []
    for frame in range(20):
        visible = not 8 <= frame < 12  # hidden for 4 frames while still walking 20 px/frame
        step = tracker.update(np.array([box(100 + 20 * frame, 200, 60)]) if visible else np.zeros((0, 4)))
        ids.extend(step.ids)
    assert set(ids) == {1}


def test_fast_motion_without_overlap_matches_by_centre_distance():
    tracker = IouTracker(iou_threshold=0.3, max_centre_distance=0.5)
    first = tracker.update(np.array([box(100, 100, 80)])).ids
    # Jumped 40 px (IoU ~0.33 -> still overlap) then a 50 px jump at a new speed: IoU < 0.3, distance < 0.5 diag.
    second = tracker.update(np.array([box(140, 100, 80)])).ids
    third = tracker.update(np.array([box(230, 100, 80)])).ids
    assert first == second == third == [1]
    far = tracker.update(np.array([box(600, 100, 80)])).ids
    assert far == [2]


def test_accepts_detections_and_validates_boxes():
    tracker = IouTracker()
    det = Detection(box=np.array([10, 10, 50, 60], np.float32), landmarks=np.zeros((5, 2), np.float32), score=0.9)
    assert tracker.update([det]).ids == [1]
    with pytest.raises(ValueError, match="x2 > x1"):
        tracker.update(np.array([[50, 10, 10, 60]]))
    with pytest.raises(ValueError, match="NaN"):
        tracker.update(np.array([[np.nan, 10, 10, 60]]))
    with pytest.raises(ValueError, match="max_missed"):
        IouTracker(max_missed=-1)


def test_real_detections_in_panning_group_photo():
    """RetinaFace on a camera panning across insightface's group photo: every face keeps one id until it leaves."""
    img = load_sample("t1")
    detector = create_detector(max_side=640)
    tracker = IouTracker(max_missed=2)
    centres: dict[int, list[float]] = {}
    ended = []
    for k in range(8):
        frame = img[100:580, 20 * k:20 * k + 640]
        dets = detector(frame)
        step = tracker.update(dets)
        ended += step.ended
        for det, tid in zip(dets, step.ids):
            centres.setdefault(tid, []).append(float(det.box[0] + det.box[2]) / 2)
    assert len(centres) == 3, centres  # three faces in view, no id churn
    for xs in centres.values():
        assert len(xs) >= 6
        assert np.all(np.diff(xs) < 0)  # the camera pans right, so every face drifts left
    # The leftmost face leaves the view at frame 6: its track is missing 2 frames, not yet past max_missed=2.
    assert ended == []
    assert sorted(t.missed for t in tracker.tracks) == [0, 0, 2]


def test_a_time_limit_keeps_the_same_person_whatever_the_frame_rate():
    """max_missed_seconds: a 0.5 s look-away is one track at 30 FPS (15 missed frames) and at 4 FPS (2 frames); a
    1.5 s absence ends it at either rate. Counting frames instead, 10 missed frames are 0.33 s or 2.5 s."""
    for fps in (30.0, 4.0):
        for gap_s, same in ((0.5, True), (1.5, False)):
            tracker = IouTracker(max_missed_seconds=1.0)
            first = tracker.update(np.array([box(200, 200, 100)]), 0.0).ids
            n_missing = int(round(gap_s * fps))
            ended = []
            for k in range(1, n_missing + 1):
                ended += tracker.update(np.zeros((0, 4)), k / fps).ended
            back = tracker.update(np.array([box(200, 200, 100)]), (n_missing + 1) / fps).ids
            assert (back == first) is same and (ended == []) is same, (fps, gap_s, first, back, ended)
    with pytest.raises(ValueError, match="pass each frame's timestamp"):
        IouTracker(max_missed_seconds=1.0).update(np.array([box(200, 200, 100)]))
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="max_missed_seconds must be finite and >= 0"):
            IouTracker(max_missed_seconds=bad)


def test_a_timed_tracker_survives_one_missed_frame_and_ends_tracks_when_time_goes_back():
    slow = IouTracker(max_missed_seconds=1.0)  # 0.5 FPS: one missed detection is already 2 s
    first = slow.update(np.array([box(200, 200, 100)]), 0.0).ids
    assert slow.update(np.zeros((0, 4)), 2.0).ended == []
    assert slow.update(np.array([box(200, 200, 100)]), 4.0).ids == first  # a flaky detection splits no track
    assert slow.update(np.zeros((0, 4)), 6.0).ended == [] and slow.update(np.zeros((0, 4)), 8.0).ended == first
    for tracker in (IouTracker(max_missed_seconds=1.0), IouTracker()):
        tracker.update(np.array([box(200, 200, 100)]), 30.0)
        step = tracker.update(np.array([box(200, 200, 100)]), 0.0)  # a second clip from t=0, a face at that spot
        assert step.ended == [1] and step.ids == [2]  # ...is a new person: nothing carried over
