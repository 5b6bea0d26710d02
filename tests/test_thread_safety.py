"""One Scorer, one detector, one engine shared by threads: every caller gets exactly what it would get alone.

Two cameras feeding one Scorer from two threads is how a kiosk is usually written. The stateful engines (a LiteRT
interpreter's input/output tensors, an OpenCV DNN net's blobs, a TensorRT context's buffers) must not let one
caller's face in, or its score out, while another caller is between feeding and reading.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import PORTRAITS

from fiqa_runtimes import Backend, BackendUnavailable, available_backends
from fiqa_sdk import BundleError, Scorer, align_face, create_detector
from fiqa_sdk.detection import DETECTOR_BACKENDS

THREADS = 4
SCORER_ROUNDS = 5  # per thread: each round scores every face once, in an order of its own
DETECTOR_ROUNDS = 3


class Tally:
    """What the threads' calls gave: each call either raised, or matched the single-threaded result, or not."""

    def __init__(self) -> None:
        self.calls, self.wrong, self.errors = 0, 0, []
        self._lock = threading.Lock()  # the counts are updated from every thread

    def check(self, call, expected, same) -> None:
        try:
            got, error = call(), None
        except Exception as e:  # noqa: BLE001 -- counted and reported; the thread goes on calling
            got, error = None, e
        with self._lock:
            self.calls += 1
            if error is not None:
                self.errors.append(error)
            elif not same(got, expected):
                self.wrong += 1

    def assert_clean(self, what: str) -> None:
        assert not self.errors, f"{what}: {len(self.errors)} of {self.calls} calls raised, e.g. {self.errors[0]!r}" \
                                f" ({self.wrong} more gave a wrong result)"
        assert not self.wrong, f"{what}: {self.wrong} of {self.calls} results differ from the single-threaded ones"


def _in_threads(work, n: int = THREADS) -> None:
    """Run ``work(thread_index)`` in ``n`` threads released together."""
    start = threading.Barrier(n)

    def body(i: int) -> None:
        start.wait()
        work(i)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@pytest.fixture(scope="module")
def faces(samples, retinaface_cv) -> list[np.ndarray]:
    """Eight distinct aligned faces: t1's six, Grace Hopper, the astronaut."""
    out = []
    for name in ("t1", "grace_hopper", "astronaut"):
        out += [align_face(samples[name], d.landmarks) for d in retinaface_cv(samples[name])]
    assert len(out) == 8
    return out


def _shared_scorer(backend: str) -> Scorer:
    try:
        return Scorer(backend=backend, detector=None)  # the embedded default bundle that this engine runs
    except (BackendUnavailable, BundleError) as e:  # cannot start here, or no embedded bundle is built for it
        pytest.skip(f"{backend}: {e}")


@pytest.mark.parametrize("backend", available_backends())
def test_threads_sharing_a_scorer_get_their_own_faces_scores(backend, faces):
    scorer = _shared_scorer(backend)
    alone = [scorer.score(face).scores for face in faces]
    tally = Tally()

    def score_faces(thread: int) -> None:
        order = np.random.default_rng(thread).permutation(len(faces))
        for _ in range(SCORER_ROUNDS):
            for i in order:
                tally.check(lambda: scorer.score(faces[i]).scores, alone[i],
                            lambda got, want: np.allclose(got, want, rtol=0, atol=1e-6))

    _in_threads(score_faces)
    tally.assert_clean(f"Scorer on {backend}")


def _as_tuple(detections) -> list[tuple]:
    return [(d.box.tolist(), d.landmarks.tolist(), d.score) for d in detections]


DETECTORS = [("retinaface", {"backend": b}) for b in DETECTOR_BACKENDS if b in available_backends()] + [("dlib", {})]


@pytest.mark.parametrize("name, options", DETECTORS, ids=["-".join([n, *o.values()]) for n, o in DETECTORS])
def test_threads_sharing_a_detector_get_their_own_frames_faces(name, options, samples):
    photos = [samples[p] for p in PORTRAITS]  # three sizes: RetinaFace's anchor cache is filled by the threads
    reference = create_detector(name, **options)
    alone = [_as_tuple(reference(photo)) for photo in photos]
    shared = create_detector(name, **options)
    tally = Tally()

    def detect_photos(thread: int) -> None:
        for _ in range(DETECTOR_ROUNDS):
            for k in range(len(photos)):
                i = (k + thread) % len(photos)  # each thread starts on another photo
                tally.check(lambda: _as_tuple(shared(photos[i])), alone[i], lambda got, want: got == want)

    _in_threads(detect_photos)
    tally.assert_clean(f"{name} detector {options}")


class _OverlapProbe(Backend):
    """An engine that counts how many calls are inside it at once: what any backend added later inherits."""

    name = "probe"

    def __init__(self) -> None:
        super().__init__()
        self.inside = self.most_inside = 0

    input_names = property(lambda self: ["x"])
    output_names = property(lambda self: ["y"])

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        time.sleep(0.002)  # let the other threads in, if anything would
        self.inside -= 1
        return {"y": inputs["x"] + 1}


def test_a_backend_lets_one_call_at_a_time_into_its_engine():
    probe = _OverlapProbe()
    _in_threads(lambda _: [probe.run1(np.zeros(1, np.float32)) for _ in range(10)])
    assert probe.most_inside == 1
