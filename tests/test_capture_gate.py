"""examples/capture_gate.py and examples/make_sample_video.py as a user runs them: bad --out/--log fail before the
model loads, --wait-for-source makes live sources wait, the summary counts faces kept from the gate."""
from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
from example_helpers import UpsideDownLandmarks, load_example

from fiqa_sdk import load_sample
from fiqa_sdk.detection import Detection
from fiqa_sdk.pipeline import FrameReport
from fiqa_sdk.samples import SampleUnavailable
from fiqa_sdk.scorer import FaceResult, Scorer
from fiqa_sdk.sources import Frame, FrameSource, LiveSource, SourceError, VideoFileSource, open_source


@pytest.fixture()
def ex():
    return load_example("capture_gate_example", "capture_gate.py")


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """Three frames of a real portrait, MJPG/AVI."""
    frame = np.full((480, 640, 3), 40, np.uint8)
    face = cv2.resize(load_sample("grace_hopper"), (320, 375), interpolation=cv2.INTER_AREA)
    frame[50:425, 160:480] = face
    path = tmp_path_factory.mktemp("video") / "portrait.avi"
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (640, 480))
    assert vw.isOpened(), "OpenCV cannot write MJPG/AVI here"
    for _ in range(3):
        vw.write(frame)
    vw.release()
    return path


def _no_model(*args, **kwargs):
    raise AssertionError("the Scorer was built before the outputs were checked")


@pytest.mark.parametrize("bad, match", [("out", "is an existing file, not a folder"), ("log", "is a folder")])
def test_bad_out_or_log_fails_before_the_model_loads(ex, video, tmp_path, capsys, monkeypatch, bad, match):
    monkeypatch.setattr(ex, "Scorer", _no_model)
    a_file, a_dir = tmp_path / "afile", tmp_path / "adir"
    a_file.write_text("")
    a_dir.mkdir()
    out, log = (a_file, tmp_path / "log.jsonl") if bad == "out" else (tmp_path / "caps", a_dir)
    code = ex.main(["--source", str(video), "--out", str(out), "--log", str(log), "--display", "off"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and match in err and "Traceback" not in err


def test_wait_makes_live_sources_wait_and_leaves_files_alone(video, tmp_path):
    cam = open_source("0")
    assert isinstance(cam, LiveSource) and not cam.retry_initial_open and cam.backoff.max_attempts is not None
    waiting = open_source("0", wait=True)
    assert waiting.retry_initial_open and waiting.backoff.max_attempts is None  # waits at start, never gives up
    # a camera that is not plugged in yet: refused at once, unless asked to wait for it
    with pytest.raises(SourceError, match="does not exist.*wait=True"):
        open_source("/dev/video97")
    later = open_source("/dev/video97", wait=True)
    assert isinstance(later, LiveSource) and later.retry_initial_open
    src = open_source(str(video), wait=True)
    assert isinstance(src, VideoFileSource) and len(list(src)) == 3


def test_main_applies_wait_for_source(ex, capsys, monkeypatch):
    opened = []

    def spy(spec, **kwargs):
        opened.append(open_source(spec, **kwargs))
        return opened[-1]

    def no_model(*args, **kwargs):
        raise RuntimeError("no model in this test")

    monkeypatch.setattr(ex, "open_source", spy)
    monkeypatch.setattr(ex, "Scorer", no_model)
    assert ex.parse_args(["--wait-for-source"]).wait_for_source and not ex.parse_args([]).wait_for_source
    for spec in ("rtsp://10.0.0.5/stream", "/dev/video97"):
        assert ex.main(["--source", spec, "--wait-for-source", "--display", "off"]) == 2
        assert "no model in this test" in capsys.readouterr().err
        assert opened[-1].retry_initial_open and opened[-1].backoff.max_attempts is None


def test_skipped_faces_are_counted_with_their_reasons(ex):
    stats = ex.RunStats()
    ex._announce(FrameReport(0, 0.0, skipped=[(1, "why a"), (2, "why b")]), stats)
    ex._announce(FrameReport(1, 0.1, skipped=[(1, "why a")]), stats)
    assert ex._skip_summary(stats, 3) == "3 not gated (2x why a; 1x why b)"
    assert ex._skip_summary(ex.RunStats(), 0) == "0 not gated"


def test_summary_reports_faces_the_pipeline_skipped(ex, video, retinaface_ort, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(ex, "Scorer", lambda *a, **k: Scorer(detector=UpsideDownLandmarks(retinaface_ort),
                                                             threads=1))
    log = tmp_path / "log.jsonl"
    code = ex.main(["--source", str(video), "--out", str(tmp_path / "caps"), "--log", str(log), "--display", "off"])
    out = capsys.readouterr().out
    assert code == 0, out
    summary = out.strip().splitlines()[-1]
    assert "3 faces, 3 not gated (3x pose unavailable from its landmarks: " in summary, summary
    assert "0 captures" in summary and log.read_text() == ""  # skipped faces get no gate decision


# -- examples/make_sample_video.py -------------------------------------------------------------------------------------

def test_make_sample_video_without_matplotlib_says_what_to_install(tmp_path, capsys, monkeypatch):
    mk = load_example("make_sample_video_example", "make_sample_video.py")

    def missing(name):
        raise SampleUnavailable(f"sample {name!r} ships with the 'matplotlib' package, which is not installed; "
                                "install it with: pip install matplotlib")

    monkeypatch.setattr(mk, "load_sample", missing)
    assert mk.main([str(tmp_path / "sample.avi")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "pip install matplotlib" in err
    assert not (tmp_path / "sample.avi").exists()


def test_make_sample_video_writes_the_clip(tmp_path, capsys):
    mk = load_example("make_sample_video_example", "make_sample_video.py")
    assert mk.main([str(tmp_path / "sample.avi")]) == 0
    cap = cv2.VideoCapture(str(tmp_path / "sample.avi"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 60 and (tmp_path / "sample.json").is_file()
    cap.release()


def test_detector_backend_and_max_side_reach_the_detector(ex, video, tmp_path, capsys, monkeypatch):
    seen = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(ex, "Scorer", spy)
    args = ["--source", str(video), "--out", str(tmp_path / "caps"), "--display", "off"]
    assert ex.main(args + ["--detector-backend", "opencv", "--max-side", "320"]) == 2
    assert seen["detector_options"] == {"backend": "opencv", "max_side": 320}
    with pytest.raises(SystemExit):
        ex.parse_args(args + ["--detector", "dlib", "--max-side", "320"])
    assert "options of the retinaface detector" in capsys.readouterr().err


def test_waiting_keeps_the_callers_back_off_timings():
    from fiqa_sdk.sources import Backoff

    mine = Backoff(initial_s=2.0, max_delay_s=60.0, max_attempts=3)
    waiting = open_source("0", wait=True, backoff=mine)
    assert waiting.backoff == Backoff(initial_s=2.0, max_delay_s=60.0, max_attempts=None)


# -- SIGTERM, overlay labels, -v ---------------------------------------------------------------------------------------

class _TerminatedAfter(FrameSource):
    """The portrait video's frames, with SIGTERM sent to this very process (as systemctl/docker stop would) before
    frame ``after``; no frame after it is delivered."""

    description = "terminated mid-run"

    def __init__(self, video: Path, after: int):
        self.frames, self.after, self.closed = [f.image for f in VideoFileSource(video)], after, False

    def __iter__(self):
        for i, image in enumerate(self.frames):
            if i == self.after:
                os.kill(os.getpid(), signal.SIGTERM)
            yield Frame(i, i / 10, image)

    def close(self) -> None:
        self.closed = True


def test_sigterm_ends_the_run_like_ctrl_c_flushing_the_open_windows(ex, video, retinaface_ort, tmp_path, capsys,
                                                                   monkeypatch):
    stray = []  # if main installed no handler, this catches the signal instead of it killing pytest
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stray.append(signum))
    flushed = []

    class SpyPipeline(ex.CapturePipeline):
        def flush(self):
            flushed.append(self.counts["frames"])
            return super().flush()

    source = _TerminatedAfter(video, after=2)
    monkeypatch.setattr(ex, "open_source", lambda spec, **kw: source)
    monkeypatch.setattr(ex, "CapturePipeline", SpyPipeline)
    monkeypatch.setattr(ex, "Scorer", lambda *a, **k: Scorer(detector=retinaface_ort, threads=1))
    log = tmp_path / "log.jsonl"
    try:
        code = ex.main(["--source", "x", "--out", str(tmp_path / "caps"), "--log", str(log), "--display", "off"])
        handler_after = signal.getsignal(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = capsys.readouterr().out
    assert code == 0 and stray == [], out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("2 frames") and summary.endswith("stopped by SIGTERM"), summary
    assert flushed == [2] and source.closed
    # the one window the two frames opened was settled by the flush: both frames decided and logged, the winner
    # (a sharp frontal portrait) written
    assert len(log.read_text().splitlines()) == 2
    assert "1 captures" in summary and len(list((tmp_path / "caps").glob("*.json"))) == 1
    assert handler_after is not previous and handler_after.__name__ == "<lambda>"  # the test's own, restored


def _signalling_flush(ex, signum: int, finished: list[int]):
    """A CapturePipeline whose flush first sends ``signum`` to this process (systemd's SIGTERM, an impatient
    user's Ctrl-C), then appends how many captures it settled to ``finished``."""

    class SignalledFlush(ex.CapturePipeline):
        def flush(self):
            os.kill(os.getpid(), signum)
            report = super().flush()
            finished.append(len(report.captures))
            return report

    return SignalledFlush


def test_a_sigterm_during_the_final_flush_does_not_cut_it_short(ex, video, retinaface_ort, tmp_path, capsys,
                                                                  monkeypatch):
    """The source ended and the flush is settling the last windows when systemd's SIGTERM lands: the flush
    finishes, the capture is written and the run ends normally."""
    stray = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: stray.append(signum))
    finished = []
    monkeypatch.setattr(ex, "CapturePipeline", _signalling_flush(ex, signal.SIGTERM, finished))
    monkeypatch.setattr(ex, "Scorer", lambda *a, **k: Scorer(detector=retinaface_ort, threads=1))
    try:
        code = ex.main(["--source", str(video), "--out", str(tmp_path / "caps"), "--display", "off",
                        "--max-frames", "3"])
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and stray == [] and finished == [1], summary
    assert summary.endswith("stopped by --max-frames") and len(list((tmp_path / "caps").glob("*.json"))) == 1


class _InterruptedAfter(_TerminatedAfter):
    """The portrait video's frames, with Ctrl-C (SIGINT to this process, as the terminal sends it) before frame
    ``after``."""

    description = "interrupted mid-run"

    def __iter__(self):
        for i, image in enumerate(self.frames):
            if i == self.after:
                os.kill(os.getpid(), signal.SIGINT)
            yield Frame(i, i / 10, image)


def test_a_second_ctrl_c_during_the_shutdown_changes_neither_the_files_nor_the_exit_status(
        ex, video, retinaface_ort, tmp_path, capsys, monkeypatch):
    """The first Ctrl-C ends the loop; the impatient second one, while the last window is written and again while
    the engine is closed, used to escape as a KeyboardInterrupt traceback (exit status 130, capture lost)."""
    finished, stops = [], []
    scorer = Scorer(detector=retinaface_ort, threads=1)
    real_close = scorer.close
    scorer.close = lambda: (os.kill(os.getpid(), signal.SIGINT), real_close())
    source = _InterruptedAfter(video, after=2)
    monkeypatch.setattr(ex, "open_source", lambda spec, **kw: source)
    monkeypatch.setattr(ex, "CapturePipeline", _signalling_flush(ex, signal.SIGINT, finished))
    monkeypatch.setattr(ex, "Scorer", lambda *a, **k: scorer)

    class RecordedStop(ex.SigtermStop):
        def __init__(self):
            super().__init__()
            stops.append(self)

    monkeypatch.setattr(ex, "SigtermStop", RecordedStop)
    before = signal.getsignal(signal.SIGINT)
    try:
        code = ex.main(["--source", "x", "--out", str(tmp_path / "caps"), "--display", "off"])
    except KeyboardInterrupt:  # the defect: caught here so that it fails this test instead of ending pytest
        code = "KeyboardInterrupt escaped main()"
    out = capsys.readouterr().out
    assert code == 0, out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("2 frames") and summary.endswith("stopped by Ctrl-C"), summary
    assert finished == [1] and len(list((tmp_path / "caps").glob("*.json"))) == 1 and source.closed
    assert stops[0].late == [signal.SIGINT, signal.SIGINT]  # during the flush and while the scorer closed: ignored
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C is the caller's again


def test_a_handler_python_cannot_restore_gives_way_to_the_default(ex, monkeypatch):
    installed = []

    def fake_signal(signum, handler):
        installed.append(handler)
        return None  # what signal.signal returns for a handler that was not installed from Python

    monkeypatch.setattr(ex.signal, "signal", fake_signal)
    with ex.stop_on_sigterm() as stop:
        assert stop.armed and not stop.fired
    assert installed[-1] is signal.SIG_DFL


def test_overlay_labels_a_skipped_face_by_why_it_was_skipped(ex):
    assert ex.skip_label("pose unavailable from its landmarks: mouth above the eyes") == "pose?"
    assert ex.skip_label("non-finite score utility=nan (model output overflowed?)") == "score nan"
    assert ex.skip_label("non-finite score perceptual=inf (model output overflowed?)") == "score inf"


def test_overlay_draws_the_skip_label(ex, video, monkeypatch):
    frame = next(iter(VideoFileSource(video))).image
    det = Detection(np.array([200.0, 100.0, 400.0, 350.0]), np.zeros((5, 2)), 0.99)
    face = FaceResult(det, np.zeros((112, 112, 3), np.uint8), float("nan"), 50.0, {})
    drawn, real = [], cv2.putText

    def spy(img, text, *args, **kwargs):
        drawn.append(text)
        return real(img, text, *args, **kwargs)

    monkeypatch.setattr(ex.cv2, "putText", spy)
    report = FrameReport(0, 0.0, faces=[face], track_ids=[7],
                         skipped=[(7, "non-finite score utility=nan (model output overflowed?)")])
    ex.draw_overlay(frame, report, 10.0)
    assert "score nan" in drawn and "pose?" not in drawn


@pytest.fixture()
def root_level():
    """main() sets the root logger's level (-v): put it back for the other tests."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def test_verbose_logs_each_face_kept_from_the_gate(ex, video, retinaface_ort, tmp_path, caplog, root_level,
                                                    monkeypatch):
    monkeypatch.setattr(ex, "Scorer", lambda *a, **k: Scorer(detector=UpsideDownLandmarks(retinaface_ort),
                                                             threads=1))
    args = ["--source", str(video), "--out", str(tmp_path / "caps"), "--display", "off", "--max-frames", "1"]
    assert ex.main(args + ["-v"]) == 0
    kept = [r for r in caplog.records if r.name == "fiqa_sdk.pipeline" and r.levelno == logging.INFO]
    assert len(kept) == 1 and "face of track 1 not gated: pose unavailable" in kept[0].getMessage()
    caplog.clear()
    assert ex.main(args) == 0
    assert [r for r in caplog.records if r.levelno < logging.WARNING] == []


def test_track_timeout_reaches_the_pipelines_tracker(ex, video, tmp_path, capsys, monkeypatch):
    """--track-timeout makes the example's tracker end tracks by time, not by a frame count that varies with FPS."""
    made = {}
    real = ex.CapturePipeline

    def spy(*args, **kwargs):
        made["tracker"], made["gate"] = kwargs["tracker"], kwargs["gate"]
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "CapturePipeline", spy)
    args = ["--source", str(video), "--out", str(tmp_path / "caps"), "--display", "off", "--max-frames", "2"]
    assert ex.main(args + ["--track-timeout", "2.5", "--gate", "utility_accept=77", "--gate", "max_yaw_deg=off"]) == 0
    assert made["tracker"].max_missed_seconds == 2.5
    assert made["gate"].utility_accept == 77.0 and made["gate"].max_yaw_deg is None
    assert ex.parse_args(args).track_timeout == 1.0
    with pytest.raises(SystemExit):
        ex.parse_args(args + ["--track-timeout", "-1"])
    assert "--track-timeout must be a finite number of seconds >= 0" in capsys.readouterr().err


def test_log_rotation_options_reach_the_decision_log(ex, tmp_path, capsys):
    args = ex.parse_args(["--log", str(tmp_path / "d.jsonl"), "--log-max-mb", "0.5", "--log-backups", "3",
                          "--out", str(tmp_path / "caps")])
    _, logger = ex.open_outputs(args)
    assert (logger.max_bytes, logger.backups) == (500_000, 3)
    logger.close()
    for bad, why in ((["--log-max-mb", "1"], "need --log FILE"), (["--log", "x", "--log-max-mb", "0"], "positive"),
                     (["--log", "x", "--log-backups", "0"], ">= 1")):
        with pytest.raises(SystemExit):
            ex.parse_args(bad)
        assert why in capsys.readouterr().err


def test_contradictory_gate_overrides_are_refused_before_anything_is_opened(ex, tmp_path, capsys, monkeypatch):
    opened = []
    monkeypatch.setattr(ex, "open_source", lambda *a, **k: opened.append(a))
    log = tmp_path / "d.jsonl"
    assert ex.main(["--source", "0", "--log", str(log), "--out", str(tmp_path / "caps"),
                    "--gate", "utility_release=99"]) == 2
    assert "--gate: GateConfig.utility_release=99.0 must be <=" in capsys.readouterr().err
    assert opened == [] and not log.exists() and not (tmp_path / "caps").exists()


# -- a model or bundle that cannot be loaded, a log on a full disk -------------------------------------------------------

def test_a_model_the_engine_refuses_is_an_error_naming_bundle_file_and_engine(ex, video, tmp_path, capsys):
    from bundle_fixtures import newer_opset_bundle

    bundle = newer_opset_bundle(tmp_path / "newer")
    code = ex.main(["--source", str(video), "--bundle", str(bundle), "--backend", "onnxruntime",
                    "--out", str(tmp_path / "caps"), "--display", "off"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"error: bundle {bundle}: model file student_qdq.onnx on backend onnxruntime: "
                          "onnxruntime ") and "Opset 99" in err and "Traceback" not in err


@pytest.mark.parametrize("case", ["unreadable folder", "name too long"])
def test_a_bundle_that_cannot_be_read_is_an_error_not_a_traceback(ex, video, tmp_path, capsys, monkeypatch, case):
    import shutil

    from fs_faults import deny_reading

    from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES

    bundle = shutil.copytree(BUNDLES_DIR / DEFAULT_BUNDLES["cpu"], tmp_path / "bundle")
    if case == "unreadable folder":
        deny_reading(monkeypatch, bundle)
    else:
        bundle = tmp_path / ("b" * 300)
    code = ex.main(["--source", str(video), "--bundle", str(bundle), "--out", str(tmp_path / "caps"),
                    "--display", "off"])
    err = capsys.readouterr().err
    why = "File name too long" if case == "name too long" else "Permission denied"
    assert code == 2 and err.startswith(f"error: bundle {bundle}: cannot read ") and f"({why})" in err, err
    # --gate overrides are checked against the bundle first: the same error, not called a --gate problem
    assert ex.main(["--source", str(video), "--bundle", str(bundle), "--gate", "utility_accept=70"]) == 2
    assert capsys.readouterr().err.startswith(f"error: bundle {bundle}: cannot read ")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_log_on_a_full_disk_ends_the_run_with_its_summary_and_an_error(ex, video, retinaface_ort, tmp_path, capsys,
                                                                         monkeypatch):
    scorer = Scorer(detector=retinaface_ort, threads=1)
    closed, real_close = [], scorer.close
    scorer.close = lambda: (closed.append(True), real_close())
    monkeypatch.setattr(ex, "Scorer", lambda *a, **k: scorer)
    code = ex.main(["--source", str(video), "--out", str(tmp_path / "caps"), "--log", "/dev/full",
                    "--display", "off"])
    out, err = capsys.readouterr()
    assert code == 1, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("3 frames") and summary.endswith("stopped by end of source"), out
    assert "warning: decision log: [Errno 28] No space left on device" in out
    assert re.search(r"^error: \d+ decision log write\(s\) to /dev/full failed \(the warnings above say why\)$", err,
                     re.M) and "Traceback" not in err, err
    assert closed == [True] and "1 captures" in summary  # the capture itself went to --out
