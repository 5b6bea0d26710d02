"""Frame sources behind one interface: iterate to get ``Frame(index, timestamp, image)`` with BGR uint8 images.

``open_source("0" | "/dev/video1" | "clip.mp4" | "rtsp://..." | "csi://0?width=1920&height=1080")`` picks the
source from a spec string. Live sources (cameras, streams, Jetson CSI) survive a disconnect or a run of bad
frames by reopening with bounded exponential back-off, logging each attempt; a video file (also one served over
http(s)://) skips an undecodable frame, ends at its last frame and is timed by the container. Indexes keep
counting across reconnects and timestamps never go backwards, so the tracker and the capture gate downstream see
one continuous stream. :meth:`FrameSource.close` stops a source, also from another thread: its iteration then
ends cleanly (``StopIteration``) at the next frame.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence
from urllib.parse import parse_qsl, urlsplit
from urllib.request import url2pathname

import cv2
import numpy as np

from fiqa_sdk.frames import FrameError, to_bgr

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")
MEDIA_SCHEMES = ("http", "https")  # URLs that may name a finite video file rather than a live stream
WAIT_HINT = ("to wait for it, use open_source(spec, wait=True) or retry_initial_open=True in Python, or "
             "--wait-for-source in the capture_gate CLI")


class SourceError(RuntimeError):
    """A source could not be opened, or a live source did not come back within its retry budget."""


class SourceSpecError(ValueError):
    """A source spec string that names no source we can open."""


class Frame(NamedTuple):
    index: int
    timestamp: float  # seconds: media time for files, time since start for live sources
    image: np.ndarray  # HxWx3 uint8 BGR


class CaptureLike(Protocol):
    """The part of ``cv2.VideoCapture`` the sources use (tests inject fakes with this shape)."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: ``initial_s * factor**k`` capped at ``max_delay_s``.

    ``max_attempts`` bounds one reconnection episode (``None``: retry forever, for unattended kiosks).
    """

    initial_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 10.0
    max_attempts: int | None = 10

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_delay_s < self.initial_s or self.factor < 1:
            raise ValueError(f"invalid back-off {self}: need 0 <= initial_s <= max_delay_s and factor >= 1")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")

    def delays(self) -> Iterator[float]:
        delay, k = self.initial_s, 0
        while self.max_attempts is None or k < self.max_attempts:
            yield min(delay, self.max_delay_s)
            delay *= self.factor
            k += 1


class FrameSource:
    """Iterable of :class:`Frame`. Use as a context manager (or call :meth:`close`) to release the device; close()
    is also how another thread stops a capture loop that is iterating the source."""

    description = "?"

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Stop the source and release the underlying device; iteration already releases it when it ends."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class ListSource(FrameSource):
    """Frames held in memory (tests, replaying a burst); timestamps are ``index / fps``."""

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 30.0):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self._frames = [to_bgr(f) for f in frames]
        self.fps = float(fps)
        self.description = f"{len(self._frames)} in-memory frames"
        self._stop = threading.Event()

    def __iter__(self) -> Iterator[Frame]:
        for i, f in enumerate(self._frames):
            if self._stop.is_set():
                return
            yield Frame(i, i / self.fps, f)

    def close(self) -> None:
        """Stop an iteration under way (like every source's close); the frames stay in memory."""
        self._stop.set()


class _CaptureSource(FrameSource):
    """A source backed by one OpenCV-style capture object, which only the iterating thread reads (or reopens).

    Each step of the iteration runs under a lock that :meth:`close` takes too, so a close from another thread never
    releases the capture under a read in progress; the iteration sees the source closed before its next step and
    ends with ``StopIteration`` instead of reading a released (or reopened) device.
    """

    def __init__(self) -> None:
        self._cap: CaptureLike | None = None
        self._lock = threading.RLock()
        self._stop = threading.Event()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop iterating and release the device, from this thread or another (how a service or UI stops a capture
        loop). Returns at once: when a read, an open or a back-off is under way in the iterating thread (a dead
        CSI pipeline can block a read for good), that thread releases the device as soon as the step ends, and the
        iteration then ends cleanly; a back-off under way is cut short. A closed source stays closed: iterating it
        again raises :class:`SourceError`; open a new one."""
        self._stop.set()
        if self._lock.acquire(blocking=False):  # never wait on a step that may block; its thread releases instead
            try:
                if self._cap is not None:
                    self._cap.release()
                    self._cap = None
            finally:
                self._lock.release()

    def _check_open(self) -> None:
        if self._stop.is_set():
            raise SourceError(f"{self.description} was closed; open a new source to read it again")

    def _release(self) -> None:
        """Release the capture (end of iteration, before a reopen, or close) without closing the source."""
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None

    def _guarded(self, frames: Iterator[Frame]) -> Iterator[Frame]:
        """``frames``, each step taken under the lock and only while the source is open."""
        try:
            while True:
                with self._lock:
                    if self._stop.is_set():
                        return
                    try:
                        frame = next(frames)
                    except StopIteration:
                        return
                yield frame
        finally:
            with self._lock:
                frames.close()


def _cap_get(cap: CaptureLike, prop: int) -> float:
    """A capture property, or 0.0 when the capture (a test fake) or its backend does not report it."""
    get = getattr(cap, "get", None)
    if get is None:
        return 0.0
    try:
        return float(get(prop) or 0.0)
    except (cv2.error, TypeError, ValueError):
        return 0.0


def declares_frame_count(cap: CaptureLike) -> bool:
    """Whether an open capture is finite media: FFmpeg reports a frame count only for a file (also one served
    over HTTP); for a live stream it has no duration and reports 0 or a negative count."""
    return _cap_get(cap, cv2.CAP_PROP_FRAME_COUNT) > 0


def _read_image(cap: CaptureLike) -> tuple[np.ndarray | None, str]:
    """One frame as BGR uint8, or ``None`` and what went wrong."""
    try:
        ok, raw = cap.read()
        if not ok or raw is None:
            return None, "read failed"
        return to_bgr(raw), ""
    except (FrameError, cv2.error) as e:
        return None, f"bad frame ({e})"


def media_frames(cap: CaptureLike, name: str, max_bad_reads: int = 30,
                 stopped: Callable[[], bool] = lambda: False) -> Iterator[Frame]:
    """Frames of finite media (a file, local or over HTTP) in container time, until its end.

    While the container says frames remain (``FRAME_COUNT``; a failed read consumes a frame that OpenCV's
    ``POS_FRAMES`` does not count), up to ``max_bad_reads`` failed reads in a row are skipped rather than ending
    the file at its first damaged frame; a warning says how many frames were skipped and whether the file ended
    before its declared length. ``stopped``: the caller closed the source, so reading ends there (and reads that
    failed since then do not make the file look damaged). The caller releases ``cap``.
    """
    fps = _cap_get(cap, cv2.CAP_PROP_FPS)
    total = _cap_get(cap, cv2.CAP_PROP_FRAME_COUNT)
    step = 1.0 / fps if fps > 0 else 1.0 / 30.0
    index, last, bad, skipped, problem = 0, -np.inf, 0, 0, ""
    try:
        while not stopped():
            image, why = _read_image(cap)
            if image is None:
                bad, problem = bad + 1, why
                if bad < max_bad_reads and _cap_get(cap, cv2.CAP_PROP_POS_FRAMES) + skipped + bad < total:
                    log.info("%s: skipped an undecodable frame (%s)", name, why)
                    continue  # frames remain: skip this one
                return
            skipped += bad
            bad = 0
            pos = _cap_get(cap, cv2.CAP_PROP_POS_MSEC) / 1000.0
            # Container time when the backend reports it, else one frame period after the previous frame.
            t = pos if pos > last else (0.0 if index == 0 else last + step)
            last = t
            yield Frame(index, t, image)
            index += 1
    finally:
        consumed = _cap_get(cap, cv2.CAP_PROP_POS_FRAMES) + skipped
        _report_media_end(name, index, skipped, 0 if stopped() else bad, problem, consumed, total)


def _report_media_end(name: str, delivered: int, skipped: int, bad: int, problem: str, consumed: float,
                      total: float) -> None:
    """Warn about damage seen in a file, so a short capture run is not mistaken for a short video."""
    if skipped:
        log.warning("%s: skipped %d undecodable frame(s); %d delivered", name, skipped, delivered)
    if bad and total > 0 and consumed < total:
        log.warning("%s: ended early at frame %d of the %d its container declares, after %d failed read(s) in a "
                    "row (last: %s): the file is damaged or cut off, or its connection dropped", name,
                    int(consumed), int(total), bad, problem)


class VideoFileSource(_CaptureSource):
    """A video file. Skips undecodable frames while the container says more follow (up to ``max_bad_reads`` in
    a row) and ends at the end of the file: a file does not come back by waiting."""

    def __init__(self, path: str | os.PathLike, opener: Callable[[str], CaptureLike] | None = None,
                 max_bad_reads: int = 30):
        super().__init__()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise SourceError(_not_a_video_file(self.path))
        if max_bad_reads < 1:
            raise ValueError(f"max_bad_reads must be >= 1, got {max_bad_reads}")
        self._opener = opener or (lambda p: cv2.VideoCapture(p))
        self.max_bad_reads = int(max_bad_reads)
        self.description = self.path

    def __iter__(self) -> Iterator[Frame]:
        self._check_open()
        return self._guarded(self._frames())

    def _frames(self) -> Iterator[Frame]:
        cap = self._opener(self.path)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"OpenCV cannot open video {self.path!r}: unsupported container/codec or a damaged "
                              "file (pip OpenCV reads MJPG/AVI and H.264/MP4 through FFmpeg)")
        self._cap = cap
        try:
            yield from media_frames(cap, self.path, self.max_bad_reads, self._stop.is_set)
        finally:
            self._release()


class LiveSource(_CaptureSource):
    """A camera or stream that may drop out: bad reads are skipped, and after ``max_bad_reads`` in a row the
    device is reopened with :class:`Backoff`. Raises :class:`SourceError` once a reconnection episode exhausts
    ``backoff.max_attempts``. ``retry_initial_open``: also wait for a device that is not there at start (an IP
    camera still booting); off by default, because at start a failure is usually a wrong index or URL.
    """

    check_hint = "check the cable and the index/path, and that no other process holds the device"

    def __init__(self, opener: Callable[[], CaptureLike], description: str, backoff: Backoff | None = None,
                 max_bad_reads: int = 5, retry_initial_open: bool = False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None,
                 target: str = ""):
        super().__init__()
        if max_bad_reads < 1:
            raise ValueError(f"max_bad_reads must be >= 1, got {max_bad_reads}")
        self._opener = opener
        self.description = description
        self.target = target  # what the opener opens (index, URL without password, GStreamer pipeline)
        self.backoff = backoff or Backoff()
        self.max_bad_reads = int(max_bad_reads)
        self.retry_initial_open = bool(retry_initial_open)
        self._clock = clock
        self._sleep = sleep if sleep is not None else self._stop.wait  # default: a back-off close() cuts short
        self.reconnects = 0
        self.bad_reads = 0
        self._episode: Iterator[float] | None = None  # back-off delays of the reconnection under way
        self._episode_attempts = 0

    def _try_open(self) -> CaptureLike | None:
        try:
            cap = self._opener()
        except cv2.error as e:
            log.warning("%s: open failed: %s", self.description, e)
            return None
        if cap.isOpened():
            return cap
        cap.release()
        return None

    def _reopen(self, why: str) -> CaptureLike | None:
        """Reopen within the current reconnection episode; ``None`` once the source is closed. An episode ends only
        with a good frame (see ``_live_frames``), not with a device that opens: one that opens but never delivers (a
        camera held by another process, a stream that connects and sends nothing) keeps backing off until
        ``max_attempts``."""
        if self._episode is None:
            self._episode, self._episode_attempts = self.backoff.delays(), 0
        for delay in self._episode:
            if self._stop.is_set():
                return None
            self._episode_attempts += 1
            log.warning("%s: %s; reconnect attempt %d in %.1f s", self.description, why, self._episode_attempts,
                        delay)
            self._sleep(delay)
            cap = None if self._stop.is_set() else self._try_open()
            if cap is not None:
                self.reconnects += 1
                log.warning("%s: reopened after %d attempt(s)", self.description, self._episode_attempts)
                return cap
        if self._stop.is_set():  # closed during the last wait: a clean end, not a lost source
            return None
        raise SourceError(f"{self.description}: {why}, and it did not come back after {self._episode_attempts} "
                          f"reconnect attempt(s); {self.check_hint}, or raise Backoff.max_attempts "
                          f"(--wait-for-source in the capture_gate CLI retries forever)")

    def _open_first(self) -> CaptureLike | None:
        """The first open: fail fast (a wrong index or URL), or back off when asked to wait for the device;
        ``None`` when the source was closed meanwhile."""
        self._episode = None
        cap = self._try_open()
        if cap is None:
            if not self.retry_initial_open:
                raise SourceError(f"cannot open {self.description}; {self.check_hint} ({WAIT_HINT})")
            cap = self._reopen("not available at start")
        return cap

    def __iter__(self) -> Iterator[Frame]:
        self._check_open()
        return self._guarded(self._frames())

    def _frames(self) -> Iterator[Frame]:
        cap = self._open_first()
        if cap is not None:
            yield from self._live_frames(cap)

    def _live_frames(self, cap: CaptureLike) -> Iterator[Frame]:
        """Frames in wall-clock time since the first one, reopening the device when reads keep failing."""
        self._cap = cap
        t0 = self._clock()
        index, last, bad = 0, -np.inf, 0
        try:
            while not self._stop.is_set():
                image, problem = _read_image(self._cap)
                if image is None:
                    bad += 1
                    self.bad_reads += 1
                    log.info("%s: skipped a bad read (%d in a row): %s", self.description, bad, problem)
                    if bad >= self.max_bad_reads:
                        self._release()
                        self._cap = self._reopen(f"{bad} bad reads in a row, last: {problem}")
                        if self._cap is None:
                            return
                        bad = 0
                    continue
                bad = 0
                self._episode = None  # a good frame ends a reconnection episode
                t = max(self._clock() - t0, last)
                last = t
                yield Frame(index, t, image)
                index += 1
        finally:
            self._release()


def camera_source(device: int | str, width: int | None = None, height: int | None = None,
                  fps: float | None = None, buffer_frames: int | None = 1, **live: Any) -> LiveSource:
    """A local camera by index (``0``) or V4L2 device path (``/dev/video0``, or a stable name such as
    ``/dev/v4l/by-id/usb-...-video-index0``, a symlink to one); size/fps are requests the driver may
    round to a supported mode. ``buffer_frames``: frames the driver may queue (default 1: V4L2 otherwise queues
    ~4, so a busy loop scores frames a few hundred ms old; ``None`` leaves the driver's default)."""
    if buffer_frames is not None and buffer_frames < 1:
        raise ValueError(f"buffer_frames must be >= 1 or None, got {buffer_frames}")

    def opener() -> CaptureLike:
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2) if isinstance(device, str) else cv2.VideoCapture(int(device))
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps), (cv2.CAP_PROP_BUFFERSIZE, buffer_frames)):
            if value is not None and cap.isOpened():
                cap.set(prop, float(value))
        return cap

    return LiveSource(opener, f"camera {device}", target=str(device), **live)


class StreamSource(LiveSource):
    """A network URL. A live stream reconnects like any :class:`LiveSource`; an http(s) URL whose capture declares
    a frame count is a video file served over HTTP (``finite`` becomes True): it is read like
    :class:`VideoFileSource`, in container time, and ends at its end instead of reconnecting, which would replay
    it from frame 0 forever."""

    check_hint = "check the URL and credentials, and that the camera/server is up and reachable from here"

    def __init__(self, opener: Callable[[], CaptureLike], description: str, detect_media: bool = False,
                 max_bad_media_reads: int = 30, **live: Any):
        super().__init__(opener, description, **live)
        if max_bad_media_reads < 1:
            raise ValueError(f"max_bad_media_reads must be >= 1, got {max_bad_media_reads}")
        self.detect_media = bool(detect_media)
        self.max_bad_media_reads = int(max_bad_media_reads)
        self.finite: bool | None = None  # known after the first open

    def _frames(self) -> Iterator[Frame]:
        cap = self._open_first()
        if cap is None:
            return
        self.finite = self.detect_media and declares_frame_count(cap)
        if not self.finite:
            yield from self._live_frames(cap)
            return
        self._cap = cap
        try:
            yield from media_frames(cap, self.description, self.max_bad_media_reads, self._stop.is_set)
        finally:
            self._release()


def stream_source(url: str, timeout_s: float = 5.0, **live: Any) -> StreamSource:
    """A network stream through FFmpeg, with open/read timeouts so a dead camera is noticed in seconds, not at
    FFmpeg's default of 30 s. An http(s) URL may also be a video file: see :class:`StreamSource`."""
    ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    detect = urlsplit(url).scheme.lower() in MEDIA_SCHEMES
    return StreamSource(lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params), f"stream {_redact(url)}",
                        detect_media=detect, target=_redact(url), **live)


def _redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


ROTATING_FLIPS = (1, 3, 5, 7)  # nvvidconv flip methods that swap width and height


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, framerate: int = 30,
                 flip_method: int = 0, output_width: int | None = None, output_height: int | None = None) -> str:
    """GStreamer pipeline for a Jetson MIPI-CSI camera through the Argus ISP (``nvarguscamerasrc``).

    The ISP hands NV12 frames in NVMM (hardware) memory; ``nvvidconv`` flips/scales them and copies to system
    memory as BGRx, ``videoconvert`` drops the pad byte to BGR for OpenCV. ``appsink drop=1 max-buffers=1``
    keeps only the newest frame, so a slow consumer sees fresh frames instead of a growing backlog (``drop``
    alone does nothing while ``max-buffers`` is unlimited). ``flip_method``: 0 none, 1 rotate 90 ccw, 2 rotate
    180, 3 rotate 90 cw, 4 horizontal flip, 5 upper-right diagonal, 6 vertical flip, 7 upper-left diagonal.
    The odd methods turn the image by 90 degrees, so the default output size is the sensor size transposed
    (portrait), or ``nvvidconv`` would squash the rotated image back into landscape.
    """
    for name, v in (("sensor_id", sensor_id), ("width", width), ("height", height), ("framerate", framerate)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "sensor_id" else 1):
            raise ValueError(f"csi {name} must be a {'non-negative' if name == 'sensor_id' else 'positive'} "
                             f"integer, got {v!r}")
    if isinstance(flip_method, bool) or not isinstance(flip_method, int) or not 0 <= flip_method <= 7:
        raise ValueError(f"csi flip_method must be an integer 0..7, got {flip_method!r}")
    rotated = flip_method in ROTATING_FLIPS
    out_w = output_width or (height if rotated else width)
    out_h = output_height or (width if rotated else height)
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, format=(string)NV12, "
            f"framerate=(fraction){framerate}/1 ! "
            f"nvvidconv flip-method={flip_method} ! "
            f"video/x-raw, width=(int){out_w}, height=(int){out_h}, format=(string)BGRx ! "
            "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=1 max-buffers=1")


def opencv_has_gstreamer() -> bool:
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1]
    return False


def csi_source(sensor_id: int = 0, width: int = 1280, height: int = 720, framerate: int = 30,
               flip_method: int = 0, **live: Any) -> LiveSource:
    """A Jetson CSI camera. Needs an OpenCV built with GStreamer (JetPack's own cv2); the pip wheels are built
    without it, and an installed wheel shadows JetPack's cv2 even in a --system-site-packages venv."""
    pipeline = csi_pipeline(sensor_id, width, height, framerate, flip_method)
    if not opencv_has_gstreamer():
        raise SourceError(f"OpenCV {cv2.__version__} here is built without GStreamer, so it cannot open CSI "
                          "cameras; use JetPack's cv2 (built with GStreamer): make the venv with JetPack's own "
                          "python3 (3.10 on JetPack 6) and --system-site-packages, then run `pip uninstall -y "
                          "opencv-python-headless opencv-python` in it so the pip wheel no longer shadows it")
    return LiveSource(lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), f"CSI camera {sensor_id}",
                      target=pipeline, **live)


_CSI_QUERY = {"width": "width", "height": "height", "fps": "framerate", "framerate": "framerate",
              "flip": "flip_method", "flip_method": "flip_method"}

_SPEC_HELP = ("use a camera index ('0'), a V4L2 device ('/dev/video0', '/dev/v4l/by-id/...'), a video file path, "
              "a stream URL (rtsp://, rtsps://, rtmp://, http(s)://) or a Jetson CSI camera "
              "('csi://0?width=1920&height=1080&fps=30&flip=0')")


def _csi_from_spec(spec: str, options: dict[str, Any]) -> LiveSource:
    parts = urlsplit(spec)
    sensor = parts.netloc or parts.path.lstrip("/")
    if not sensor.isdigit():
        raise SourceSpecError(f"{spec!r}: the CSI sensor id must be a non-negative integer, as in 'csi://0'")
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _CSI_QUERY:
            raise SourceSpecError(f"{spec!r}: unknown CSI option {key!r}; known: {sorted(_CSI_QUERY)}")
        if not value.isdigit():
            raise SourceSpecError(f"{spec!r}: CSI option {key}={value!r} must be a non-negative integer")
        kwargs[_CSI_QUERY[key]] = int(value)
    return csi_source(int(sensor), **{**kwargs, **options})


def file_url_path(url: str) -> str:
    """The local path a ``file://`` URL names, percent-decoded: ``file:///abs/my%20clip.avi`` is
    ``/abs/my clip.avi``, ``file://clips/a.avi`` the relative ``clips/a.avi``, ``file://localhost/x`` ``/x``."""
    parts = urlsplit(url)
    netloc = "" if parts.netloc.lower() == "localhost" else parts.netloc
    return url2pathname(netloc + parts.path)


def open_source(spec: str | int, wait: bool = False, **options: Any) -> FrameSource:
    """Open a source from a spec string (see module docstring); ``options`` go to the chosen source.

    ``wait``: a live source (camera, stream, CSI) that is not up yet is waited for, and one that is lost is retried
    for ever (``retry_initial_open=True``, its back-off with ``max_attempts=None``); a camera device path that does not
    exist yet is accepted. A video file is unaffected: it does not come back by waiting.
    Raises :class:`SourceSpecError` for a spec that names nothing openable, with the accepted forms.
    """
    source = _open_source(spec, bool(wait), options)
    if wait and isinstance(source, LiveSource):
        source.retry_initial_open = True
        source.backoff = dataclasses.replace(source.backoff, max_attempts=None)  # the caller's timings stay
    return source


def _open_source(spec: str | int, wait: bool, options: dict[str, Any]) -> FrameSource:
    if isinstance(spec, bool) or not isinstance(spec, (str, int, os.PathLike)):
        raise SourceSpecError(f"source spec must be a string or camera index, got {type(spec).__name__}; "
                              + _SPEC_HELP)
    if isinstance(spec, int):
        if spec < 0:
            raise SourceSpecError(f"camera index must be >= 0, got {spec}")
        return camera_source(spec, **options)
    text = os.fspath(spec).strip()
    if not text:
        raise SourceSpecError("empty source spec; " + _SPEC_HELP)
    if text.isdigit():
        return camera_source(int(text), **options)
    if text.lstrip("-").isdigit():
        raise SourceSpecError(f"camera index must be >= 0, got {text}")
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme == "csi":
            return _csi_from_spec(text, options)
        if scheme in STREAM_SCHEMES:
            if not urlsplit(text).hostname:
                raise SourceSpecError(f"{text!r} has no host; expected e.g. rtsp://user:pass@192.168.1.20:554/stream")
            return stream_source(text, **options)
        if scheme == "file":
            return VideoFileSource(file_url_path(text), **options)
        raise SourceSpecError(f"unsupported source scheme {scheme!r} in {text!r}; " + _SPEC_HELP)
    if is_camera_path(text):
        if not os.path.exists(text) and not wait:
            raise SourceError(f"camera device {text} does not exist (is the camera plugged in? `ls /dev/video* "
                              f"/dev/v4l/by-id`; {WAIT_HINT})")
        return camera_source(text, **options)
    if not os.path.exists(text):
        raise SourceSpecError(f"{text!r} is not an existing file and not a camera/stream spec; " + _SPEC_HELP)
    if os.path.isdir(text):
        raise SourceSpecError(f"{text!r} is a folder; point to a video file inside it")
    if not os.path.isfile(text):
        raise SourceSpecError(_not_a_video_file(text) + "; " + _SPEC_HELP)
    return VideoFileSource(text, **options)


CAMERA_PREFIXES = ("/dev/video", "/dev/v4l/")  # V4L2 nodes and their udev names (by-id, by-path)


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)  # follows symlinks: by-id names link to /dev/videoN
    except (OSError, ValueError):
        return False


def is_camera_path(path: str) -> bool:
    """Whether a path names a V4L2 camera: a character device (whatever it is called, symlinks followed), or a
    V4L2 name that may not exist yet (a camera still to be plugged in, waited for with ``wait=True``)."""
    return path.startswith(CAMERA_PREFIXES) or _is_char_device(path)


def _not_a_video_file(path: str) -> str:
    """Why ``path`` cannot be read as a video file, naming what to pass instead."""
    if not os.path.exists(path):
        return f"video file {path!r} does not exist"
    if _is_char_device(path):
        return (f"{path!r} is a character device, not a video file; open it as a camera with "
                "open_source(path) or camera_source(path)")
    return f"{path!r} exists but is not a regular file (a folder, pipe or socket); point to a video file"
