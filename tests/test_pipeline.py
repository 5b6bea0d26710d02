"""The capture pipeline end to end on a synthetic clip made from a real photo: sharp, then progressively blurred,
then progressively darkened, then sharp again.

The bundle's model (:class:`bundle_fixtures.SharpnessBrightnessNet`) scores sharpness and brightness for real,
and its 0-100 scale is calibrated on *other* photos. The gate's hard measure limits are switched off, so every
rejection of a degraded frame comes from the model's scores; the measures only name the cause.
"""
from __future__ import annotations

import dataclasses
import io
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundle_fixtures import SharpnessBrightnessNet, aligned_faces, export_onnx, torch_scores, write_test_bundle
from example_helpers import UpsideDownLandmarks, load_example

from fiqa_sdk import faces_to_tensor, load_sample
from fiqa_sdk.bundle import ScoreSpec
from fiqa_sdk.capture_io import CaptureWriteError, CaptureWriter, DecisionLog
from fiqa_sdk.gate import GateConfig, Reason
from fiqa_sdk.pipeline import CapturePipeline, face_crop, outside_fraction
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112
from fiqa_sdk.scorer import Scorer
from fiqa_sdk.sources import Frame
from fiqa_sdk.tracking import IouTracker

FPS = 10.0
SHARP, BLUR, DARK = "sharp", "blur", "dark"
THRESHOLDS = {"utility_accept": 60.0, "utility_release": 50.0, "perceptual_accept": 70.0,
              "perceptual_release": 60.0, "min_sharpness": None, "min_brightness": None, "max_brightness": None,
              "window_frames": 6, "window_s": 10.0, "cooldown_s": 0.0}


@pytest.fixture(scope="module")
def quality_bundle(tmp_path_factory, retinaface_ort) -> Path:
    """lo/hi are the 1st/99th percentiles of the model on the other sample faces, clean, blurred and darkened."""
    d = tmp_path_factory.mktemp("quality")
    net = SharpnessBrightnessNet()
    faces = aligned_faces(retinaface_ort)
    calib = []
    for name in ("t1", "astronaut"):
        for face in faces[name]:
            for sigma in (0, 1, 2):
                blurred = cv2.GaussianBlur(face, (0, 0), sigma) if sigma else face
                calib += [blurred, (blurred * 0.5).astype(np.uint8)]
    z = torch_scores(net, faces_to_tensor(np.stack(calib)))
    specs = [ScoreSpec(name, i, f"{name}-test", 0.0, 1.0, *map(float, np.percentile(z[:, i], [1, 99])))
             for i, name in enumerate(("utility", "perceptual"))]
    return write_test_bundle(d / "bundle", export_onnx(net, d / "quality.onnx"), specs=specs, thresholds=THRESHOLDS)


@pytest.fixture(scope="module")
def clip() -> tuple[list[np.ndarray], list[str]]:
    """24 frames of 640x480: 6 sharp (shifted a few px), 6 ever more blurred, 6 ever darker, 6 sharp again."""
    g = load_sample("grace_hopper")
    g = cv2.resize(g, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    base = np.full((480, 640, 3), 90, np.uint8)
    y0 = (480 - g.shape[0]) // 2
    base[y0:y0 + g.shape[0], 200:200 + g.shape[1]] = g
    frames, labels = [], []
    for k in range(6):
        frames.append(np.roll(base, k, axis=1))
        labels.append(SHARP)
    for sigma in (3.5, 4.0, 4.5, 5.0, 5.5, 6.0):
        frames.append(cv2.GaussianBlur(base, (0, 0), sigma))
        labels.append(BLUR)
    for gain in (0.4, 0.35, 0.3, 0.25, 0.22, 0.2):
        frames.append((base * gain).astype(np.uint8))
        labels.append(DARK)
    for k in range(6):
        frames.append(np.roll(base, -k, axis=0))
        labels.append(SHARP)
    return frames, labels


@pytest.fixture(scope="module")
def scorer(quality_bundle, retinaface_ort) -> Scorer:
    return Scorer(quality_bundle, backend="onnxruntime", detector=retinaface_ort, threads=1)


def _run(pipeline: CapturePipeline, frames: list[np.ndarray]):
    reports = [pipeline.process(f, i, i / FPS) for i, f in enumerate(frames)]
    return reports, pipeline.flush()


def test_gate_keeps_only_the_sharp_stretches_and_writes_exactly_those(scorer, clip, tmp_path):
    frames, labels = clip
    writer = CaptureWriter(tmp_path / "captures", bundle_id=scorer.info.bundle_id, fsync=False)
    with DecisionLog(tmp_path / "decisions.jsonl", bundle_id=scorer.info.bundle_id) as log:
        pipe = CapturePipeline(scorer, writer=writer, logger=log)  # thresholds from the bundle manifest
        assert pipe.gate.config == GateConfig.from_manifest({"thresholds": THRESHOLDS})
        reports, last = _run(pipe, frames)

    # Preconditions: one tracked face per frame, and the scores really separate sharp from degraded frames.
    assert [len(r.faces) for r in reports] == [1] * len(frames)
    assert {r.track_ids[0] for r in reports} == {1}
    perceptual = np.array([r.faces[0].perceptual for r in reports])
    sharp = np.array(labels) == SHARP
    assert perceptual[sharp].min() >= THRESHOLDS["perceptual_accept"], perceptual.round(1)
    assert perceptual[~sharp].max() < THRESHOLDS["perceptual_release"], perceptual.round(1)

    decisions = {d.frame_index: d for r in reports + [last] for d in r.decisions}
    assert sorted(decisions) == list(range(len(frames))), "every frame gets exactly one final decision"
    accepted = sorted(i for i, d in decisions.items() if d.accepted)
    first, second = range(0, 6), range(18, 24)
    assert len(accepted) == 2 and accepted[0] in first and accepted[1] in second
    for i, label in enumerate(labels):
        reasons = set(decisions[i].reasons)
        if label == BLUR:
            assert Reason.BLURRED in reasons and Reason.TOO_DARK not in reasons, (i, reasons)
            assert Reason.LOW_PERCEPTUAL not in reasons  # the cause is named instead
        elif label == DARK:
            assert Reason.TOO_DARK in reasons and Reason.BLURRED not in reasons, (i, reasons)
        elif i not in accepted:
            assert reasons == {Reason.NOT_BEST_IN_WINDOW}, (i, reasons)

    written = [files for r in reports + [last] for _, files in r.written]
    sidecars = sorted((tmp_path / "captures").glob("*.json"))
    assert sorted(p.name for p in sidecars) == sorted(f.sidecar.name for f in written)
    assert len(list((tmp_path / "captures").glob("*.jpg"))) == 2
    docs = [json.loads(p.read_text()) for p in sidecars]
    assert sorted(doc["frame_index"] for doc in docs) == accepted
    assert all(doc["accepted"] and doc["bundle_id"] == scorer.info.bundle_id for doc in docs)
    for doc in docs:  # the stored picture is the face crop of that very frame
        img = cv2.imread(str(tmp_path / "captures" / doc["image"]))
        det = reports[doc["frame_index"]].faces[0].detection
        assert img.shape == face_crop(frames[doc["frame_index"]], det).shape
    lines = [json.loads(s) for s in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    assert sorted(x["frame_index"] for x in lines) == list(range(len(frames)))
    assert sorted(x["frame_index"] for x in lines if x["accepted"]) == accepted
    # an accepted line names its stored picture (written before the line), a rejected one none
    assert sorted(x["capture"] for x in lines if x["accepted"]) == sorted(str(f.image) for f in written)
    assert all(Path(x["capture"]).is_file() for x in lines if x["accepted"])
    assert not any("capture" in x for x in lines if not x["accepted"])
    assert pipe.counts["frames"] == 24 and pipe.counts["accepted"] == 2 and pipe.counts["rejected"] == 22
    assert pipe.reasons["blurred"] == 6 and pipe.reasons["too_dark"] == 6


def test_report_tells_pending_candidates_from_settled_faces(scorer, clip):
    frames, _ = clip
    pipe = CapturePipeline(scorer)
    r0 = pipe.process(frames[0], 0, 0.0)
    assert r0.pending() == [1] and r0.decision_for(1) is None and r0.written == []
    r6 = pipe.process(frames[6], 1, 0.1)  # blurred: rejected at once
    assert r6.pending() == [] and r6.decision_for(1).reasons[0] == Reason.BLURRED
    assert set(r6.timings_ms) == {"score_frame", "track_gate", "write", "total"}
    end = pipe.flush()
    assert [c.decision.frame_index for c in end.captures] == [0]
    assert end.ended_tracks == [1]


class _FailingWriter(CaptureWriter):
    def write(self, capture, extra=None):
        raise CaptureWriteError("disk full (simulated)")


def test_a_capture_that_cannot_be_written_is_reported_and_the_stream_goes_on(scorer, clip, tmp_path):
    frames, _ = clip
    with DecisionLog(tmp_path / "decisions.jsonl") as log:
        pipe = CapturePipeline(scorer, writer=_FailingWriter(tmp_path), logger=log)
        reports, last = _run(pipe, frames[:8])
    errors = [e for r in reports + [last] for e in r.errors]
    assert len(errors) == 1 and "disk full (simulated)" in errors[0] and "frame 0" in errors[0]
    assert pipe.counts["write_errors"] == 1 and pipe.counts["frames"] == 8
    lines = [json.loads(s) for s in (tmp_path / "decisions.jsonl").read_text().splitlines()]
    (accepted,) = [x for x in lines if x["accepted"]]  # the log says the picture is missing, and why
    assert "capture" not in accepted and "disk full (simulated)" in accepted["capture_error"]


def test_faces_without_a_readable_pose_are_skipped_with_the_reason(quality_bundle, retinaface_ort, clip):
    frames, _ = clip
    s = Scorer(quality_bundle, backend="onnxruntime", detector=UpsideDownLandmarks(retinaface_ort))
    (face,) = s.score_frame(frames[0])
    assert face.pose_error is not None and "yaw" not in face.measures and face.measures["iod_px"] > 0
    pipe = CapturePipeline(s)
    report = pipe.process(frames[0], 0, 0.0)
    assert report.skipped and report.skipped[0][0] == 1 and "pose unavailable" in report.skipped[0][1]
    assert report.decisions == [] and report.pending() == []
    (entry,) = report.skipped_faces()  # what a caller logs: track, reason and where the face is
    assert (entry.track_id, entry.reason) == report.skipped[0]
    assert entry.box == pytest.approx(face.detection.box.tolist()) and entry.face.utility == face.utility
    no_pose = CapturePipeline(s, gate=GateConfig(max_yaw_deg=None, max_pitch_deg=None, max_roll_deg=None))
    assert no_pose.process(frames[0], 0, 0.0).skipped == []  # a gate that ignores pose can still judge it


def test_outside_fraction_is_the_share_of_the_aligned_crop_beyond_the_frame():
    template = ARCFACE_TEMPLATE_112  # landmarks already at the template: the crop is the 112x112 frame itself
    assert outside_fraction((112, 112, 3), template) == 0.0
    assert outside_fraction((112, 56, 3), template) == pytest.approx(0.5)  # right half of the crop is padding
    assert outside_fraction((112, 112), template + [0, 28]) == pytest.approx(0.25)  # top quarter above the frame


def _shifted_portrait(cut: int) -> np.ndarray:
    """Grace Hopper (512x600) at the left of a 900x600 frame, ``cut`` px of it pushed past the frame edge."""
    g = load_sample("grace_hopper")
    frame = np.full((600, 900, 3), 40, np.uint8)
    frame[:, :g.shape[1] - cut] = g[:, cut:]
    return frame


def test_a_face_cut_by_the_frame_edge_is_rejected_at_edge(scorer):
    config = GateConfig.from_manifest({"thresholds": THRESHOLDS}, window_frames=1)
    verdicts = {}
    for cut in (0, 215):
        pipe = CapturePipeline(scorer, gate=config)
        report = pipe.process(_shifted_portrait(cut), 0, 0.0)
        (face,) = report.faces
        verdicts[cut] = d = report.decision_for(1)
        # The gate also sees the raw z-scores (for ranking), and they are logged with the decision.
        assert (d.scores["utility_z"], d.scores["perceptual_z"]) == pytest.approx(face.z)
    inside, cut = verdicts[0], verdicts[215]
    assert inside.measures["outside_fraction"] == 0.0 and Reason.AT_EDGE not in inside.reasons
    assert inside.accepted, inside.reasons
    assert cut.measures["outside_fraction"] > 0.2 and Reason.AT_EDGE in cut.reasons and not cut.accepted


def test_a_face_with_a_non_finite_score_is_skipped_and_the_due_capture_survives(scorer, clip, monkeypatch):
    """A NaN score (e.g. fp16 overflow) must not make the gate raise and lose the capture it settles."""
    frames, _ = clip
    real = scorer.score_frame
    broken = {1}  # call numbers whose faces get a NaN utility

    def score_frame(frame):
        n = score_frame.calls
        score_frame.calls += 1
        faces = real(frame)
        return [dataclasses.replace(f, utility=math.nan) for f in faces] if n in broken else faces

    score_frame.calls = 0
    monkeypatch.setattr(scorer, "score_frame", score_frame)
    pipe = CapturePipeline(scorer, gate=GateConfig.from_manifest({"thresholds": THRESHOLDS}, window_s=0.05))
    assert pipe.process(frames[0], 0, 0.0).pending() == [1]  # opens a window
    report = pipe.process(frames[1], 1, 0.1)  # the window is due, and this frame's face scores NaN
    assert [c.decision.frame_index for c in report.captures] == [0]
    assert report.skipped == [(1, report.skipped[0][1])] and "utility=nan" in report.skipped[0][1]
    assert report.pending() == [] and report.decision_for(1) is None
    assert pipe.counts["skipped"] == 1 and pipe.counts["accepted"] == 1


def test_a_backwards_timestamp_is_refused_before_the_tracker_moves(scorer, clip):
    """The tracker ends every track when time goes back; the gate then refused the frame, so it never heard of the
    end, and the same face in the next frame became a new track. Now the frame is refused with nothing changed."""
    frames, _ = clip
    pipe = CapturePipeline(scorer, gate=GateConfig.from_manifest({"thresholds": THRESHOLDS}),
                           tracker=IouTracker(max_missed_seconds=1.0))
    assert pipe.process(frames[0], 0, 1.0).track_ids == [1]
    with pytest.raises(ValueError, match="went backwards"):
        pipe.process(frames[1], 1, 0.5)
    assert [t.track_id for t in pipe.tracker.tracks] == [1] and pipe.counts["frames"] == 1
    with pytest.raises(ValueError, match="finite number of seconds"):
        pipe.process(frames[1], 1, math.nan)
    report = pipe.process(frames[2], 2, 1.1)
    assert report.track_ids == [1] and report.ended_tracks == []  # the same person, the same window
    settled = {d.frame_index for r in (report, pipe.flush()) for d in r.decisions}
    assert settled == {0, 2}


# ---- examples/capture_gate.py ---------------------------------------------------------------------------------------

def _example():
    return load_example("capture_gate_example", "capture_gate.py")


def test_example_cli_runs_a_video_headless(quality_bundle, clip, tmp_path, capsys, monkeypatch):
    frames, _ = clip
    video = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    assert vw.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for f in frames:
        vw.write(f)
    vw.release()
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ex = _example()
    common = ["--source", str(video), "--bundle", str(quality_bundle), "--backend", "onnxruntime",
              "--threads", "1", "--out", str(tmp_path / "caps")]
    assert ex.main(common + ["--display", "on"]) == 2
    assert "no window can be opened" in capsys.readouterr().err
    code = ex.main(common + ["--log", str(tmp_path / "log.jsonl"), "--max-frames", "16"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "running headless" in out and "on onnxruntime" in out and "stopped by --max-frames" in out
    captured = [line for line in out.splitlines() if line.startswith("captured track 1 frame ")]
    assert len(captured) == 1 and int(captured[0].split()[4].rstrip(":")) in range(0, 6)
    assert len(list((tmp_path / "caps").glob("*.json"))) == 1
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 16
    assert "16 frames (0 unprocessable, skipped)" in out and "rejections: " in out


def test_example_loop_survives_a_bad_frame(scorer, clip):
    frames, _ = clip
    ex = _example()
    stream = [Frame(0, 0.0, frames[0]), Frame(1, 0.1, np.zeros((0, 0, 3), np.uint8)),
              Frame(2, 0.2, frames[1]), Frame(3, 0.3, np.zeros((4, 4, 2), np.uint8)), Frame(4, 0.4, frames[6])]
    out = io.StringIO()
    stats = ex.run(stream, CapturePipeline(scorer), out=out)
    assert (stats.frames, stats.bad_frames, stats.stopped_by) == (3, 2, "end of source")


def test_example_tells_a_source_that_never_started_from_one_that_was_lost(scorer, clip):
    """No frame at all is an error for main (wrong camera index or URL); a drop after frames ends the run."""
    from fiqa_sdk.sources import SourceError

    frames, _ = clip
    ex = _example()

    def dead():
        raise SourceError("cannot open camera 7")
        yield  # a generator that fails on its first frame

    with pytest.raises(SourceError, match="cannot open camera 7"):
        ex.run(dead(), CapturePipeline(scorer), out=io.StringIO())

    def drops():
        yield Frame(0, 0.0, frames[0])
        raise SourceError("unplugged")

    stats = ex.run(drops(), CapturePipeline(scorer), out=io.StringIO())
    assert stats.frames == 1 and stats.stopped_by == "source lost: unplugged"


def test_z_scores_are_oriented_so_higher_is_better_for_the_gate():
    """A lower-is-better teacher's 0-100 scale is flipped; its z must be too, or ties at 100 go to the worse face."""
    import types

    from fiqa_sdk.pipeline import _gate_scores

    face = types.SimpleNamespace(scores={"utility": 100.0, "perceptual": 100.0}, z=(-3.0, 1.5))
    assert _gate_scores(face, {"utility": -1.0, "perceptual": 1.0}) == {
        "utility": 100.0, "perceptual": 100.0, "utility_z": 3.0, "perceptual_z": 1.5}
    face.z = (math.nan, 1.5)
    assert "utility_z" not in _gate_scores(face, {})


def test_closing_the_scorer_closes_the_detector_it_built_not_one_it_was_given(monkeypatch, retinaface_ort):
    from fiqa_sdk.detection import RetinaFaceDetector

    closed = []
    monkeypatch.setattr(RetinaFaceDetector, "close", lambda self: closed.append(self))
    own = Scorer(threads=1)
    own.close()
    assert closed == [own.detector]
    given = Scorer(threads=1, detector=retinaface_ort)
    given.close()
    assert closed == [own.detector]  # the caller's detector stays open for the caller
