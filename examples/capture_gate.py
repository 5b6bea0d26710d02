#!/usr/bin/env python3
"""Capture gate on a live or recorded source: keep the best frame of each person, say why others were dropped.

    python examples/capture_gate.py --source 0                      # first USB camera
    python examples/capture_gate.py --source clip.mp4 --display off
    python examples/capture_gate.py --source rtsp://user:pass@10.0.0.5/stream --out captures/ --log decisions.jsonl
    python examples/capture_gate.py --source "csi://0?width=1280&height=720"   # Jetson CSI camera
    python examples/capture_gate.py --source rtsp://10.0.0.5/stream --wait-for-source   # unattended kiosk

Every frame goes through detect -> track -> align -> score -> measures -> gate (fiqa_sdk.pipeline). Accepted
captures are written to --out as image + JSON sidecar and printed; every gate decision can be appended to a
JSON-lines log. With a display (and an OpenCV built with GUI support) a window shows boxes, scores and the
reasons for each rejection; headless OpenCV wheels have no window support, so --display auto then runs
headless. A frame that cannot be processed is counted and skipped: one bad frame never ends the run. Ctrl-C and
SIGTERM (systemctl stop, docker stop) end the run cleanly: the last best-of-N windows are still written and the
summary printed; a second Ctrl-C (or SIGTERM) while that happens is ignored, so it changes neither the files nor
the exit status.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

import cv2
import numpy as np

from fiqa_sdk.bundle import BundleError, default_bundle_path, load_bundle
from fiqa_sdk.capture_io import CaptureWriter, DecisionLog
from fiqa_sdk.frames import FrameError
from fiqa_sdk.gate import parse_overrides
from fiqa_sdk.pipeline import SKIP_NO_POSE, SKIP_NON_FINITE, CapturePipeline, FrameReport
from fiqa_sdk.scorer import Scorer
from fiqa_sdk.sources import Frame, SourceError, SourceSpecError, open_source
from fiqa_sdk.tracking import IouTracker

log = logging.getLogger("capture_gate")
WINDOW = "fiqa capture gate"
GREEN, RED, YELLOW, GRAY = (0, 200, 0), (0, 0, 230), (0, 220, 230), (160, 160, 160)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="0",
                   help="camera index, /dev/videoN, video file, rtsp://... stream or csi://N (default: 0)")
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded default bundle)")
    p.add_argument("--backend", default="auto",
                   help="inference backend: auto (default: the first installed that starts), tensorrt, litert, "
                        "tflite-runtime, onnxruntime or opencv")
    p.add_argument("--detector", default="retinaface", help="face detector (default: retinaface)")
    p.add_argument("--detector-backend", default="auto", choices=("auto", "onnxruntime", "opencv", "tensorrt"),
                   help="what runs RetinaFace: auto = ONNX Runtime, else OpenCV DNN; tensorrt on a Jetson (its "
                        "engine is built once, on first use, then cached)")
    p.add_argument("--max-side", type=int, default=None,
                   help="longest frame side RetinaFace sees (default: half the frame's, within 320..640: 320 for a "
                        "640x480 camera, 640 for HD; why: docs/results.md, 'Alignment')")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the engine's choice)")
    p.add_argument("--out", type=Path, default=Path("captures"), help="folder for accepted captures (default ./captures)")
    p.add_argument("--log", type=Path, default=None, help="append every gate decision to this .jsonl file")
    p.add_argument("--log-max-mb", type=float, default=None,
                   help="rotate the --log file at this size: FILE -> FILE.1 -> ... -> FILE.N, the oldest beyond "
                        "--log-backups deleted (default: no rotation; for unattended kiosks)")
    p.add_argument("--log-backups", type=int, default=5, help="rotated --log files kept (default 5)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames (default: run until the source ends or Ctrl-C)")
    p.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                   help="override one of the bundle's gate thresholds, repeatable: KEY=VALUE, or KEY=off to disable "
                        "a check (e.g. --gate utility_accept=70 --gate max_yaw_deg=off; keys: fiqa_sdk.GateConfig)")
    p.add_argument("--track-timeout", type=float, default=1.0,
                   help="seconds a face may go unseen (turned away, occluded) and still be the same person for the "
                        "gate's best-of-N window and cooldown; longer gaps make a new person (default 1.0)")
    p.add_argument("--wait-for-source", action="store_true",
                   help="camera/stream/CSI: wait for a source that is not up yet, and retry a lost one forever "
                        "(unattended kiosks), instead of failing")
    p.add_argument("--display", choices=("auto", "on", "off"), default="auto",
                   help="overlay window: auto = when a display and GUI-enabled OpenCV exist")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="capture image format (default jpg)")
    p.add_argument("--save-aligned", action="store_true", help="also store the 112x112 aligned face")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also log (INFO) every bad read a source skips and every face kept from the gate, with why; "
                        "reconnects and unprocessable frames are logged as warnings either way")
    args = p.parse_args(argv)
    if args.max_frames is not None and args.max_frames < 1:
        p.error("--max-frames must be >= 1")
    if not 0 <= args.track_timeout < float("inf"):
        p.error("--track-timeout must be a finite number of seconds >= 0")
    try:
        args.gate = parse_overrides(args.gate)
    except ValueError as e:
        p.error(f"--gate: {e}")
    if args.log_max_mb is not None and not 0 < args.log_max_mb < float("inf"):
        p.error("--log-max-mb must be a positive size in megabytes")
    if args.log_backups < 1:
        p.error("--log-backups must be >= 1")
    if (args.log_max_mb is not None or args.log_backups != 5) and args.log is None:
        p.error("--log-max-mb and --log-backups need --log FILE")
    if args.detector != "retinaface" and (args.detector_backend != "auto" or args.max_side is not None):
        p.error(f"--detector-backend and --max-side are options of the retinaface detector, not of "
                f"--detector {args.detector}")
    return args


def display_available() -> tuple[bool, str]:
    """Whether an OpenCV window can be opened here, and why not."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no DISPLAY/WAYLAND_DISPLAY set"
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error:
        return False, ("this OpenCV has no GUI support (opencv-python-headless); install opencv-python, or "
                       "JetPack's OpenCV, for a window")
    return True, ""


def skip_label(reason: str) -> str:
    """A short overlay note for a face the pipeline kept from the gate, from its reason."""
    if reason.startswith(SKIP_NO_POSE):
        return "pose?"
    if reason.startswith(SKIP_NON_FINITE):
        return "score nan" if "nan" in reason else "score inf"
    return reason.split(":", 1)[0][:20]


def draw_overlay(frame: np.ndarray, report: FrameReport, fps: float) -> np.ndarray:
    """Boxes coloured by this frame's verdict (green accepted, red rejected with reasons, yellow still a
    candidate in its best-of-N window, gray not gated), with track id and scores."""
    img = frame.copy()
    skipped = dict(report.skipped)
    accepted_now = {(c.decision.track_id, c.decision.frame_index) for c in report.captures}
    for face, tid in zip(report.faces, report.track_ids):
        d = report.decision_for(tid)
        if tid in skipped:
            color, note = GRAY, skip_label(skipped[tid])
        elif d is None:
            color, note = YELLOW, "candidate"
        elif d.accepted or (tid, report.frame_index) in accepted_now:
            color, note = GREEN, "ACCEPTED"
        else:
            color, note = RED, ",".join(r.value for r in d.reasons)
        x1, y1, x2, y2 = (int(round(v)) for v in face.detection.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), color, 2)
        label = f"#{tid} U{face.utility:.0f} P{face.perceptual:.0f}"
        cv2.putText(img, label, (x1, max(12, y1 - 18)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, 1, cv2.LINE_AA)
        cv2.putText(img, note, (x1, max(24, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, color, 1, cv2.LINE_AA)
    cv2.putText(img, f"{fps:.1f} FPS", (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2, cv2.LINE_AA)
    return img


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt, so no ``except Exception`` on the way swallows it
    and :func:`run` ends the way Ctrl-C ends it."""


class SigtermStop:
    """What SIGTERM and Ctrl-C (SIGINT) do under :func:`stop_on_sigterm`. While ``armed`` (the frame loop), the first
    of them stops the run: SIGTERM raises :class:`Terminated`, Ctrl-C KeyboardInterrupt. Any later one, and any that
    arrives once the run disarms it for the shutdown (final flush, closing the log and the engine, the summary), is
    only noted in ``late``: a second Ctrl-C pressed while the last captures are written cannot cut them short or
    turn a clean exit into a traceback."""

    def __init__(self) -> None:
        self.armed = True
        self.fired = False
        self.late: list[int] = []  # signals that came during the shutdown, ignored

    def handler(self, signum: int, frame: object) -> None:
        if self.fired or not self.armed:
            self.late.append(signum)
            return
        self.fired = True
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated()


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[SigtermStop]:
    """While the block runs, SIGTERM stops the run like Ctrl-C, and neither can interrupt the shutdown (see
    :class:`SigtermStop`); the previous handlers come back after. Without it SIGTERM kills the process before the
    open windows are written. Python lets only the main thread set handlers: elsewhere this installs nothing."""
    stop = SigtermStop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {signum: signal.signal(signum, stop.handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:  # a handler set outside Python reads as None and cannot be put back: the default is the nearest
        for signum, nearest in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            signal.signal(signum, previous[signum] if previous[signum] is not None else nearest)


@dataclass
class RunStats:
    frames: int = 0
    bad_frames: int = 0
    captures: list[str] = field(default_factory=list)
    skip_reasons: Counter = field(default_factory=Counter)  # faces the pipeline did not give to the gate
    seconds: float = 0.0
    stopped_by: str = "end of source"

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _announce(report: FrameReport, stats: RunStats, out: TextIO | None = None) -> None:
    out = out or sys.stdout  # looked up per call: a default bound at import would keep a stale stream
    for capture, files in report.written:
        d = capture.decision
        stats.captures.append(str(files.image))
        print(f"captured track {d.track_id} frame {d.frame_index}: utility {d.scores.get('utility', float('nan')):.1f}"
              f" perceptual {d.scores.get('perceptual', float('nan')):.1f} -> {files.image}", file=out, flush=True)
    for err in report.errors:
        print(f"warning: {err}", file=out, flush=True)
    stats.skip_reasons.update(item[1] for item in report.skipped)  # (track_id, reason, ...)


def run(frames: Iterable[Frame], pipeline: CapturePipeline, max_frames: int | None = None, show: bool = False,
        out: TextIO | None = None, sigterm: SigtermStop | None = None) -> RunStats:
    """Feed frames through the pipeline until the source ends, ``max_frames``, 'q'/Esc in the window, Ctrl-C or
    SIGTERM (``sigterm``, from :func:`stop_on_sigterm`); the pipeline is flushed however it ends, with both signals
    disarmed so neither can interrupt the flush."""
    out = out or sys.stdout
    stats = RunStats()
    t0 = time.perf_counter()
    it = iter(frames)
    try:
        while max_frames is None or stats.frames + stats.bad_frames < max_frames:
            try:
                frame = next(it)
            except StopIteration:
                break
            try:
                report = pipeline.process(frame.image, frame.index, frame.timestamp)
            except (FrameError, ValueError, cv2.error) as e:
                stats.bad_frames += 1
                log.warning("frame %s skipped: %s", frame.index, e)
                continue
            stats.frames += 1
            _announce(report, stats, out)
            if show:
                elapsed = time.perf_counter() - t0
                cv2.imshow(WINDOW, draw_overlay(frame.image, report, stats.frames / max(elapsed, 1e-9)))
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    stats.stopped_by = "user"
                    break
        else:
            stats.stopped_by = "--max-frames"
    except KeyboardInterrupt:
        stats.stopped_by = "Ctrl-C"
    except Terminated:
        stats.stopped_by = "SIGTERM"
    except SourceError as e:
        if stats.frames + stats.bad_frames == 0:
            raise  # it never delivered a frame: a wrong index/URL, not a lost source (main says so, exit 1)
        stats.stopped_by = f"source lost: {e}"
    finally:
        if sigterm is not None:
            sigterm.armed = False
        stats.seconds = time.perf_counter() - t0
        _announce(pipeline.flush(), stats, out)
    return stats


def _skip_summary(stats: RunStats, total: int) -> str:
    """``N not gated`` faces the pipeline kept from the gate, with why (they have no decision in the log)."""
    reasons = "; ".join(f"{n}x {why}" for why, n in stats.skip_reasons.most_common())
    return f"{total} not gated" + (f" ({reasons})" if reasons else "")


def open_outputs(args: argparse.Namespace) -> tuple[CaptureWriter, DecisionLog | None]:
    """The capture folder and decision log, made before the (slow) model load so a bad --out/--log fails fast;
    OSError/ValueError name the problem."""
    writer = CaptureWriter(args.out, image_format=args.image_format, save_aligned=args.save_aligned)
    max_bytes = None if args.log_max_mb is None else max(1, int(args.log_max_mb * 1e6))
    logger = DecisionLog(args.log, max_bytes=max_bytes, backups=args.log_backups) if args.log else None
    return writer, logger


def configure_logging(verbose: bool) -> None:
    """Warnings (reconnects, unprocessable frames) always; ``-v`` adds the SDK's INFO lines (each bad read a source
    skips, each face kept from the gate). The level is set even where logging was configured already."""
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.INFO if verbose else logging.WARNING)


def check_gate_overrides(args: argparse.Namespace) -> str | None:
    """Why the --gate overrides contradict the bundle's thresholds, or None; read from the manifest before any
    source, output or model is opened."""
    if not args.gate:
        return None
    try:
        path = args.bundle if args.bundle is not None else default_bundle_path(backend=args.backend)
        bundle = load_bundle(path)
    except BundleError as e:  # the Scorer would refuse the bundle the same way; not a --gate problem
        return str(e)
    try:
        bundle.gate_config(**args.gate)
    except ValueError as e:
        return f"--gate: {e}"
    return None


def close_outputs(logger: DecisionLog | None, scorer: Scorer, show: bool) -> list[str]:
    """Close the decision log, the scorer and the window, each whatever the others do (a log on a full disk must
    not keep a TensorRT engine's device memory or the summary from the user); what failed, as messages."""
    problems = []
    if logger is not None:
        try:
            logger.close()
        except OSError as e:
            problems.append(f"decision log {logger.path} could not be closed ({e}); its last lines may be lost")
    scorer.close()  # a TensorRT engine's device buffers go back now
    if show:
        cv2.destroyAllWindows()
    return problems


def lost_output(pipeline: CapturePipeline, args: argparse.Namespace) -> str | None:
    """What of the run's output could not be written (a full disk, a removed card), or None."""
    lost = []
    if pipeline.counts["write_errors"]:
        lost.append(f"{pipeline.counts['write_errors']} capture(s) could not be written to {args.out}")
    if pipeline.counts["log_errors"]:
        lost.append(f"{pipeline.counts['log_errors']} decision log write(s) to {args.log} failed")
    return "; ".join(lost) + " (the warnings above say why)" if lost else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    if (problem := check_gate_overrides(args)) is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        source = open_source(args.source, wait=args.wait_for_source)
    except (SourceSpecError, SourceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        writer, logger = open_outputs(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        options = {"backend": args.detector_backend, "max_side": args.max_side} if args.detector == "retinaface" \
            else None
        scorer = Scorer(args.bundle, backend=args.backend, detector=args.detector, threads=args.threads,
                        detector_options=options)
    except (BundleError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        if logger is not None:
            logger.close()
        return 2
    show = False
    if args.display != "off":
        show, why = display_available()
        if not show and args.display == "on":
            print(f"error: --display on, but no window can be opened: {why}", file=sys.stderr)
            if logger is not None:
                logger.close()
            scorer.close()
            return 2
        if not show:
            print(f"no display ({why}); running headless", flush=True)
    i = scorer.info
    print(f"bundle {i.bundle_id} ({i.target}): {i.model_file} [{i.precision}] on {i.backend}; detector "
          f"{i.detector}/{i.detector_backend}; source {source}", flush=True)
    print("scores: " + "; ".join(f"{name} is {text}" for name, text in i.scales.items()), flush=True)
    writer.bundle_id = i.bundle_id
    if logger is not None:
        logger.bundle_id = i.bundle_id
    try:
        gate = scorer.bundle.gate_config(**args.gate)
    except ValueError as e:  # an override the bundle's other thresholds contradict (release above accept, ...)
        print(f"error: --gate: {e}", file=sys.stderr)
        if logger is not None:
            logger.close()
        scorer.close()
        return 2
    pipeline = CapturePipeline(scorer, gate=gate, writer=writer, logger=logger,
                               tracker=IouTracker(max_missed_seconds=args.track_timeout))
    problems: list[str] = []
    # The handlers stay until the summary is out: a Ctrl-C or SIGTERM during the shutdown is ignored, not a traceback
    with stop_on_sigterm() as sigterm:
        try:
            with source:
                try:
                    stats = run(source, pipeline, args.max_frames, show, sigterm=sigterm)
                except (Terminated, KeyboardInterrupt) as e:  # before the run's loop began: nothing was scored
                    sigterm.armed = False
                    stats = RunStats(stopped_by="SIGTERM" if isinstance(e, Terminated) else "Ctrl-C")
                    _announce(pipeline.flush(), stats)
        except SourceError as e:  # the source could not even start
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            sigterm.armed = False
            problems = close_outputs(logger, scorer, show)
        reasons = ", ".join(f"{k} {v}" for k, v in pipeline.reasons.most_common()) or "none"
        print(f"{stats.frames} frames ({stats.bad_frames} unprocessable, skipped) in {stats.seconds:.1f} s = "
              f"{stats.fps:.1f} FPS; "
              f"{pipeline.counts['faces']} faces, {_skip_summary(stats, pipeline.counts['skipped'])}; "
              f"{len(stats.captures)} captures in {args.out}; "
              f"rejections: {reasons}; stopped by {stats.stopped_by}", flush=True)
        if (lost := lost_output(pipeline, args)) is not None:
            problems.insert(0, lost)
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or stats.stopped_by.startswith("source lost") else 0


if __name__ == "__main__":
    sys.exit(main())
