"""Frame sources behind one interface: iterate to get ``Frame(index, timestamp, image)`` with BGR uint8 images.

``open_source("0" | "/dev/video1" | "clip.mp4" | "rtsp://..." | "csi://0?width=1920&height=1080")`` picks the
source from a spec string. Live sources (cameras, streams, Jetson CSI) survive a disconnect or a run of bad
frames by reopening with bounded exponential back-off, logging each attempt; a video file simply ends at its
last readable frame. Indexes keep counting across reconnects and timestamps never go backwards, so the tracker
and the capture gate downstream see one continuous stream.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Protocol, Sequence
from urllib.parse import parse_qsl, urlsplit

import cv2
import numpy as np

from fiqa_sdk.frames import FrameError, to_bgr

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")


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
    """Iterable of :class:`Frame`. Use as a context manager (or call :meth:`close`) to release the device."""

    description = "?"

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the underlying device; iteration already releases it when it ends."""

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

    def __iter__(self) -> Iterator[Frame]:
        for i, f in enumerate(self._frames):
            yield Frame(i, i / self.fps, f)


class _CaptureSource(FrameSource):
    """A source backed by one OpenCV-style capture object, released by :meth:`close` (and reopened by subclasses)."""

    _cap: CaptureLike | None = None

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(_CaptureSource):
    """A video file. Ends at the first frame OpenCV cannot decode (a file does not come back by waiting)."""

    def __init__(self, path: str | os.PathLike, opener: Callable[[str], CaptureLike] | None = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise SourceError(f"video file {self.path!r} does not exist")
        self._opener = opener or (lambda p: cv2.VideoCapture(p))
        self.description = self.path
        self._cap: CaptureLike | None = None

    def __iter__(self) -> Iterator[Frame]:
        cap = self._opener(self.path)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"OpenCV cannot open video {self.path!r}: unsupported container/codec or a damaged "
                              "file (pip OpenCV reads MJPG/AVI and H.264/MP4 through FFmpeg)")
        self._cap = cap
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if hasattr(cap, "get") else 0.0
        step = 1.0 / fps if fps > 0 else 1.0 / 30.0
        index, last = 0, -np.inf
        try:
            while True:
                ok, raw = cap.read()
                if not ok or raw is None:
                    return
                try:
                    image = to_bgr(raw)
                except FrameError as e:
                    log.warning("%s: frame %d unreadable (%s); stopping", self.path, index, e)
                    return
                pos = float(cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0 if hasattr(cap, "get") else -1.0
                # Container time when the backend reports it, else one frame period after the previous frame.
                t = pos if pos > last else (0.0 if index == 0 else last + step)
                last = t
                yield Frame(index, t, image)
                index += 1
        finally:
            self.close()


class LiveSource(_CaptureSource):
    """A camera or stream that may drop out: bad reads are skipped, and after ``max_bad_reads`` in a row the
    device is reopened with :class:`Backoff`. Raises :class:`SourceError` once a reconnection episode exhausts
    ``backoff.max_attempts``. ``retry_initial_open``: also wait for a device that is not there at start (an IP
    camera still booting); off by default, because at start a failure is usually a wrong index or URL.
    """

    def __init__(self, opener: Callable[[], CaptureLike], description: str, backoff: Backoff | None = None,
                 max_bad_reads: int = 5, retry_initial_open: bool = False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 target: str = ""):
        if max_bad_reads < 1:
            raise ValueError(f"max_bad_reads must be >= 1, got {max_bad_reads}")
        self._opener = opener
        self.description = description
        self.target = target  # what the opener opens (index, URL without password, GStreamer pipeline)
        self.backoff = backoff or Backoff()
        self.max_bad_reads = int(max_bad_reads)
        self.retry_initial_open = bool(retry_initial_open)
        self._clock, self._sleep = clock, sleep
        self._cap: CaptureLike | None = None
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

    def _reopen(self, why: str) -> CaptureLike:
        """Reopen within the current reconnection episode. An episode ends only with a good frame (see
        ``__iter__``), not with a device that opens: one that opens but never delivers (a camera held by another
        process, a stream that connects and sends nothing) keeps backing off until ``max_attempts``."""
        if self._episode is None:
            self._episode, self._episode_attempts = self.backoff.delays(), 0
        for delay in self._episode:
            self._episode_attempts += 1
            log.warning("%s: %s; reconnect attempt %d in %.1f s", self.description, why, self._episode_attempts,
                        delay)
            self._sleep(delay)
            cap = self._try_open()
            if cap is not None:
                self.reconnects += 1
                log.warning("%s: reopened after %d attempt(s)", self.description, self._episode_attempts)
                return cap
        raise SourceError(f"{self.description}: {why}, and it did not come back after {self._episode_attempts} "
                          f"reconnect attempt(s); check the cable/network and that no other process holds the "
                          f"device, or raise Backoff.max_attempts")

    def __iter__(self) -> Iterator[Frame]:
        self._episode = None
        cap = self._try_open()
        if cap is None:
            if not self.retry_initial_open:
                raise SourceError(f"cannot open {self.description}; check the index/URL and that no other "
                                  "process holds the device (pass retry_initial_open=True to wait for it)")
            cap = self._reopen("not available at start")
        self._cap = cap
        t0 = self._clock()
        index, last, bad = 0, -np.inf, 0
        try:
            while True:
                try:
                    ok, raw = self._cap.read()
                    image = to_bgr(raw) if ok and raw is not None else None
                    problem = "read failed" if image is None else ""
                except (FrameError, cv2.error) as e:
                    image, problem = None, f"bad frame ({e})"
                if image is None:
                    bad += 1
                    self.bad_reads += 1
                    if bad >= self.max_bad_reads:
                        self.close()
                        self._cap = self._reopen(f"{bad} bad reads in a row, last: {problem}")
                        bad = 0
                    continue
                bad = 0
                self._episode = None  # a good frame ends a reconnection episode
                t = max(self._clock() - t0, last)
                last = t
                yield Frame(index, t, image)
                index += 1
        finally:
            self.close()


def camera_source(device: int | str, width: int | None = None, height: int | None = None,
                  fps: float | None = None, **live: Any) -> LiveSource:
    """A local camera by index (``0``) or V4L2 device path (``/dev/video0``); size/fps are requests the driver may
    round to a supported mode."""
    def opener() -> CaptureLike:
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2) if isinstance(device, str) else cv2.VideoCapture(int(device))
        for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                            (cv2.CAP_PROP_FPS, fps)):
            if value is not None and cap.isOpened():
                cap.set(prop, float(value))
        return cap

    return LiveSource(opener, f"camera {device}", target=str(device), **live)


def stream_source(url: str, timeout_s: float = 5.0, **live: Any) -> LiveSource:
    """A network stream through FFmpeg, with open/read timeouts so a dead camera is noticed in seconds, not at
    FFmpeg's default of 30 s."""
    ms = int(timeout_s * 1000)
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
    return LiveSource(lambda: cv2.VideoCapture(url, cv2.CAP_FFMPEG, params), f"stream {_redact(url)}",
                      target=_redact(url), **live)


def _redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, framerate: int = 30,
                 flip_method: int = 0, output_width: int | None = None, output_height: int | None = None) -> str:
    """GStreamer pipeline for a Jetson MIPI-CSI camera through the Argus ISP (``nvarguscamerasrc``).

    The ISP hands NV12 frames in NVMM (hardware) memory; ``nvvidconv`` flips/scales them and copies to system
    memory as BGRx, ``videoconvert`` drops the pad byte to BGR for OpenCV. ``appsink drop=1 max-buffers=1``
    keeps only the newest frame, so a slow consumer sees fresh frames instead of a growing backlog (``drop``
    alone does nothing while ``max-buffers`` is unlimited). ``flip_method``: 0 none, 1 rotate 90 ccw, 2 rotate
    180, 3 rotate 90 cw, 4 horizontal flip, 5 upper-right diagonal, 6 vertical flip, 7 upper-left diagonal.
    """
    for name, v in (("sensor_id", sensor_id), ("width", width), ("height", height), ("framerate", framerate)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "sensor_id" else 1):
            raise ValueError(f"csi {name} must be a {'non-negative' if name == 'sensor_id' else 'positive'} "
                             f"integer, got {v!r}")
    if isinstance(flip_method, bool) or not isinstance(flip_method, int) or not 0 <= flip_method <= 7:
        raise ValueError(f"csi flip_method must be an integer 0..7, got {flip_method!r}")
    out_w, out_h = output_width or width, output_height or height
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
    """A Jetson CSI camera. Needs an OpenCV built with GStreamer (JetPack's ``python3-opencv``); the pip wheels
    are built without it."""
    pipeline = csi_pipeline(sensor_id, width, height, framerate, flip_method)
    if not opencv_has_gstreamer():
        raise SourceError(f"OpenCV {cv2.__version__} here is built without GStreamer, so it cannot open CSI "
                          "cameras; use JetPack's OpenCV (apt install python3-opencv, and a venv created with "
                          "--system-site-packages) instead of the opencv-python wheels")
    return LiveSource(lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER), f"CSI camera {sensor_id}",
                      target=pipeline, **live)


_CSI_QUERY = {"width": "width", "height": "height", "fps": "framerate", "framerate": "framerate",
              "flip": "flip_method", "flip_method": "flip_method"}

_SPEC_HELP = ("use a camera index ('0'), a V4L2 device ('/dev/video0'), a video file path, a stream URL "
              "(rtsp://, rtsps://, rtmp://, http(s)://) or a Jetson CSI camera ('csi://0?width=1920&height=1080"
              "&fps=30&flip=0')")


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


def open_source(spec: str | int, **options: Any) -> FrameSource:
    """Open a source from a spec string (see module docstring); ``options`` go to the chosen source.

    Raises :class:`SourceSpecError` for a spec that names nothing openable, with the accepted forms.
    """
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
            return VideoFileSource(urlsplit(text).path, **options)
        raise SourceSpecError(f"unsupported source scheme {scheme!r} in {text!r}; " + _SPEC_HELP)
    if text.startswith("/dev/video"):
        if not os.path.exists(text):
            raise SourceError(f"camera device {text} does not exist (is the camera plugged in? `ls /dev/video*`)")
        return camera_source(text, **options)
    if not os.path.exists(text):
        raise SourceSpecError(f"{text!r} is not an existing file and not a camera/stream spec; " + _SPEC_HELP)
    if os.path.isdir(text):
        raise SourceSpecError(f"{text!r} is a folder; point to a video file inside it")
    return VideoFileSource(text, **options)
