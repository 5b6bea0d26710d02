"""Scorer on real aligned faces from pip-shipped photos, with a real tiny bundle (ONNX + TFLite of one torch net).

The 0-100 values are checked against a hand computation: the ONNX file run directly in ONNX Runtime on faces
normalised here by hand, then the manifest's formula.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from bundle_fixtures import (
    TinyQualityNet,
    aligned_faces,
    export_onnx,
    export_tflite,
    tflite_cache,
    torch_scores,
    write_test_bundle,
)

import fiqa_sdk.bundle as sdk_bundle
from fiqa_sdk import FrameError, faces_to_tensor, load_sample
from fiqa_sdk.bundle import BundleError, ScoreSpec, load_bundle
from fiqa_sdk.scorer import FaceResult, Scorer, ScoreBatch

GATE_KEYS = {"brightness", "sharpness", "iod_px", "yaw", "pitch", "roll"}


@pytest.fixture(scope="module")
def faces(retinaface_ort) -> np.ndarray:
    """8 aligned faces: t1's six, Grace Hopper, the astronaut."""
    return np.concatenate(list(aligned_faces(retinaface_ort).values()))


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, pytestconfig, faces):
    """Specs chosen from the net's own outputs on these faces so that some scores clip and some do not."""
    d = tmp_path_factory.mktemp("scorer")
    net = TinyQualityNet(seed=0)
    onnx = export_onnx(net, d / "student.onnx")
    tflite = export_tflite(net, d / "student.tflite", tflite_cache(pytestconfig))
    z = torch_scores(net, faces_to_tensor(faces))
    specs = []
    for name, i, mean, std in (("utility", 0, 2.5, 0.8), ("perceptual", 1, 55.0, 9.0)):
        t = z[:, i] * std + mean
        lo, hi = np.percentile(t, [20, 80])
        specs.append(ScoreSpec(name, i, f"{name}-teacher", mean, std, float(lo), float(hi)))
    return write_test_bundle(d / "bundle", onnx, tflite, specs=specs)


@pytest.fixture(scope="module")
def scorer(bundle_path, retinaface_ort) -> Scorer:
    return Scorer(bundle_path, backend="onnxruntime", detector=retinaface_ort, threads=1)


def _by_hand(bundle_path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Runtime on the bundled file, normalisation and the 0-100 formula written out here."""
    import onnxruntime as ort

    manifest = json.loads((bundle_path / "manifest.json").read_text())
    x = ((faces[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(0, 3, 1, 2)
    sess = ort.InferenceSession(str(bundle_path / "student.onnx"), providers=["CPUExecutionProvider"])
    z = sess.run(["scores"], {"faces": np.ascontiguousarray(x)})[0]
    out = np.zeros_like(z, dtype=np.float64)
    for s in manifest["scores"]:
        t = z[:, s["index"]] * s["std"] + s["mean"]
        out[:, ["utility", "perceptual"].index(s["name"])] = np.clip(100 * (t - s["lo"]) / (s["hi"] - s["lo"]), 0, 100)
    return z, out


def test_scores_equal_a_hand_computation_from_the_onnx_output_and_manifest(scorer, bundle_path, faces):
    got = scorer.score(faces)
    z, expected = _by_hand(bundle_path, faces)
    assert isinstance(got, ScoreBatch) and len(got) == len(faces) == 8
    np.testing.assert_allclose(got.scores, expected, atol=1e-3)
    np.testing.assert_allclose(got.z, z, atol=1e-5)
    inside = (got.scores > 0) & (got.scores < 100)
    assert inside.any() and (~inside).any(), "the test specs should exercise both the linear part and the clip"
    first = got[0]
    assert (first.utility, first.perceptual) == (got.utility[0], got.perceptual[0])
    assert first.utility_z == pytest.approx(float(z[0, 0]), abs=1e-5)
    # One face (HxWx3) and a list of faces give the same numbers as the batch.
    assert scorer.score(faces[2])[0] == got[2]
    np.testing.assert_allclose(scorer.score(list(faces[:3])).scores, got.scores[:3])


@pytest.mark.parametrize("backend", ["litert", "opencv"])
def test_backends_agree_with_onnxruntime_in_batches(bundle_path, faces, scorer, backend):
    other = Scorer(bundle_path, backend=backend, detector=None, threads=1, max_batch=3)
    assert other.info.backend == backend and other.max_batch == 3
    ref = scorer.score(faces)
    got = other.score(faces)  # 8 faces in chunks of 3, 3, 2: LiteRT resizes its input tensor each time
    np.testing.assert_allclose(got.z, ref.z, atol=1e-4)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-2)
    np.testing.assert_allclose(other.score(faces[5]).z, ref.z[5:6], atol=1e-4)


def test_auto_uses_the_bundles_preference_and_reports_it(bundle_path):
    s = Scorer(bundle_path, detector=None)
    b = load_bundle(bundle_path)
    assert s.info.backend == "litert" and s.info.model_file == "student.tflite" and s.info.format == "tflite"
    assert (s.info.target, s.info.bundle_id, s.info.precision) == ("cpu", b.bundle_id, "fp32")
    assert s.info.detector is None and s.score_names == ("utility", "perceptual")
    assert "litert" in repr(s) and b.bundle_id in repr(s)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((250, 250, 3), np.uint8), "align faces with fiqa_sdk.align_face"),
    (np.zeros((2, 96, 96, 3), np.uint8), r"got \(2, 96, 96, 3\)"),
    (np.zeros((112, 112), np.uint8), "to_bgr"),
    (np.zeros((112, 112, 4), np.uint8), "to_bgr"),
    # channels-first and gray + alpha: the hint that applies (was "convert with to_bgr", which refuses them too)
    (np.zeros((3, 112, 112), np.uint8), r"channels-first \(CHW\).*pass faces\.transpose\(1, 2, 0\)"),
    (np.zeros((2, 3, 112, 112), np.uint8), r"channels-first \(NCHW\).*pass faces\.transpose\(0, 2, 3, 1\)"),
    ([np.zeros((3, 112, 112), np.uint8)] * 2, r"got \(3, 112, 112\); this looks channels-first \(CHW\)"),
    (np.zeros((112, 112, 2), np.uint8), r"2 channels is gray \+ alpha: .*to_bgr\(face\[\.\.\., 0\]\)"),
    (np.zeros((112, 112, 5), np.uint8), "5 channels is no image layout"),
    (np.zeros((112, 112, 3), np.float32), "must be uint8"),
    (np.zeros((1, 1, 112, 112, 3), np.uint8), "expected aligned faces"),
    ([np.zeros((112, 112, 3), np.uint8), np.zeros((100, 100, 3), np.uint8)], "different shapes"),
])
def test_score_rejects_what_is_not_aligned_faces(scorer, bad, match):
    with pytest.raises(ValueError, match=match):
        scorer.score(bad)


@pytest.mark.parametrize("as_list", [False, True])
def test_many_faces_are_scored_one_batch_at_a_time_in_bounded_memory(bundle_path, faces, scorer, monkeypatch,
                                                                    as_list):
    """1,000 faces at once (37 MB of uint8) used to become one 150 MB float tensor plus temporaries of its size;
    now no more than max_batch faces are converted at a time, and the scores are those of small batches."""
    import tracemalloc

    import fiqa_sdk.scorer as scorer_module

    batched = Scorer(bundle_path, backend="onnxruntime", detector=None, threads=1, max_batch=16)
    many = np.concatenate([faces] * 125)  # 1,000 faces: the 8 test faces over and over
    converted: list[int] = []
    to_tensor = scorer_module.faces_to_tensor
    monkeypatch.setattr(scorer_module, "faces_to_tensor", lambda x: converted.append(len(x)) or to_tensor(x))
    batch = list(many) if as_list else many
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    try:
        before = tracemalloc.get_traced_memory()[0]
        got = batched.score(batch)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert max(converted) == 16 and sum(converted) == 1000
    # one batch's float tensor is 2.4 MB (16 x 3 x 112 x 112 x 4 bytes), all 1,000 faces' 150 MB
    assert peak < 16 * 2**20, f"scoring 1,000 faces held {peak / 2**20:.0f} MB at its peak"
    small = scorer.score(faces)  # the 8 faces in one small batch
    np.testing.assert_allclose(got.z.reshape(125, 8, 2), np.broadcast_to(small.z, (125, 8, 2)), atol=1e-5)
    np.testing.assert_allclose(got.scores.reshape(125, 8, 2), np.broadcast_to(small.scores, (125, 8, 2)), atol=1e-3)


def test_score_of_no_faces_is_an_empty_batch(scorer):
    for empty in ([], np.zeros((0, 112, 112, 3), np.uint8)):
        batch = scorer.score(empty)
        assert len(batch) == 0 and batch.scores.shape == (0, 2) and list(batch) == []


def test_score_frame_finds_scores_and_measures_all_six_t1_faces(scorer, samples):
    results = scorer.score_frame(samples["t1"])
    assert len(results) == 6
    crops = np.stack([r.aligned for r in results])
    direct = scorer.score(crops)
    for r, s in zip(results, direct):
        assert isinstance(r, FaceResult) and r.aligned.shape == (112, 112, 3) and r.aligned.dtype == np.uint8
        assert (r.utility, r.perceptual) == (s.utility, s.perceptual) and r.z == (s.utility_z, s.perceptual_z)
        assert GATE_KEYS <= set(r.measures) and r.pose_error is None
        assert all(np.isfinite(v) for v in r.measures.values())
        assert r.measures["iod_px"] == pytest.approx(r.detection.size, rel=1e-5)
    assert len({round(r.measures["sharpness"], 3) for r in results}) == 6  # measured per face, not shared


def test_score_frame_takes_gray_bgra_and_odd_sized_frames(scorer):
    bgr = load_sample("grace_hopper")
    ref = scorer.score_frame(bgr)
    assert len(ref) == 1
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    assert scorer.score_frame(bgra)[0].utility == ref[0].utility
    gray = scorer.score_frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    assert len(gray) == 1 and np.all(gray[0].aligned[..., 0] == gray[0].aligned[..., 2])
    odd = bgr[7:518, 3:390]  # 511 x 387: neither side a multiple of 32
    got = scorer.score_frame(odd)
    assert len(got) == 1
    a, b = got[0].detection.box + [3, 7, 3, 7], ref[0].detection.box  # same face, back in full-frame pixels
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    assert inter / union > 0.9


def test_score_frame_without_faces_and_on_empty_frames(scorer, bundle_path):
    assert scorer.score_frame(np.full((240, 320, 3), 128, np.uint8)) == []
    with pytest.raises(FrameError, match="empty"):
        scorer.score_frame(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(FrameError, match="not an image"):
        scorer.score_frame(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(RuntimeError, match="detector=None"):
        Scorer(bundle_path, detector=None).score_frame(load_sample("grace_hopper"))


def test_scorer_argument_errors(bundle_path, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        Scorer(bundle_path, threads=0, detector=None)
    with pytest.raises(BundleError, match="no manifest.json"):
        Scorer(tmp_path, detector=None)
    monkeypatch.setattr(sdk_bundle, "BUNDLES_DIR", tmp_path / "none")
    with pytest.raises(BundleError, match="fiqa-compile --target cpu"):
        Scorer(detector=None)


def test_scorer_is_exported_from_the_package():
    import fiqa_sdk

    assert fiqa_sdk.Scorer is Scorer


def test_device_modules_import_nothing_heavy():
    code = ("import sys, json, fiqa_sdk.scorer, fiqa_sdk.bundle, fiqa_sdk.pipeline\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'fiqa_compile', 'litert_torch', 'onnx', 'matplotlib'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_closing_a_scorer_releases_its_engine_once_and_stops_scoring(bundle_path, faces):
    closed = []
    with Scorer(bundle_path, backend="onnxruntime", detector=None) as s:
        engine = s._engine
        engine.close = lambda: closed.append(True)
        assert len(s.score(faces[:2])) == 2
    assert closed == [True]
    s.close()  # twice is fine
    assert closed == [True]
    with pytest.raises(RuntimeError, match="this Scorer was closed"):
        s.score(faces[:1])


def test_the_manifest_index_picks_each_scores_model_output_column(tmp_path, bundle_path, faces):
    """A bundle whose model emits (perceptual, utility): each score must read the column its ``index`` names."""
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    specs = [ScoreSpec(s["name"], 1 - s["index"], s["teacher"], s["mean"], s["std"], s["lo"], s["hi"])
             for s in manifest["scores"]]
    swapped = write_test_bundle(tmp_path / "swapped", bundle_path / "student.onnx", specs=specs)
    got = Scorer(swapped, backend="onnxruntime", detector=None, threads=1).score(faces)
    z, expected = _by_hand(swapped, faces)
    np.testing.assert_allclose(got.scores, expected, atol=1e-3)
    np.testing.assert_allclose([f.utility_z for f in got], z[:, 1], atol=1e-5)
    assert not np.allclose(z[:, 0], z[:, 1])  # the two columns differ, so a mix-up would show


def test_an_engine_built_for_a_batch_cap_never_gets_a_larger_batch(bundle_path, faces, scorer, monkeypatch):
    """TensorRT engines are built for tensorrt.build.max_batch faces: 16 faces must go 8 + 8, and the skipped
    candidates (e.g. tensorrt without a GPU) are reported in Scorer.info."""
    original = sdk_bundle.Bundle.load_model
    sizes: list[int] = []

    def capped(self, backend="auto", threads=None, model=None):
        loaded = original(self, backend=backend, threads=threads, model=model)
        loaded.choice = dataclasses.replace(loaded.choice, options={**loaded.choice.options, "max_batch": 8})
        engine_run = loaded.backend.run

        def run(feeds):
            n = len(next(iter(feeds.values())))
            assert n <= 8, f"engine built for 8 got a batch of {n}"
            sizes.append(n)
            return engine_run(feeds)

        loaded.backend.run = run
        loaded.skipped.append((loaded.choice, "tensorrt: no GPU (test)"))
        return loaded

    monkeypatch.setattr(sdk_bundle.Bundle, "load_model", capped)
    trt_like = Scorer(bundle_path, backend="onnxruntime", detector=None, threads=1, max_batch=32)
    assert trt_like.max_batch == 8 and trt_like.info.skipped == ("onnxruntime/student.onnx: tensorrt: no GPU (test)",)
    sixteen = np.concatenate([faces, faces])
    sizes.clear()
    got = trt_like.score(sixteen)
    assert sizes == [8, 8]
    np.testing.assert_allclose(got.scores, scorer.score(sixteen).scores, atol=1e-4)


@pytest.mark.parametrize("max_batch", [1, 3, 16])
def test_a_mirror_average_bundle_scores_the_mean_of_each_face_and_its_mirror(tmp_path, bundle_path, faces, max_batch):
    """max_batch 1 runs the two halves apart, 3 and 16 run a face and its mirror in one engine call."""
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    specs = [ScoreSpec(s["name"], s["index"], s["teacher"], s["mean"], s["std"], s["lo"], s["hi"])
             for s in manifest["scores"]]
    mirrored = write_test_bundle(tmp_path / "mirror", bundle_path / "student.onnx", specs=specs, mirror_average=True)
    scorer = Scorer(mirrored, backend="onnxruntime", detector=None, threads=1, max_batch=max_batch)
    engine_run, sizes = scorer._engine.run, []
    scorer._engine.run = lambda feeds: sizes.append(len(next(iter(feeds.values())))) or engine_run(feeds)
    got = scorer.score(faces)
    # never more than max_batch rows per engine call (a TensorRT engine is built for that many); both halves of
    # a face in one call whenever they fit
    assert max(sizes) <= max_batch and sum(sizes) == 2 * len(faces)
    assert sizes == ([1] * 16 if max_batch == 1 else [2] * 8 if max_batch == 3 else [16])
    z, _ = _by_hand(bundle_path, faces)
    z_mirror, _ = _by_hand(bundle_path, np.ascontiguousarray(faces[:, :, ::-1]))
    assert not np.allclose(z, z_mirror, atol=1e-3)  # the test net is not mirror-symmetric, so averaging shows
    assert scorer.info.mirror_average is True
    np.testing.assert_allclose(got.z, (z + z_mirror) / 2, atol=1e-5)
    # mirror-symmetric by construction: a face and its mirror image score the same
    np.testing.assert_allclose(scorer.score(np.ascontiguousarray(faces[:, :, ::-1])).z, got.z, atol=1e-5)
