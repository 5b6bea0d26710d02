"""Frame sources: a real video written and read back, reconnection with back-off, CSI pipeline, spec parsing."""
from __future__ import annotations

import functools
import http.server
import logging
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa_sdk import load_sample, sources
from fiqa_sdk.sources import (Backoff, Frame, ListSource, LiveSource, SourceError, SourceSpecError, StreamSource,
                              VideoFileSource, csi_pipeline, declares_frame_count, file_url_path, open_source)


def face_photos() -> list[np.ndarray]:
    """Real photos that pip packages ship, resized to one 320x240 frame size."""
    return [cv2.resize(load_sample(name), (320, 240), interpolation=cv2.INTER_AREA)
            for name in ("grace_hopper", "t1", "tom_hanks", "astronaut")]


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[str, list[np.ndarray]]:
    photos = face_photos()
    frames = [photos[i % len(photos)] for i in range(12)]
    path = str(tmp_path_factory.mktemp("video") / "faces.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    assert writer.isOpened(), "this OpenCV cannot write MJPG/AVI"
    for f in frames:
        writer.write(f)
    writer.release()
    return path, frames


def test_video_file_round_trip(video):
    path, written = video
    frames = list(open_source(path))
    assert [f.index for f in frames] == list(range(12))
    np.testing.assert_allclose([f.timestamp for f in frames], np.arange(12) / 10.0, atol=1e-6)
    for f, original in zip(frames, written):
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8
        assert np.abs(f.image.astype(int) - original).mean() < 6  # MJPG is lossy, but it is the same picture
    # The frames are distinct photos, so a reader that repeated or shuffled frames would fail the check above.
    assert np.abs(frames[0].image.astype(int) - frames[1].image).mean() > 20


def test_video_frames_unpack_as_tuples(video):
    path, _ = video
    with VideoFileSource(path) as src:
        index, timestamp, image = next(iter(src))
    assert (index, timestamp, image.shape) == (0, 0.0, (240, 320, 3))


def test_unreadable_and_missing_video(tmp_path):
    junk = tmp_path / "junk.avi"
    junk.write_bytes(os.urandom(2048))
    with pytest.raises(SourceError, match="cannot open video"):
        list(open_source(str(junk)))
    with pytest.raises(SourceError, match="does not exist"):
        VideoFileSource(tmp_path / "nope.avi")


def test_list_source_validates_and_times_frames():
    photo = face_photos()[0]
    frames = list(ListSource([photo, cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY)], fps=25))
    assert [(f.index, f.timestamp) for f in frames] == [(0, 0.0), (1, 0.04)]
    assert frames[1].image.shape == (240, 320, 3)
    with pytest.raises(ValueError, match="not an image"):
        ListSource([np.zeros(5, np.uint8)])


# -- live sources: reconnection ----------------------------------------------------------------------------------------

class FakeCapture:
    """A cv2.VideoCapture stand-in following a script: an image, None (bad frame) or False (failed read)."""

    def __init__(self, script, opened=True):
        self.script = list(script)
        self.opened = opened
        self.released = False

    def isOpened(self):
        return self.opened

    def read(self):
        item = self.script.pop(0) if self.script else False
        if item is False:
            return False, None
        return True, item

    def release(self):
        self.released = True


class FakeClock:
    def __init__(self):
        self.t = 100.0
        self.sleeps = []

    def __call__(self):
        self.t += 0.033
        return self.t

    def sleep(self, s):
        self.sleeps.append(s)
        self.t += s


def live(caps, clock, **kw) -> LiveSource:
    pending = list(caps)
    opened = []

    def opener():
        cap = pending.pop(0)
        opened.append(cap)
        return cap

    src = LiveSource(opener, "fake camera", clock=clock, sleep=clock.sleep, **kw)
    src.opened = opened
    return src


def test_camera_that_disconnects_is_reopened_with_backoff():
    photo = face_photos()[0]
    clock = FakeClock()
    first = FakeCapture([photo] * 3)  # then read() fails forever: unplugged
    down1, down2 = FakeCapture([], opened=False), FakeCapture([], opened=False)
    back = FakeCapture([photo] * 4)
    src = live([first, down1, down2, back], clock, max_bad_reads=3, backoff=Backoff(0.5, 2.0, 10.0, 5))
    frames = []
    for f in src:
        frames.append(f)
        if len(frames) == 7:
            break
    assert [f.index for f in frames] == list(range(7))
    assert all(b > a for a, b in zip([f.timestamp for f in frames], [f.timestamp for f in frames][1:]))
    assert clock.sleeps == [0.5, 1.0, 2.0]  # exponential: two failed reopen attempts, the third one works
    assert src.reconnects == 1 and src.bad_reads == 3
    assert first.released and down1.released and down2.released
    assert back.released  # leaving the loop releases the device


def test_single_bad_frames_are_skipped_without_reconnecting():
    photo = face_photos()[0]
    clock = FakeClock()
    cap = FakeCapture([photo, None, np.zeros((4,), np.uint8), photo, False, photo])
    src = live([cap], clock, max_bad_reads=3)
    frames = list(zip(range(3), src))
    assert len(frames) == 3 and src.reconnects == 0 and clock.sleeps == [] and src.bad_reads == 3


def test_gives_up_after_bounded_attempts_with_a_clear_error():
    photo = face_photos()[0]
    clock = FakeClock()
    caps = [FakeCapture([photo])] + [FakeCapture([], opened=False) for _ in range(3)]
    src = live(caps, clock, max_bad_reads=1, backoff=Backoff(1.0, 3.0, 5.0, 3))
    got = []
    with pytest.raises(SourceError, match="did not come back after 3 reconnect attempt"):
        for f in src:
            got.append(f)
    assert len(got) == 1 and clock.sleeps == [1.0, 3.0, 5.0]


def test_a_device_that_opens_but_never_delivers_still_exhausts_the_backoff():
    """A camera held by another process, or a stream that connects and sends nothing: each reopen succeeds, but
    only a good frame ends the episode, so the delays keep growing and the attempts stay bounded."""
    photo = face_photos()[0]
    clock = FakeClock()
    caps = [FakeCapture([photo])] + [FakeCapture([]) for _ in range(4)]  # open fine, every read fails
    src = live(caps, clock, max_bad_reads=2, backoff=Backoff(0.5, 2.0, 10.0, 4))
    got = []
    with pytest.raises(SourceError, match="did not come back after 4 reconnect attempt"):
        for f in src:
            got.append(f)
    assert len(got) == 1 and clock.sleeps == [0.5, 1.0, 2.0, 4.0]
    assert all(c.released for c in src.opened)


def test_a_good_frame_ends_the_reconnection_episode():
    photo = face_photos()[0]
    clock = FakeClock()
    caps = [FakeCapture([photo]), FakeCapture([photo]), FakeCapture([photo]), FakeCapture([photo])]
    src = live(caps, clock, max_bad_reads=1, backoff=Backoff(0.5, 2.0, 10.0, 2))
    assert len(list(zip(range(4), src))) == 4
    assert clock.sleeps == [0.5, 0.5, 0.5]  # each drop starts a fresh episode at the first delay


def test_initial_open_fails_fast_unless_asked_to_wait():
    photo = face_photos()[0]
    clock = FakeClock()
    with pytest.raises(SourceError, match="cannot open fake camera"):
        next(iter(live([FakeCapture([], opened=False)], clock)))
    assert clock.sleeps == []
    src = live([FakeCapture([], opened=False), FakeCapture([photo])], clock, retry_initial_open=True)
    assert next(iter(src)).index == 0 and clock.sleeps == [0.5]


def test_backoff_schedule_is_capped_and_bounded():
    assert list(Backoff(0.5, 2.0, 3.0, 6).delays()) == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    forever = Backoff(max_attempts=None).delays()
    assert [next(forever) for _ in range(8)][-1] == 10.0
    with pytest.raises(ValueError):
        Backoff(initial_s=5, max_delay_s=1)
    with pytest.raises(ValueError):
        Backoff(max_attempts=0)


# -- CSI ---------------------------------------------------------------------------------------------------------------

def test_csi_pipeline_string():
    assert csi_pipeline() == (
        "nvarguscamerasrc sensor-id=0 ! video/x-raw(memory:NVMM), width=(int)1280, height=(int)720, "
        "format=(string)NV12, framerate=(fraction)30/1 ! nvvidconv flip-method=0 ! "
        "video/x-raw, width=(int)1280, height=(int)720, format=(string)BGRx ! videoconvert ! "
        "video/x-raw, format=(string)BGR ! appsink drop=1 max-buffers=1")
    p = csi_pipeline(sensor_id=1, width=1920, height=1080, framerate=60, flip_method=2, output_width=960,
                     output_height=540)
    assert p.startswith("nvarguscamerasrc sensor-id=1 ! ")
    assert "width=(int)1920, height=(int)1080" in p and "framerate=(fraction)60/1" in p
    assert "nvvidconv flip-method=2 ! video/x-raw, width=(int)960, height=(int)540, format=(string)BGRx" in p
    with pytest.raises(ValueError, match="flip_method"):
        csi_pipeline(flip_method=8)
    with pytest.raises(ValueError, match="width"):
        csi_pipeline(width=0)


def test_csi_spec_builds_the_pipeline(monkeypatch):
    monkeypatch.setattr(sources, "opencv_has_gstreamer", lambda: True)
    src = open_source("csi://1?width=1920&height=1080&fps=60&flip=2")
    assert isinstance(src, LiveSource) and src.description == "CSI camera 1"
    assert src.target == csi_pipeline(1, 1920, 1080, 60, 2)


def test_csi_without_gstreamer_says_what_to_install(monkeypatch):
    """apt's cv2 alone does not help: the pip wheel (a dependency) shadows it, so the fix is to uninstall it."""
    monkeypatch.setattr(sources, "opencv_has_gstreamer", lambda: False)
    with pytest.raises(SourceError, match="without GStreamer") as e:
        open_source("csi://0")
    msg = str(e.value)
    assert "pip uninstall -y opencv-python-headless opencv-python" in msg
    assert "JetPack's own python3 (3.10 on JetPack 6)" in msg and "--system-site-packages" in msg
    assert "apt install" not in msg


@pytest.mark.parametrize("flip, out", [(0, (1920, 1080)), (2, (1920, 1080)), (4, (1920, 1080)), (6, (1920, 1080)),
                                       (1, (1080, 1920)), (3, (1080, 1920)), (5, (1080, 1920)), (7, (1080, 1920))])
def test_csi_rotating_flips_output_portrait(flip, out):
    """nvvidconv scales to the output caps after flipping: a 90-degree turn into landscape caps squashes it."""
    p = csi_pipeline(width=1920, height=1080, flip_method=flip)
    assert "NVMM), width=(int)1920, height=(int)1080" in p  # the sensor mode itself never changes
    assert f"flip-method={flip} ! video/x-raw, width=(int){out[0]}, height=(int){out[1]}, format=(string)BGRx" in p


def test_csi_explicit_output_size_wins_over_rotation():
    p = csi_pipeline(width=1920, height=1080, flip_method=1, output_width=640, output_height=480)
    assert "flip-method=1 ! video/x-raw, width=(int)640, height=(int)480," in p


def test_pip_opencv_without_gstreamer_refuses_csi_for_real():
    """No monkeypatching: the pip wheels are built without GStreamer, so CSI must fail with the fix named."""
    if sources.opencv_has_gstreamer():
        pytest.skip("this OpenCV has GStreamer (JetPack build); the refusal path does not apply")
    assert "GStreamer" in cv2.getBuildInformation()
    with pytest.raises(SourceError, match="without GStreamer"):
        open_source("csi://0")


# -- spec parsing ------------------------------------------------------------------------------------------------------

def test_spec_parsing_picks_the_source():
    cam = open_source("0")
    assert isinstance(cam, LiveSource) and cam.description == "camera 0" and cam.target == "0"
    assert open_source(2).description == "camera 2"
    stream = open_source("rtsp://admin:secret@10.0.0.5:554/stream1")
    assert stream.description == "stream rtsp://admin:***@10.0.0.5:554/stream1"
    assert "secret" not in repr(stream) and "secret" not in stream.target


@pytest.mark.parametrize("spec, error, match", [
    ("", SourceSpecError, "empty source spec"),
    ("-1", SourceSpecError, "must be >= 0"),
    (-3, SourceSpecError, "must be >= 0"),
    ("ftp://host/x", SourceSpecError, "unsupported source scheme 'ftp'"),
    ("rtsp://", SourceSpecError, "has no host"),
    ("csi://left", SourceSpecError, "sensor id must be a non-negative integer"),
    ("csi://0?zoom=2", SourceSpecError, "unknown CSI option 'zoom'"),
    ("csi://0?width=wide", SourceSpecError, "must be a non-negative integer"),
    ("no_such_clip.mp4", SourceSpecError, "not an existing file.*camera index"),
    ("/dev/video97", SourceError, "does not exist"),
    (3.5, SourceSpecError, "must be a string or camera index"),
])
def test_spec_errors_are_clear(spec, error, match):
    with pytest.raises(error, match=match):
        open_source(spec)


def test_file_url_is_percent_decoded():
    assert file_url_path("file:///abs/my%20clip.avi") == "/abs/my clip.avi"
    assert file_url_path("file://localhost/abs/a%23b.avi") == "/abs/a#b.avi"
    assert file_url_path("file://clips/a.avi") == "clips/a.avi"  # relative: netloc is the first path part


def test_file_urls_open_the_file(video, tmp_path, monkeypatch):
    path, _ = video
    spaced = tmp_path / "my clip.avi"
    spaced.write_bytes(Path(path).read_bytes())
    frames = list(open_source("file://" + str(spaced).replace(" ", "%20")))
    assert len(frames) == 12
    monkeypatch.chdir(tmp_path)
    rel = open_source("file://my%20clip.avi")
    assert isinstance(rel, VideoFileSource) and rel.path == "my clip.avi" and len(list(rel)) == 12


def test_folder_is_not_a_video(tmp_path):
    with pytest.raises(SourceSpecError, match="is a folder"):
        open_source(str(tmp_path))


def test_frame_is_a_named_tuple():
    f = Frame(3, 0.1, np.zeros((2, 2, 3), np.uint8))
    i, t, img = f
    assert (i, t, img.shape) == (3, 0.1, (2, 2, 3)) and f.index == 3


# -- damaged files -----------------------------------------------------------------------------------------------------

def _corrupt_frame(path: str, k: int, out: Path) -> Path:
    """A copy of an MJPG AVI whose k-th JPEG is zeroed up to its end marker (the AVI chunk headers stay intact):
    the container still declares the frame, the decoder rejects it."""
    data = bytearray(Path(path).read_bytes())
    sois = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(sois) == 12, "expected one JPEG per frame"
    end = data.rfind(b"\xff\xd9", sois[k], sois[k + 1]) + 2
    assert end > sois[k]
    data[sois[k]:end] = bytes(end - sois[k])
    out.write_bytes(data)
    return out


def _photo_of(image: np.ndarray) -> int:
    return int(np.argmin([np.abs(image.astype(int) - p).mean() for p in face_photos()]))


def test_a_corrupt_frame_is_skipped_not_the_end_of_the_file(video, tmp_path, caplog):
    path, written = video
    bad = _corrupt_frame(path, 5, tmp_path / "bad.avi")
    with caplog.at_level(logging.WARNING, logger="fiqa_sdk.sources"):
        frames = list(open_source(str(bad)))
    assert len(frames) == 11, [f.timestamp for f in frames]  # it used to stop at 5
    assert [f.index for f in frames] == list(range(11))
    # container time: the skipped frame leaves its gap
    np.testing.assert_allclose([f.timestamp for f in frames], [t / 10 for t in range(12) if t != 5], atol=1e-6)
    for f in frames:  # every delivered picture is the one written at its timestamp
        assert _photo_of(f.image) == round(f.timestamp * 10) % 4
    assert "skipped 1 undecodable frame(s); 11 delivered" in caplog.text
    assert "ended early" not in caplog.text  # the file ran to its last frame


class CountedCapture(FakeCapture):
    """A fake capture that reports container properties, so the file reader's end-of-file logic can be driven."""

    def __init__(self, script, total, fps=10.0):
        super().__init__(script)
        self.total, self.fps, self.pos, self.reads = total, fps, 0, 0

    def read(self):
        self.reads += 1
        ok, img = super().read()
        self.pos += ok
        return ok, img

    def get(self, prop):
        return {cv2.CAP_PROP_FRAME_COUNT: self.total, cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_POS_FRAMES: self.pos,
                cv2.CAP_PROP_POS_MSEC: 1000.0 * (self.pos - 1) / self.fps}.get(prop, 0.0)


def test_failed_reads_past_the_declared_frames_end_the_file_at_once(video):
    path, _ = video
    photo = face_photos()[0]
    cap = CountedCapture([photo] * 3, total=3)
    frames = list(VideoFileSource(path, opener=lambda p: cap))
    assert len(frames) == 3 and cap.reads == 4 and cap.released  # a healthy end costs one failed read


def test_a_file_that_keeps_failing_gives_up_after_max_bad_reads(video, caplog):
    path, _ = video
    photo = face_photos()[0]
    cap = CountedCapture([photo] * 2, total=50)  # declares 50 frames, delivers 2, then every read fails
    with caplog.at_level(logging.WARNING, logger="fiqa_sdk.sources"):
        frames = list(VideoFileSource(path, opener=lambda p: cap, max_bad_reads=4))
    assert len(frames) == 2 and cap.reads == 2 + 4
    assert "ended early at frame 2 of the 50 its container declares, after 4 failed read(s)" in caplog.text
    with pytest.raises(ValueError, match="max_bad_reads"):
        VideoFileSource(path, max_bad_reads=0)


# -- http(s): live stream or a video file served over HTTP -------------------------------------------------------------

@pytest.fixture()
def http_dir(tmp_path):
    """A local HTTP server (port 0, own thread) serving tmp_path; yields (folder, base URL)."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_a_video_file_over_http_ends_at_its_end_in_container_time(video, http_dir):
    path, written = video
    folder, base = http_dir
    (folder / "faces.avi").write_bytes(Path(path).read_bytes())
    src = open_source(f"{base}/faces.avi", backoff=Backoff(0.01, 1.0, 0.01, 1))
    assert isinstance(src, StreamSource)
    frames = list(zip(range(40), src))  # a looping source would run to the 40 cap
    assert len(frames) == 12 and src.finite is True and src.reconnects == 0
    np.testing.assert_allclose([f.timestamp for _, f in frames], np.arange(12) / 10.0, atol=1e-6)
    assert [_photo_of(f.image) for _, f in frames] == [i % 4 for i in range(12)]


class _MultipartHandler(http.server.BaseHTTPRequestHandler):
    """An IP camera's endless MJPEG endpoint (multipart/x-mixed-replace), cut after 300 parts."""

    def do_GET(self):
        jpg = cv2.imencode(".jpg", face_photos()[0])[1].tobytes()
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        try:
            for _ in range(300):
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
                                 + jpg + b"\r\n")
                time.sleep(0.01)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_a_live_http_stream_stays_live():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MultipartHandler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        src = open_source(f"http://127.0.0.1:{server.server_address[1]}/video")
        frames = [f for _, f in zip(range(5), src)]
    finally:
        server.shutdown()
        server.server_close()
    assert len(frames) == 5 and src.finite is False  # no frame count: read as a live stream, wall-clock time


class MediaCapture(FakeCapture):
    def __init__(self, script, count):
        super().__init__(script)
        self.count = count

    def get(self, prop):
        return self.count if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0


def test_finite_media_is_told_from_a_live_stream_by_its_frame_count():
    assert declares_frame_count(MediaCapture([], 12))
    assert not declares_frame_count(MediaCapture([], 0))
    assert not declares_frame_count(MediaCapture([], -9.2e18))  # FFmpeg's count for a stream without duration
    assert not declares_frame_count(FakeCapture([]))  # no get(): nothing declared
    photo = face_photos()[0]

    def stream(first: FakeCapture, detect: bool) -> StreamSource:
        clock = FakeClock()
        caps = iter([first, FakeCapture([], opened=False)])  # delivers 3 frames, then does not come back
        src = StreamSource(lambda: next(caps), "fake stream", detect_media=detect, clock=clock, sleep=clock.sleep,
                           max_bad_reads=1, backoff=Backoff(0.5, 2.0, 10.0, 1))
        src.sleeps = clock.sleeps
        return src

    live_src = stream(MediaCapture([photo] * 3, -1), detect=True)
    with pytest.raises(SourceError, match="did not come back"):
        list(live_src)  # live: the end of data is a drop, so it tries to reconnect
    assert live_src.finite is False and live_src.sleeps == [0.5]
    finite = stream(MediaCapture([photo] * 3, 3), detect=True)
    assert len(list(finite)) == 3 and finite.finite is True and finite.sleeps == [] and finite.reconnects == 0
    rtsp = stream(MediaCapture([photo] * 3, 3), detect=False)
    with pytest.raises(SourceError, match="did not come back"):
        list(rtsp)  # detection off (rtsp://): always live
    assert rtsp.finite is False


# -- open-failure messages ---------------------------------------------------------------------------------------------

def test_open_failure_names_the_python_keyword_and_the_cli_flag():
    clock = FakeClock()
    with pytest.raises(SourceError) as e:
        next(iter(live([FakeCapture([], opened=False)], clock)))
    assert "retry_initial_open=True" in str(e.value) and "--wait-for-source" in str(e.value)
    assert "no other process holds the device" in str(e.value)  # a local camera can be busy


def test_stream_open_failure_does_not_blame_another_process():
    clock = FakeClock()
    src = StreamSource(lambda: FakeCapture([], opened=False), "stream rtsp://10.0.0.5/s", clock=clock,
                       sleep=clock.sleep)
    with pytest.raises(SourceError, match="cannot open stream rtsp://10.0.0.5/s") as e:
        next(iter(src))
    msg = str(e.value)
    assert "other process" not in msg and "URL" in msg and "--wait-for-source" in msg
    assert isinstance(open_source("https://cam.local/live.m3u8"), StreamSource)


def test_camera_asks_the_driver_for_a_short_queue(monkeypatch):
    """A webcam's driver queues frames; a busy loop would score stale ones. One frame by default, or as asked."""
    from fiqa_sdk import sources

    calls = []

    class Cam:
        def __init__(self, *args):
            calls.append(("open", args))

        isOpened = lambda self: True

        def set(self, prop, value):
            calls.append((prop, value))
            return True

        release = lambda self: None

    monkeypatch.setattr(sources.cv2, "VideoCapture", Cam)
    sources.camera_source(0, width=640)._opener()
    assert (sources.cv2.CAP_PROP_BUFFERSIZE, 1.0) in calls and (sources.cv2.CAP_PROP_FRAME_WIDTH, 640.0) in calls
    calls.clear()
    sources.camera_source(0, buffer_frames=None)._opener()
    assert [c for c in calls if c[0] != "open"] == []
    with pytest.raises(ValueError, match="buffer_frames must be >= 1"):
        sources.camera_source(0, buffer_frames=0)


# -- camera paths: any character device -------------------------------------------------------------------------------

def test_a_udev_symlink_to_a_character_device_is_a_camera(tmp_path):
    """/dev/v4l/by-id/...-video-index0 is a symlink to /dev/videoN: a camera, not a video file. /dev/null stands in
    for the device node: it is a character device on every Linux."""
    by_id = tmp_path / "usb-Logitech_C920_1234-video-index0"
    by_id.symlink_to("/dev/null")
    src = open_source(str(by_id))
    assert isinstance(src, LiveSource) and src.target == str(by_id)
    with pytest.raises(SourceError, match="is a character device.*open it as a camera"):
        VideoFileSource(by_id)


def test_a_v4l_name_not_plugged_in_yet_is_a_camera_to_wait_for():
    missing = "/dev/v4l/by-id/usb-Not_Plugged_In-video-index0"
    with pytest.raises(SourceError, match=r"camera device .* does not exist.*wait=True"):
        open_source(missing)
    assert isinstance(open_source(missing, wait=True), LiveSource)


def test_a_path_that_is_neither_a_file_nor_a_device_says_so(tmp_path):
    fifo = tmp_path / "frames.pipe"
    os.mkfifo(fifo)
    with pytest.raises(SourceSpecError, match="exists but is not a regular file"):
        open_source(str(fifo))
    with pytest.raises(SourceError, match="exists but is not a regular file"):
        VideoFileSource(fifo)


# -- close(): the way to stop a source, from any thread ----------------------------------------------------------------

def test_close_after_a_frame_ends_the_iteration_without_reopening():
    photo = face_photos()[0]
    clock = FakeClock()
    cap = FakeCapture([photo] * 5)
    src = live([cap, FakeCapture([photo])], clock)
    it = iter(src)
    assert next(it).index == 0
    src.close()
    assert list(it) == [] and cap.released and len(src.opened) == 1 and src.closed
    with pytest.raises(SourceError, match="was closed; open a new source"):  # closed stays closed, and says so
        iter(src)
    assert len(src.opened) == 1


def test_close_during_a_reconnection_back_off_ends_it_cleanly():
    photo = face_photos()[0]
    clock = FakeClock()
    src = live([FakeCapture([photo]), FakeCapture([photo])], clock, max_bad_reads=1)

    def close_while_waiting(delay):  # what close() from another thread does to a source backing off
        clock.sleeps.append(delay)
        src.close()

    src._sleep = close_while_waiting
    assert [f.index for f in src] == [0]  # StopIteration, not SourceError, and no reopen after close
    assert clock.sleeps == [0.5] and len(src.opened) == 1 and src.reconnects == 0


def test_close_during_the_last_back_off_wait_is_a_clean_end_not_a_lost_source():
    photo = face_photos()[0]
    clock = FakeClock()
    src = live([FakeCapture([photo]), FakeCapture([photo])], clock, max_bad_reads=1,
               backoff=Backoff(initial_s=0.5, max_attempts=1))

    def close_while_waiting(delay):
        clock.sleeps.append(delay)
        src.close()

    src._sleep = close_while_waiting
    assert [f.index for f in src] == [0]  # no SourceError("did not come back after 1 reconnect attempt")
    assert clock.sleeps == [0.5] and len(src.opened) == 1


def test_close_from_another_thread_neither_waits_for_nor_releases_under_a_read():
    photo = face_photos()[0]
    events: list[str] = []
    reading, proceed = threading.Event(), threading.Event()

    class BlockingCapture(FakeCapture):
        def read(self):
            if len(events) == 1:  # the second read blocks, like a camera waiting for its next frame
                reading.set()
                proceed.wait()
            events.append("read")
            return True, photo

        def release(self):
            events.append("release")
            super().release()

    src = LiveSource(lambda: BlockingCapture([]), "blocking camera")
    got: list = []
    consumer = threading.Thread(target=lambda: got.extend(src))
    consumer.start()
    reading.wait()
    closer = threading.Thread(target=src.close)
    closer.start()
    closer.join(timeout=60)  # close() returns while the read still blocks (a dead CSI pipeline may never return)
    assert not closer.is_alive() and events == ["read"] and src.closed
    proceed.set()
    consumer.join()
    assert events == ["read", "read", "release"]  # never released under a read: the reading thread released it
    assert [f.index for f in got] == [0, 1]  # then the loop ended cleanly, no AttributeError on a released device


def test_close_wakes_a_live_source_waiting_out_its_back_off():
    """With the default sleep, close() cuts a long back-off short: a service stopping a camera loop that waits for
    its device (--wait-for-source) does not hang until the next attempt."""
    photo = face_photos()[0]
    backing_off = threading.Event()

    class Noticed(logging.Handler):
        def emit(self, record):
            if "reconnect attempt 1" in record.getMessage():
                backing_off.set()

    handler = Noticed()
    logging.getLogger("fiqa_sdk.sources").addHandler(handler)
    caps = iter([FakeCapture([photo]), FakeCapture([photo])])
    src = LiveSource(lambda: next(caps), "waiting camera", max_bad_reads=1,
                     backoff=Backoff(initial_s=3600.0, max_delay_s=3600.0, max_attempts=None))
    got: list = []
    consumer = threading.Thread(target=lambda: got.extend(src), daemon=True)
    try:
        consumer.start()
        backing_off.wait()
        src.close()
        consumer.join(timeout=60)  # a bound against hanging, not a speed check: the back-off is an hour
    finally:
        logging.getLogger("fiqa_sdk.sources").removeHandler(handler)
    assert not consumer.is_alive() and [f.index for f in got] == [0]


def test_a_closed_video_file_ends_without_calling_the_file_damaged(video, caplog):
    path, _ = video
    src = VideoFileSource(path)
    it = iter(src)
    with caplog.at_level(logging.INFO, logger="fiqa_sdk.sources"):
        assert next(it).index == 0
        src.close()
        assert list(it) == []
    assert "damaged" not in caplog.text and "undecodable" not in caplog.text and "ended early" not in caplog.text


def test_closing_an_in_memory_source_stops_its_iteration_too():
    src = ListSource(face_photos()[:3])
    it = iter(src)
    assert next(it).index == 0
    src.close()
    assert list(it) == []
