"""Persist the gate's output: capture files written atomically, and a JSON-lines log of every decision.

A capture is an image plus a JSON sidecar. Each file is written to a hidden temp file in the target folder,
flushed (and fsynced), then published under its final name without ever replacing an existing file. The writer
first reserves the capture's stem with a hidden ``.<stem>.lock`` file created with ``O_EXCL`` (so two writers
never publish under one stem) and checks that none of its names is taken; each file then gets its name with
``os.link`` (which fails if the name exists), or, on filesystems without hard links (FAT/exFAT SD cards),
``os.replace``, which the reservation makes safe. No final name ever holds an empty or partial file. The sidecar
is published last, so a consumer that reacts to ``*.json`` never sees a capture whose image is missing or partial.
A write that fails midway removes its temp files and any part of the capture already published. Python signal
handlers (Ctrl-C's KeyboardInterrupt, a SIGTERM handler that raises) are held while a capture goes to disk and
run once it is complete, so an interrupt leaves the whole capture or none of it, never a temp or lock file. Files
are created like any new file: mode 0666 less the process's umask.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np

from fiqa_sdk.gate import Capture, GateDecision, GateStep

log = logging.getLogger(__name__)

SIDECAR_SCHEMA = 1
_TMP_PREFIX = ".tmp-"
_LOCK_SUFFIX = ".lock"
# EINVAL: what Windows' "incorrect function" (WinError 1) maps to when a FAT/exFAT card has no hard links
_NO_HARDLINK = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EINVAL}


class CaptureWriteError(OSError):
    """A capture could not be written; nothing of it was left behind."""


@dataclass(frozen=True)
class CaptureFiles:
    """Where one capture went. ``stem`` is the shared, unique base name."""

    stem: str
    image: Path
    sidecar: Path
    aligned: Path | None = None


def _write_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view[:1 << 20])
        view = view[n:]


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Run Python signal handlers only after the block. A handler's exception (KeyboardInterrupt, the capture
    example's Terminated) can land between any two statements, in the clean-up code too, and no clean-up can then
    be sure to remove a temp or lock file or half a capture; held, it comes once the capture is complete. Python
    runs handlers in the main thread only, so in any other thread there is nothing to hold."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[tuple[int, Any]] = []
    previous: dict[int, Any] = {}
    try:
        for signum in signal.valid_signals():
            handler = signal.getsignal(signum)
            if callable(handler):  # SIG_DFL / SIG_IGN raise nothing in Python
                previous[signum] = handler
                signal.signal(signum, lambda n, frame: held.append((n, frame)))
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum, frame in held:
            previous[signum](signum, frame)


class _Writes:
    """The files one capture write creates. Each is recorded *before* the call that creates it, since that call can
    take effect and still raise (an exception delivered as it returns), so :meth:`unpublish` and
    :meth:`remove_temps` remove exactly this write's files, whichever step failed, and nothing another writer
    owns: a published name is removed only while it holds one of this write's temp files (same inode)."""

    def __init__(self, folder: Path, fsync: bool):
        self.folder, self.fsync = folder, fsync
        self.temps: list[Path] = []
        self.inodes: set[tuple[int, int]] = set()
        self.published: list[Path] = []

    def temp(self, data: bytes, suffix: str) -> Path:
        """``data`` in a new hidden temp file, flushed (and fsynced), so only complete files get published. Created
        with mode 0666, which the umask narrows as for any new file (tempfile.mkstemp would force 0600, and a link
        keeps it)."""
        tmp = self.folder / f"{_TMP_PREFIX}{secrets.token_hex(8)}{suffix}"
        self.temps.append(tmp)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:  # not this write's file (64 random bits make it theoretical): never remove it
            self.temps.remove(tmp)
            raise
        try:
            st = os.fstat(fd)
            self.inodes.add((st.st_dev, st.st_ino))
            _write_fd(fd, data)
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def place(self, tmp: Path, final: Path) -> None:
        self.published.append(final)
        _place(tmp, final)

    def unpublish(self) -> None:
        for final in self.published:
            try:
                st = os.lstat(final)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in self.inodes:
                final.unlink(missing_ok=True)
        self.published.clear()

    def remove_temps(self) -> None:
        for tmp in self.temps:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _stem_lock(folder: Path, stem: str) -> Iterator[None]:
    """Hold ``stem`` in ``folder`` for this writer: a hidden ``.<stem>.lock`` made with ``O_EXCL`` (FileExistsError
    while another writer holds it). A filesystem without hard links cannot refuse to replace a name by itself, so
    the names are checked and published under this reservation; it is removed afterwards."""
    lock = folder / f".{stem}{_LOCK_SUFFIX}"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)  # raised: made nothing, or found another's
    try:
        os.close(fd)  # inside: a close that fails (or is interrupted) still removes the lock
        yield
    finally:
        lock.unlink(missing_ok=True)


def _place(tmp: Path, final: Path) -> None:
    """Give a finished temp file its final name in one atomic step: a hard link, which refuses an existing name
    (the temp file stays, the caller removes it); without hard links, ``os.replace`` (the temp file is consumed),
    safe because the caller holds the stem's lock and checked the name was free."""
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in _NO_HARDLINK:
            raise
        os.replace(tmp, final)


def _encode(image: np.ndarray, ext: str, jpeg_quality: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise CaptureWriteError(f"OpenCV could not encode a {image.shape} {image.dtype} image as {ext}")
    return buf.tobytes()


def _ensure_folder(folder: Path) -> None:
    """Create ``folder`` (and parents), failing at setup with a clear message rather than at the first capture."""
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is an existing file, not a folder; pick a folder path or move the file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create folder {folder}: {e.strerror or e}; pick a writable location") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"folder {folder} is not writable by this user; pick a writable location or fix "
                              "its permissions")


class CaptureWriter:
    """Write :class:`~fiqa_sdk.gate.Capture` objects into ``directory`` as ``<stem>.<jpg|png>`` + ``<stem>.json``.

    Stems are ``<UTC time>_t<track>_f<frame>`` with a ``-N`` suffix when that name is already taken, so files sort
    by time and are never overwritten, even by several writers sharing a folder. ``save_aligned`` also stores the
    112x112 aligned face (lossless PNG) next to the frame crop.
    """

    def __init__(self, directory: str | os.PathLike, image_format: str = "jpg", jpeg_quality: int = 95,
                 bundle_id: str | None = None, save_aligned: bool = False, fsync: bool = True):
        fmt = image_format.lower().lstrip(".")
        if fmt not in ("jpg", "jpeg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        self.directory = Path(directory)
        _ensure_folder(self.directory)
        self.ext = "." + ("jpg" if fmt == "jpeg" else fmt)
        self.jpeg_quality = int(jpeg_quality)
        self.bundle_id = bundle_id
        self.save_aligned = bool(save_aligned)
        self.fsync = bool(fsync)

    def _stem(self, capture: Capture, now: datetime, attempt: int) -> str:
        base = (f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z"
                f"_t{capture.decision.track_id}_f{capture.decision.frame_index}")
        return base if attempt == 0 else f"{base}-{attempt}"

    def sidecar(self, capture: Capture, files: CaptureFiles, written_at: datetime,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The JSON document stored next to the image (schema :data:`SIDECAR_SCHEMA`)."""
        img = capture.image
        doc: dict[str, Any] = {
            "schema": SIDECAR_SCHEMA, "id": files.stem, "image": files.image.name,
            "aligned_image": files.aligned.name if files.aligned else None,
            "image_size": [int(img.shape[1]), int(img.shape[0])],
            "bundle_id": self.bundle_id, "written_at": written_at.isoformat(timespec="milliseconds"),
            **capture.decision.to_dict(),
            "window": {"start": round(float(capture.window_start), 6), "candidates": int(capture.candidates)},
        }
        if extra:
            clash = sorted(set(extra) & set(doc))
            if clash:
                raise ValueError(f"extra sidecar keys {clash} would overwrite built-in fields")
            doc.update(extra)
        return doc

    def write(self, capture: Capture, extra: Mapping[str, Any] | None = None) -> CaptureFiles:
        """Write one capture; returns its paths. On any failure nothing of this capture remains on disk."""
        image = _encode(capture.image, self.ext, self.jpeg_quality)
        aligned = None
        if self.save_aligned:
            if capture.observation.aligned_face is None:
                raise ValueError("save_aligned=True but the capture has no aligned_face")
            aligned = _encode(capture.observation.aligned_face, ".png", self.jpeg_quality)
        now = datetime.now(timezone.utc)
        # Validate the sidecar before touching the disk: bad metadata is a caller bug, not an I/O failure.
        probe = CaptureFiles("probe", Path("probe" + self.ext), Path("probe.json"))
        doc = self.sidecar(capture, probe, now, extra)
        try:
            json.dumps(doc, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"capture metadata cannot be stored as JSON: {e}") from e
        blobs = [(image, self.ext)] + ([(aligned, ".png")] if aligned is not None else [])
        with _signals_held():  # an interrupt waits for the capture to be complete (or rolled back)
            writes = _Writes(self.directory, self.fsync)
            try:
                temps = [writes.temp(data, suffix) for data, suffix in blobs]
                return self._publish(capture, now, extra, temps, writes)
            except CaptureWriteError:
                raise
            except OSError as e:
                raise CaptureWriteError(f"writing a capture into {self.directory} failed ({e}); nothing was "
                                        "kept") from e
            finally:
                writes.remove_temps()

    def _files(self, capture: Capture, now: datetime, attempt: int, aligned: bool) -> CaptureFiles:
        stem = self._stem(capture, now, attempt)
        return CaptureFiles(stem, self.directory / f"{stem}{self.ext}", self.directory / f"{stem}.json",
                            self.directory / f"{stem}_aligned.png" if aligned else None)

    def _publish(self, capture: Capture, now: datetime, extra: Mapping[str, Any] | None, temps: list[Path],
                 writes: _Writes) -> CaptureFiles:
        """Publish the written temp files (image, then aligned face) and the sidecar under the first free stem."""
        for attempt in range(10_000):
            files = self._files(capture, now, attempt, aligned=len(temps) > 1)
            names = [files.image, files.sidecar] + ([files.aligned] if files.aligned else [])
            try:
                with _stem_lock(self.directory, files.stem):
                    if any(os.path.lexists(p) for p in names):
                        continue
                    self._publish_files(capture, now, extra, temps, files, writes)
                    return files
            except FileExistsError:  # another writer holds this stem, or took one of its names (hard links)
                continue
        raise CaptureWriteError(f"no free file name for {files.stem} in {self.directory}")

    def _publish_files(self, capture: Capture, now: datetime, extra: Mapping[str, Any] | None, temps: list[Path],
                       files: CaptureFiles, writes: _Writes) -> None:
        """Images first, sidecar last; whatever was published is removed again if a later step fails, while the
        stem's lock is still held (so no other writer can have taken the names meanwhile)."""
        try:
            for tmp, final in zip(temps, (files.image, files.aligned)):
                writes.place(tmp, final)
            doc = json.dumps(self.sidecar(capture, files, now, extra), indent=1, allow_nan=False).encode()
            writes.place(writes.temp(doc, ".json"), files.sidecar)
        except BaseException:
            writes.unpublish()
            raise


class DecisionLog:
    """Append one JSON object per gate decision to a ``.jsonl`` file, each line handed to the OS as it is written.

    Unbuffered, a crash loses at most the line being written, and ``tail -f`` shows decisions live. A line that
    cannot be written whole (a full disk) raises OSError and is cut off again, so the file never ends in half a
    JSON object, and nothing is left in a buffer for :meth:`close` to fail on.
    Safe to share between threads. Every line carries ``run_id`` (default: the UTC start time plus a random
    suffix): track ids restart with every run, so runs appended to one file stay apart.

    One writer per file: two logs (or processes) rotating the same path would move each other's live file.
    ``max_bytes``: rotate before a line would take the file past this size (an unattended kiosk logs for months):
    ``decisions.jsonl`` becomes ``decisions.jsonl.1``, ``.1`` becomes ``.2`` and so on up to ``backups`` files; the
    oldest beyond that is deleted, which is the point of a bound, so it is logged. ``None`` (default): one file.
    """

    def __init__(self, path: str | os.PathLike, bundle_id: str | None = None, run_id: str | None = None,
                 max_bytes: int | None = None, backups: int = 5):
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ValueError(f"max_bytes must be a positive number of bytes (or None: never rotate), got {max_bytes!r}")
        if isinstance(backups, bool) or not isinstance(backups, int) or backups < 1:
            raise ValueError(f"backups must be an integer >= 1 (rotated files kept), got {backups!r}")
        self.max_bytes, self.backups = max_bytes, backups
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"decision log {self.path} is a folder; give a file path such as "
                                    f"{self.path / 'decisions.jsonl'}")
        _ensure_folder(self.path.parent)
        self.bundle_id = bundle_id
        self.run_id = run_id if run_id is not None else \
            f"{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"
        self._file = self._open()
        self._lock = threading.Lock()

    def _open(self):
        return open(self.path, "ab", buffering=0)

    def write(self, decision: GateDecision, **extra: Any) -> None:
        record = {"run_id": self.run_id, **decision.to_dict()}
        if self.bundle_id is not None:
            record["bundle_id"] = self.bundle_id
        clash = sorted(set(extra) & set(record))
        if clash:
            raise ValueError(f"extra log keys {clash} would overwrite decision fields")
        record.update(extra)
        try:
            line = json.dumps(record, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"decision of track {decision.track_id} frame {decision.frame_index} cannot be logged "
                             f"as JSON ({e}); scores, measures and extras must be finite numbers/strings") from e
        data = (line + "\n").encode("utf-8")
        with self._lock:
            if self._file.closed:
                raise ValueError(f"decision log {self.path} is closed")
            size = os.fstat(self._file.fileno()).st_size
            if self.max_bytes is not None and 0 < size and size + len(data) > self.max_bytes:
                self._rotate()
            self._append(data)

    def _append(self, data: bytes) -> None:
        """One whole line or none: what a full disk (or an interrupt) cut short is truncated away again, or the
        next line would be glued to half a JSON object. (A device such as /dev/full cannot be truncated, and holds
        nothing to cut.)"""
        fd = self._file.fileno()
        start = os.fstat(fd).st_size
        try:
            _write_fd(fd, data)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise

    def _rotate(self) -> None:
        """Shift ``path`` -> ``path.1`` -> ... -> ``path.<backups>`` (the last one's old content is dropped) and
        reopen ``path``, whatever happened meanwhile (an operator or logrotate moving the live file): a failed
        rename is logged and the log goes on rather than closing for the rest of the run."""
        self._file.close()
        try:
            oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
            if oldest.exists():
                log.warning("decision log: dropping %s (over %d rotated files)", oldest, self.backups)
                oldest.unlink(missing_ok=True)
            for n in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{n}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{n + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        except OSError as e:
            log.warning("decision log %s: rotation failed (%s); writing on", self.path, e)
        finally:
            self._file = self._open()

    def write_step(self, step: GateStep, **extra: Any) -> None:
        """Log every decision one gate update settled."""
        for decision in step.decisions:
            self.write(decision, **extra)

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
