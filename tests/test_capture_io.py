"""Capture files are atomic and never overwritten; the decision log is one flushed JSON line per decision."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import stat
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa_sdk import capture_io, create_detector, load_sample
from fiqa_sdk.align import align_face
from fiqa_sdk.capture_io import CaptureWriteError, CaptureWriter, DecisionLog
from fiqa_sdk.gate import Capture, CaptureGate, FaceObservation, GateConfig
from fiqa_sdk.measures import image_measures, landmark_measures


@pytest.fixture(scope="module")
def capture() -> Capture:
    """A real face (Grace Hopper, shipped with matplotlib): detected, aligned, cropped and accepted by the gate."""
    frame = load_sample("grace_hopper")
    det = create_detector(max_side=320)(frame)[0]
    x1, y1, x2, y2 = det.box.round().astype(int)
    obs = FaceObservation(track_id=4, frame_index=17, timestamp=0.567, detection=det,
                          aligned_face=align_face(frame, det.landmarks),
                          crop=frame[max(y1, 0):y2, max(x1, 0):x2].copy(),
                          scores={"utility": 81.5, "perceptual": 74.25},
                          measures={})
    obs.measures = {**image_measures(obs.aligned_face), **landmark_measures(det.landmarks)}
    step = CaptureGate(GateConfig(window_frames=1)).update([obs], obs.timestamp)
    assert len(step.captures) == 1
    return step.captures[0]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_writes_image_and_sidecar(tmp_path, capture):
    writer = CaptureWriter(tmp_path, bundle_id="fiqa-int8-test", save_aligned=True)
    files = writer.write(capture)
    assert listing(tmp_path) == sorted([files.image.name, files.sidecar.name, files.aligned.name])
    assert files.image.name.endswith("_t4_f17.jpg")
    img = cv2.imread(str(files.image))
    assert img.shape == capture.observation.crop.shape
    assert np.abs(img.astype(int) - capture.observation.crop).mean() < 3  # JPEG q95 of the same pixels
    aligned = cv2.imread(str(files.aligned))
    np.testing.assert_array_equal(aligned, capture.observation.aligned_face)  # PNG: lossless
    doc = json.loads(files.sidecar.read_text())
    assert doc["schema"] == capture_io.SIDECAR_SCHEMA and doc["id"] == files.stem
    assert doc["image"] == files.image.name and doc["aligned_image"] == files.aligned.name
    assert doc["bundle_id"] == "fiqa-int8-test"
    assert doc["accepted"] is True and doc["reasons"] == []
    assert doc["scores"] == {"utility": 81.5, "perceptual": 74.25}
    assert doc["track_id"] == 4 and doc["frame_index"] == 17 and doc["timestamp"] == 0.567
    det = capture.observation.detection
    np.testing.assert_allclose(doc["detection"]["box"], det.box, atol=0.01)
    np.testing.assert_allclose(doc["detection"]["landmarks"], det.landmarks, atol=0.01)
    assert doc["image_size"] == [img.shape[1], img.shape[0]]
    assert doc["window"] == {"start": 0.567, "candidates": 1}
    assert doc["written_at"].endswith("+00:00")


def test_png_format_and_aligned_only_capture(tmp_path, capture):
    obs = capture.observation
    aligned_only = Capture(FaceObservation(obs.track_id, obs.frame_index, obs.timestamp, obs.detection,
                                           obs.aligned_face, obs.scores, obs.measures),
                           capture.decision, capture.window_start, capture.candidates)
    files = CaptureWriter(tmp_path, image_format="png").write(aligned_only)
    np.testing.assert_array_equal(cv2.imread(str(files.image)), obs.aligned_face)


def test_names_never_collide(tmp_path, capture):
    writer = CaptureWriter(tmp_path, fsync=False)
    first = writer.write(capture)
    digest = hashlib.sha256(first.image.read_bytes()).hexdigest()
    results = [writer.write(capture) for _ in range(5)]

    def worker():
        other = CaptureWriter(tmp_path, fsync=False)
        for _ in range(10):
            results.append(other.write(capture))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stems = [first.stem] + [r.stem for r in results]
    assert len(stems) == 36 and len(set(stems)) == 36
    assert len(listing(tmp_path)) == 72  # an image and a sidecar each, no temp files
    assert hashlib.sha256(first.image.read_bytes()).hexdigest() == digest
    for r in results:
        assert json.loads(r.sidecar.read_text())["id"] == r.stem


def test_existing_file_is_never_overwritten(tmp_path, capture, monkeypatch):
    monkeypatch.setattr(CaptureWriter, "_stem", lambda self, c, now, n: "fixed" if n == 0 else f"fixed-{n}")
    (tmp_path / "fixed.jpg").write_bytes(b"someone else's file")
    files = CaptureWriter(tmp_path).write(capture)
    assert files.stem == "fixed-1"
    assert (tmp_path / "fixed.jpg").read_bytes() == b"someone else's file"
    assert listing(tmp_path) == ["fixed-1.jpg", "fixed-1.json", "fixed.jpg"]


def test_filesystem_without_hard_links(tmp_path, capture, monkeypatch):
    """FAT/exFAT SD cards: the reserve-then-replace path must keep both promises too."""
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(capture_io.os, "link", no_link)
    monkeypatch.setattr(CaptureWriter, "_stem", lambda self, c, now, n: "x" if n == 0 else f"x-{n}")
    (tmp_path / "x.jpg").write_bytes(b"keep me")
    files = CaptureWriter(tmp_path).write(capture)
    assert files.stem == "x-1"
    assert (tmp_path / "x.jpg").read_bytes() == b"keep me"
    assert cv2.imread(str(files.image)).shape == capture.image.shape
    assert listing(tmp_path) == ["x-1.jpg", "x-1.json", "x.jpg"]



def test_without_hard_links_no_final_name_ever_holds_an_empty_file(tmp_path, capture, monkeypatch):
    """A watcher of the folder must never see a 0-byte reservation under a capture's name: the stem is reserved
    by a hidden lock file, and each finished temp file is moved onto a name that did not exist until then."""
    def no_link(src, dst):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    real_replace, seen = os.replace, []

    def watching_replace(src, dst):
        dst = Path(dst)
        seen.append((dst.name, dst.exists(), (dst.parent / ".x.lock").exists(), os.path.getsize(src)))
        real_replace(src, dst)

    monkeypatch.setattr(capture_io.os, "link", no_link)
    monkeypatch.setattr(capture_io.os, "replace", watching_replace)
    monkeypatch.setattr(CaptureWriter, "_stem", lambda self, c, now, n: "x" if n == 0 else f"x-{n}")
    files = CaptureWriter(tmp_path, save_aligned=True).write(capture)
    assert [name for name, *_ in seen] == ["x.jpg", "x_aligned.png", "x.json"]  # sidecar last
    assert all(not existed and locked and size > 0 for _, existed, locked, size in seen)
    assert listing(tmp_path) == ["x.jpg", "x.json", "x_aligned.png"]  # lock removed, no temp files
    assert json.loads(files.sidecar.read_text())["id"] == "x"


def test_a_stem_another_writer_holds_or_partly_uses_is_skipped(tmp_path, capture, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(capture_io.os, "link", no_link)
    monkeypatch.setattr(CaptureWriter, "_stem", lambda self, c, now, n: "x" if n == 0 else f"x-{n}")
    (tmp_path / ".x.lock").write_bytes(b"")  # a writer is publishing "x" right now
    (tmp_path / "x-1.json").write_text("an older sidecar")  # only the sidecar name of "x-1" is taken
    files = CaptureWriter(tmp_path).write(capture)
    assert files.stem == "x-2"
    assert (tmp_path / ".x.lock").exists() and (tmp_path / "x-1.json").read_text() == "an older sidecar"
    assert listing(tmp_path) == [".x.lock", "x-1.json", "x-2.jpg", "x-2.json"]

def test_interrupted_write_leaves_nothing(tmp_path, capture, monkeypatch):
    real_write = os.write

    def disk_full_halfway(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(capture_io.os, "write", disk_full_halfway)
    with pytest.raises(CaptureWriteError, match="No space left"):
        CaptureWriter(tmp_path).write(capture)
    assert listing(tmp_path) == []


def test_failed_sidecar_rolls_back_the_published_images(tmp_path, capture, monkeypatch):
    real_write, calls = os.write, []

    def fail_third_file(fd, data):  # crop, aligned face, then the sidecar
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.EIO, "Input/output error")
        return real_write(fd, data)

    monkeypatch.setattr(capture_io.os, "write", fail_third_file)
    with pytest.raises(CaptureWriteError, match="Input/output error.*nothing was kept"):
        CaptureWriter(tmp_path, save_aligned=True).write(capture)
    assert len(calls) == 3
    assert listing(tmp_path) == []


def test_bad_metadata_is_refused_before_writing(tmp_path, capture):
    writer = CaptureWriter(tmp_path)
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        writer.write(capture, extra={"camera": object()})
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        writer.write(capture, extra={"exposure": float("nan")})
    with pytest.raises(ValueError, match="overwrite built-in"):
        writer.write(capture, extra={"scores": {}})
    assert listing(tmp_path) == []
    files = writer.write(capture, extra={"camera": "gate-2"})
    assert json.loads(files.sidecar.read_text())["camera"] == "gate-2"


def test_writer_validates_options(tmp_path):
    with pytest.raises(ValueError, match="image_format"):
        CaptureWriter(tmp_path, image_format="gif")
    with pytest.raises(ValueError, match="jpeg_quality"):
        CaptureWriter(tmp_path, jpeg_quality=0)


def test_bad_output_paths_fail_at_setup_with_the_fix_named(tmp_path, monkeypatch):
    """A wrong --out/--log must fail when the writer/log is made, not at the first capture after a model load."""
    a_file = tmp_path / "afile"
    a_file.write_text("")
    with pytest.raises(NotADirectoryError, match="afile is an existing file, not a folder; pick a folder path"):
        CaptureWriter(a_file)
    with pytest.raises(NotADirectoryError, match="existing file, not a folder"):
        DecisionLog(a_file / "decisions.jsonl")
    with pytest.raises(IsADirectoryError, match="is a folder; give a file path such as .*decisions.jsonl"):
        DecisionLog(tmp_path)
    with pytest.raises(OSError, match="cannot create folder .*afile/sub"):
        CaptureWriter(a_file / "sub")
    monkeypatch.setattr(capture_io.os, "access", lambda path, mode: False)  # as a non-root user would see it
    with pytest.raises(PermissionError, match="is not writable by this user"):
        CaptureWriter(tmp_path / "ro")
    assert a_file.read_text() == ""  # nothing was replaced


def test_decision_log_one_flushed_line_per_decision(tmp_path, capture):
    obs = capture.observation
    gate = CaptureGate(GateConfig(window_frames=3))
    path = tmp_path / "logs" / "decisions.jsonl"
    log = DecisionLog(path, bundle_id="b1")
    written = 0
    for i, utility in enumerate([70, 20, 90, 85, 60]):
        o = FaceObservation(obs.track_id, i, i * 0.1, obs.detection, obs.aligned_face,
                            {"utility": utility, "perceptual": 70}, obs.measures)
        step = gate.update([o], o.timestamp)
        log.write_step(step, camera="cam0")
        written += len(step.decisions)
        # Flushed: another reader sees every line before the log is closed.
        assert len(path.read_text().splitlines()) == written
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(d["frame_index"], d["accepted"], d["reasons"]) for d in lines] == [
        (1, False, ["low_utility"]), (0, False, ["not_best_in_window"]), (2, True, []),
        (3, False, ["cooldown"]), (4, False, ["cooldown"])]
    assert all(d["bundle_id"] == "b1" and d["camera"] == "cam0" for d in lines)
    assert lines[2]["detection"]["box"] == [round(float(v), 2) for v in obs.detection.box]
    with DecisionLog(path) as again:  # appends, never truncates
        again.write(step.decisions[0])
    assert len(path.read_text().splitlines()) == written + 1
    # each run's lines carry its own id (track ids restart with every run)
    runs = [json.loads(line)["run_id"] for line in path.read_text().splitlines()]
    assert len(set(runs[:written])) == 1 and runs[-1] != runs[0] and runs[0] == log.run_id
    with DecisionLog(tmp_path / "named.jsonl", run_id="kiosk-3") as named:
        named.write(step.decisions[0])
    assert json.loads((tmp_path / "named.jsonl").read_text())["run_id"] == "kiosk-3"
    with pytest.raises(ValueError, match="closed"):
        log.write(step.decisions[0])
    with DecisionLog(tmp_path / "x.jsonl") as other:
        with pytest.raises(ValueError, match="overwrite decision fields"):
            other.write(step.decisions[0], accepted=True)
        with pytest.raises(ValueError, match="cannot be logged as JSON"):
            other.write(step.decisions[0], exposure=float("inf"))
    assert (tmp_path / "x.jsonl").read_text() == ""


def _rejections(capture, n: int) -> list:
    """``n`` gate decisions, one per frame 20 s apart (a low-utility face, rejected at once)."""
    obs = capture.observation
    gate = CaptureGate(GateConfig(window_frames=1))
    decisions = []
    for i in range(n):
        o = FaceObservation(obs.track_id, i, i * 20.0, obs.detection, obs.aligned_face,
                            {"utility": 20, "perceptual": 70}, obs.measures)
        decisions += gate.update([o], o.timestamp).decisions
    return decisions


def test_decision_log_rotates_at_its_size_bound_keeping_the_newest_lines(tmp_path, capture):
    decisions = _rejections(capture, 40)
    path = tmp_path / "decisions.jsonl"
    line_bytes = len(json.dumps({"run_id": "r", **decisions[0].to_dict()}, separators=(",", ":"))) + 1
    with DecisionLog(path, run_id="r", max_bytes=5 * line_bytes, backups=2) as log:
        for d in decisions:
            log.write(d)
            assert path.stat().st_size <= 5 * line_bytes + 8  # never past the bound (+ digits a frame index adds)
    files = [path, path.with_name("decisions.jsonl.1"), path.with_name("decisions.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("decisions.jsonl.3").exists()
    kept = [json.loads(line)["frame_index"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == list(range(40 - len(kept), 40)) and len(kept) >= 10  # the newest, in order, none duplicated
    with pytest.raises(ValueError, match="max_bytes must be a positive number"):
        DecisionLog(tmp_path / "x.jsonl", max_bytes=0)
    with pytest.raises(ValueError, match="backups must be an integer >= 1"):
        DecisionLog(tmp_path / "x.jsonl", max_bytes=100, backups=0)


def test_a_rotation_that_finds_its_file_moved_keeps_logging(tmp_path, capture):
    """An operator (or logrotate) moved the live file away: the next rotation must not close the log for good."""
    decisions = _rejections(capture, 6)
    path = tmp_path / "k.jsonl"
    with DecisionLog(path, run_id="r", max_bytes=1, backups=2) as log:  # every line rotates
        log.write(decisions[0])
        os.rename(path, tmp_path / "k.jsonl.archived")
        for d in decisions[1:]:
            log.write(d)
    frames = [json.loads(line)["frame_index"] for f in (path.with_name("k.jsonl.1"), path)
              for line in f.read_text().splitlines()]
    assert frames == [4, 5]  # the newest two kept (backups=2 plus the live file; one line each), log still open


# -- interrupts, permissions, a full disk ------------------------------------------------------------------------------

_STEPS = ("open", "write", "fsync", "close", "link", "replace")


def _interrupt_at(monkeypatch, k: int, when: str, steps: tuple[str, ...] = _STEPS) -> list[int]:
    """Make the ``k``-th call of the os functions a capture write uses raise KeyboardInterrupt: ``before`` it does
    anything, or ``after`` it took effect (what an interrupt delivered as it returns looks like), or, ``signal``,
    send this process SIGINT during it as Ctrl-C would (Python then raises in the main thread as soon as it can).
    os.open is left out of ``after``: an os.open that raised made nothing, and a lock file found there belongs to
    another writer, who must keep it."""
    calls = [0]
    for name in steps if when != "after" else [s for s in steps if s != "open"]:
        def step(*args, _real=getattr(os, name), **kwargs):
            calls[0] += 1
            if calls[0] == k and when == "before":
                raise KeyboardInterrupt
            result = _real(*args, **kwargs)
            if calls[0] == k and when == "after":
                raise KeyboardInterrupt
            if calls[0] == k and when == "signal":
                os.kill(os.getpid(), signal.SIGINT)
            return result

        monkeypatch.setattr(capture_io.os, name, step)
    return calls


def _whole_or_nothing(folder: Path) -> bool:
    """True for a whole capture, False for none; fails on anything else (part of one, a temp or lock file)."""
    names = listing(folder)
    if not names:
        return False
    stem = names[0].rsplit(".", 1)[0]
    assert names == [f"{stem}.jpg", f"{stem}.json", f"{stem}_aligned.png"], names
    doc = json.loads((folder / f"{stem}.json").read_text())
    assert doc["image"] == f"{stem}.jpg" and cv2.imread(str(folder / doc["image"])) is not None
    assert cv2.imread(str(folder / doc["aligned_image"])).shape == (112, 112, 3)
    return True


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
@pytest.mark.parametrize("when", ["before", "after", "signal"])
def test_an_interrupt_at_any_step_leaves_the_whole_capture_or_none_and_no_temp_or_lock_file(tmp_path, capture,
                                                                                            monkeypatch, links, when):
    """Every call of every step, in turn: a raised interrupt rolls the capture back; Ctrl-C (a signal) waits for
    the capture to be complete, then interrupts."""
    k = 0
    while True:
        k += 1
        folder = tmp_path / f"k{k}"
        writer = CaptureWriter(folder, save_aligned=True)
        with monkeypatch.context() as m:
            if not links:  # a FAT/exFAT card: os.link refused, names given by os.replace under the stem's lock
                m.setattr(capture_io.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EPERM, "no")))
            calls = _interrupt_at(m, k, when, _STEPS if links else tuple(s for s in _STEPS if s != "link"))
            try:
                writer.write(capture)
                interrupted = False
            except KeyboardInterrupt:
                interrupted = True
        if calls[0] < k:  # the write needed fewer calls: every step has been interrupted once
            assert not interrupted and _whole_or_nothing(folder)
            break
        assert interrupted, f"call {k}"
        assert _whole_or_nothing(folder) == (when == "signal"), f"call {k} ({when})"
    assert k > 10  # temp files, fsyncs, lock, links: the loop really went through the steps


@pytest.mark.parametrize("links", [True, False], ids=["hard-links", "no-hard-links"])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_capture_files_follow_the_umask(tmp_path, capture, monkeypatch, umask, links):
    if not links:
        monkeypatch.setattr(capture_io.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EPERM, "no")))
    previous = os.umask(umask)
    try:
        files = CaptureWriter(tmp_path, save_aligned=True).write(capture)
    finally:
        os.umask(previous)
    for path in (files.image, files.sidecar, files.aligned):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_log_on_a_full_device_raises_per_line_and_still_closes(capture):
    log = DecisionLog("/dev/full", run_id="r")
    for d in _rejections(capture, 2):
        with pytest.raises(OSError, match="No space left"):
            log.write(d)
    log.close()  # nothing was left in a buffer to fail on again


def test_a_line_the_disk_cuts_short_is_taken_back(tmp_path, capture):
    """A file-size limit makes the kernel write part of a line and refuse the rest, as a full disk does."""
    resource = pytest.importorskip("resource")
    decisions = _rejections(capture, 3)
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, run_id="r")
    log.write(decisions[0])
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    xfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal that kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 40, hard))
    try:
        with pytest.raises(OSError):
            log.write(decisions[1])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, xfsz)
    log.write(decisions[2])
    log.close()
    assert [json.loads(line)["frame_index"] for line in path.read_text().splitlines()] == [0, 2]
