"""fiqa-eval end to end on tiny label sets, method specs, bench/eval_teachers.py and bench/run.py.

The label sets are built here from real aligned faces (the photos pip packages ship) with seeded Gaussian-blur
versions; their embeddings are synthetic and drift from the identity's centre as the blur grows, so that blur
really costs recognition and a sharpness measure has something to find.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from fiqa_calibration.degradations import Chain, Step
from fiqa_compile.eval.cli import evaluate_qualities, main, pair_edc
from fiqa_compile.eval.metrics import krcc, plcc, srcc
from fiqa_compile.eval.pairs import build_pairs, held_out_rows
from fiqa_compile.eval.scorers import MethodSpecError, SampleView, parse_method
from fiqa_compile.models.dsl_fiqa import MEAN_LANDMARKS_68_ARCFACE112
from fiqa_compile.train.data import LabelSet
from fiqa_sdk import align_face
from fiqa_sdk.samples import sample_path

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def write_label_set(out: Path, faces: list[np.ndarray], n_ids: int, photos: int = 3, seed: int = 0) -> Path:
    """A labels.npz like fiqa-labels writes: clean + one blurred version per photo of multi-photo identities."""
    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {k: [] for k in ("crop", "lm68", "identity", "photo", "version", "cr", "mos",
                                             "severity", "chain", "emb")}
    lm = np.asarray(MEAN_LANDMARKS_68_ARCFACE112, np.float32)
    p = 0
    for i in range(n_ids):
        base = faces[i % len(faces)]
        centre = rng.normal(size=128)
        n_photos = 1 if i % 5 == 4 else photos
        for _ in range(n_photos):
            dx, dy = rng.uniform(-3, 3, 2)
            shifted = cv2.warpAffine(base, np.float32([[1, 0, dx], [0, 1, dy]]), (112, 112),
                                     borderMode=cv2.BORDER_REPLICATE)
            clean = np.clip(shifted * rng.uniform(0.85, 1.15), 0, 255).astype(np.uint8)
            e0 = centre + 0.35 * rng.normal(size=128)
            versions = [(0, clean, 0.0, "", e0)]
            if n_photos >= 2:
                s = float(rng.uniform(0.0, 1.0))
                chain = Chain((Step("gaussian_blur", s, int(rng.integers(1 << 30))),))
                versions.append((1, chain.apply(clean), s, json.dumps(chain.to_dict(), sort_keys=True),
                                 e0 + 20.0 * s ** 2 * rng.normal(size=128)))
            for v, crop, s, chain_text, e in versions:
                cols["crop"].append(crop)
                cols["lm68"].append(lm)
                cols["identity"].append(f"person_{i:03d}")
                cols["photo"].append(p)
                cols["version"].append(v)
                cols["cr"].append(1.5 - s + 0.05 * rng.normal() if n_photos >= 2 else np.nan)
                cols["mos"].append(100.0 * (1 - 0.6 * s))
                cols["severity"].append(s)
                cols["chain"].append(chain_text)
                cols["emb"].append(e / np.linalg.norm(e))
            p += 1
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "labels.npz", crop=np.asarray(cols["crop"], np.uint8), lm68=np.asarray(cols["lm68"], np.float32),
             identity=np.asarray(cols["identity"]), photo=np.asarray(cols["photo"], np.int32),
             version=np.asarray(cols["version"], np.int16), cr=np.asarray(cols["cr"], np.float32),
             mos=np.asarray(cols["mos"], np.float32), severity=np.asarray(cols["severity"], np.float32),
             chain=np.asarray(cols["chain"], dtype=str), emb=np.asarray(cols["emb"], np.float32))
    (out / "labels.json").write_text(json.dumps({"command": "test fixture (no source photos)"}))
    return out


@pytest.fixture(scope="module")
def aligned_faces(samples, retina_dets) -> list[np.ndarray]:
    return [align_face(samples[name], max(retina_dets[name], key=lambda d: d.score).landmarks)
            for name in ("grace_hopper", "tom_hanks", "astronaut", "t1")]


@pytest.fixture(scope="module")
def label_dir(tmp_path_factory, aligned_faces) -> Path:
    return write_label_set(tmp_path_factory.mktemp("labels"), aligned_faces, n_ids=120)


def _run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_end_to_end_with_baselines(label_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    rc, stdout, stderr = _run_cli(["--labels", str(label_dir), "--method", "baseline:sharpness", "--method",
                                   "baseline:random", "--fmr", "0.1", "--impostors", "500", "--random-seeds", "4",
                                   "--discard-limit", "0.2", "0.3", "--out", str(out)], capsys)
    assert rc == 0, stderr
    doc = json.loads((out / "eval.json").read_text())
    assert (out / "edc.png").read_bytes()[:8] == PNG_MAGIC
    assert doc["pairs"]["impostor"] == 500 and doc["pairs"]["genuine"] > 20
    assert doc["pairs"]["genuine_degraded"] == round(0.5 * doc["pairs"]["genuine"])
    assert doc["data"]["split"] == "held-out" and doc["skipped"] == []
    methods = {m["spec"]: m for m in doc["methods"]}
    assert set(methods) == {"baseline:sharpness", "baseline:random"}
    for m in methods.values():
        for key in ("pauc", "pauc_best", "pauc_excess", "fnmr_at_0_discard", "threshold", "fmr_at_threshold",
                    "n_genuine", "n_genuine_errors"):
            assert key in m, key
        for lim in ("0.2", "0.3"):
            assert 0.0 <= m["pauc_best"][lim] <= m["pauc"][lim] <= 1.0
            assert m["pauc_excess"][lim] == pytest.approx(m["pauc"][lim] - m["pauc_best"][lim])
        assert m["threshold"] == doc["threshold"] and m["n_genuine"] == doc["pairs"]["genuine"]
        assert m["fmr_at_threshold"] <= 0.1
    assert methods["baseline:random"]["seeds"] == 4 and "pauc_std" in methods["baseline:random"]
    assert methods["baseline:sharpness"]["n_genuine_errors"] > 0, "the fixture must produce recognition errors"
    # blur causes the errors here, so sorting by sharpness must beat a random order
    assert methods["baseline:sharpness"]["pauc"]["0.2"] < methods["baseline:random"]["pauc"]["0.2"]
    # an earlier evaluation is never replaced silently
    before = (out / "eval.json").read_bytes()
    again = ["--labels", str(label_dir), "--method", "baseline:random", "--fmr", "0.1", "--impostors", "500",
             "--out", str(out)]
    rc, _, stderr = _run_cli(again, capsys)
    assert rc == 2 and "already holds eval.json and edc.png" in stderr and "--force" in stderr
    assert (out / "eval.json").read_bytes() == before
    rc, _, stderr = _run_cli([*again, "--force"], capsys)
    assert rc == 0, stderr
    assert [m["spec"] for m in json.loads((out / "eval.json").read_text())["methods"]] == ["baseline:random"]
    assert "Laplacian sharpness" in stdout and "theoretical best" in stdout


def test_default_methods_list_face_size_as_skipped_without_photos(label_dir, tmp_path, capsys):
    rc, stdout, stderr = _run_cli(["--labels", str(label_dir), "--fmr", "0.1", "--impostors", "300",
                                   "--random-seeds", "2", "--out", str(tmp_path)], capsys)
    assert rc == 0, stderr
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert {m["spec"] for m in doc["methods"]} >= {"baseline:sharpness", "baseline:random"}
    skipped = {s["spec"]: s["reason"] for s in doc["skipped"]}
    assert "--photos" in skipped["baseline:face_size"]
    assert "skipped baseline:face_size" in stdout


def test_quality_equal_to_the_genuine_score_reaches_the_theoretical_best(label_dir):
    labels = LabelSet.load(label_dir)
    pairs = build_pairs(labels, held_out_rows(labels), n_impostors=500, seed=0)
    genuine = pairs.side_scores(True)
    oracle = pair_edc(pairs, genuine, fmr=0.1, limits=(0.2, 0.3))
    assert oracle.n_errors > 0
    for lim in (0.2, 0.3):
        assert oracle.pauc[lim] == pytest.approx(oracle.pauc_best[lim], abs=1e-12)
    # the reverse order is the worst: discarding correct comparisons first raises the FNMR
    worst = pair_edc(pairs, -genuine, fmr=0.1, limits=(0.2,))
    assert worst.pauc[0.2] > oracle.pauc[0.2] and worst.pauc[0.2] >= worst.start_error * 0.2
    # per-sample qualities go through min(q_a, q_b): a constant quality discards nothing
    flat = evaluate_qualities("c", "constant", pairs, [np.ones(len(labels))], fmr=0.1, limits=(0.2,))
    assert flat.pauc[0.2] == pytest.approx(flat.curve.start_error * 0.2)


@pytest.mark.parametrize("spec, message, fix", [
    ("magic:foo", "unknown method kind 'magic'", "baseline:sharpness|face_size|random"),
    ("baseline:nope", "unknown baseline 'nope'", "baseline:sharpness|face_size|random"),
    ("sharpness", "is not KIND:VALUE", "teacher:DIR[#tta], bundle:DIR"),
    ("teacher:/no/such/teacher", "does not exist", "teacher.json + teacher.pt"),
    ("bundle:/no/such/bundle", "does not exist", "manifest.json"),
])
def test_unknown_method_spec_gives_a_clear_error(spec, message, fix, label_dir, tmp_path, capsys):
    with pytest.raises(MethodSpecError, match=message):
        parse_method(spec)
    rc, _, stderr = _run_cli(["--labels", str(label_dir), "--method", spec, "--out", str(tmp_path)], capsys)
    assert rc == 2 and message in stderr and fix in stderr
    assert not (tmp_path / "eval.json").exists()


def test_teacher_dir_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "teacher.json").write_text("{}")
    with pytest.raises(MethodSpecError, match="teacher.json and teacher.pt"):
        parse_method(f"teacher:{tmp_path}")


def test_face_size_needs_face_px_and_uses_it():
    m = parse_method("baseline:face_size")
    crops = np.zeros((3, 112, 112, 3), np.uint8)
    with pytest.raises(MethodSpecError, match="--photos"):
        m.score(SampleView(crops))
    np.testing.assert_array_equal(m.score(SampleView(crops, face_px=np.array([40.0, 5.0, 20.0]))), [40, 5, 20])


def test_cli_on_a_face_folder_with_dlib_embeddings(tmp_path, samples, capsys):
    """--faces: real detection, alignment, degradation and dlib embeddings; face size from the source photos."""
    root = tmp_path / "faces"
    for name in ("grace_hopper", "tom_hanks", "astronaut"):
        (root / name).mkdir(parents=True)
        shutil.copy(sample_path(name), root / name / f"{name}_0001{sample_path(name).suffix}")
        small = cv2.resize(samples[name], None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(root / name / f"{name}_0002.png"), small)
    out = tmp_path / "eval"
    rc, stdout, stderr = _run_cli(["--faces", str(root), "--split", "all", "--versions", "1", "--method",
                                   "baseline:face_size", "--method", "baseline:sharpness", "--fmr", "0.2",
                                   "--impostors", "12", "--out", str(out)], capsys)
    assert rc == 0, stderr
    doc = json.loads((out / "eval.json").read_text())
    assert doc["data"]["source"] == "faces" and doc["pairs"]["genuine"] == 3 and doc["pairs"]["impostor"] == 12
    assert [m["spec"] for m in doc["methods"]] == ["baseline:face_size", "baseline:sharpness"]
    assert (out / "edc.png").is_file()


def test_bundle_method_scores_through_the_sdk_scorer(label_dir, tmp_path, capsys):
    """bundle:DIR runs a real (tiny) bundle's ONNX through fiqa_sdk.Scorer; its outputs track sharpness."""
    from bundle_fixtures import SharpnessBrightnessNet, export_onnx, torch_scores, write_test_bundle

    from fiqa_sdk import faces_to_tensor
    from fiqa_sdk.bundle import ScoreSpec
    from fiqa_sdk.scorer import Scorer

    labels = LabelSet.load(label_dir)
    net = SharpnessBrightnessNet()
    onnx = export_onnx(net, tmp_path / "student.onnx")
    z = torch_scores(net, faces_to_tensor(labels.crop[:200]))
    specs = [ScoreSpec(name, i, f"{name}-teacher", 0.0, 1.0, float(z[:, i].min()) - 5, float(z[:, i].max()) + 5)
             for i, name in enumerate(("utility", "perceptual"))]  # wide limits: no clipping, no ties
    bundle = write_test_bundle(tmp_path / "bundle", onnx, specs=specs)
    method = parse_method(f"bundle:{bundle}", bundle_backend="onnxruntime")
    perceptual = parse_method(f"bundle:{bundle}#perceptual", bundle_backend="onnxruntime")
    view = SampleView(labels.crop[:40])
    expected = Scorer(bundle, backend="onnxruntime", detector=None).score(labels.crop[:40])
    np.testing.assert_allclose(method.score(view), expected.utility)
    np.testing.assert_allclose(perceptual.score(view), expected.perceptual)
    blurred = labels.version[:40] > 0
    assert method.score(view)[blurred].mean() < method.score(view)[~blurred].mean()
    with pytest.raises(MethodSpecError, match="not 'speed'"):
        parse_method(f"bundle:{bundle}#speed", bundle_backend="onnxruntime")
    rc, _, stderr = _run_cli(["--labels", str(label_dir), "--method", f"bundle:{bundle}", "--fmr", "0.1",
                              "--impostors", "300", "--bundle-backend", "onnxruntime", "--out", str(tmp_path / "e")],
                             capsys)
    assert rc == 0, stderr
    doc = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert doc["methods"][0]["name"].startswith("student utility") and 0 <= doc["methods"][0]["pauc"]["0.2"] <= 1


# ----------------------------------------------------------------------------------- bench/eval_teachers.py
def _tiny_teacher(path: Path, task: str, model: str, mean: float, std: float) -> Path:
    import torch

    from fiqa_compile.models.registry import create_model

    torch.manual_seed(0)
    state = {k: v.half() if v.is_floating_point() else v for k, v in create_model(model).state_dict().items()}
    path.mkdir(parents=True)
    torch.save(state, path / "teacher.pt")
    info = {"task": task, "model": model, "score": {"mean": mean, "std": std},
            "sha256": hashlib.sha256((path / "teacher.pt").read_bytes()).hexdigest()}
    (path / "teacher.json").write_text(json.dumps(info))
    return path


def _quick_report(pred, target) -> dict:
    """correlation_report without its logistic fit, which on an untrained teacher's uncorrelated scores runs to
    its 20,000-evaluation limit (~10 s a call); the fit itself is tested with the metrics."""
    return {"n": len(pred), "srcc": srcc(pred, target), "krcc": krcc(pred, target), "plcc": plcc(pred, target),
            "plcc_fit": math.nan, "logistic": "none"}


def test_eval_teachers_on_tiny_inputs(tmp_path, aligned_faces, capsys, monkeypatch):
    """Untrained tiny teachers: checks the wiring and the report, not the teachers' quality."""
    labels_dir = write_label_set(tmp_path / "labels", aligned_faces, n_ids=40, seed=1)
    util = _tiny_teacher(tmp_path / "u", "utility", "vit_fiqa_tiny", 1.0, 0.3)
    perc = _tiny_teacher(tmp_path / "p", "perceptual", "dsl_fiqa_tiny", 80.0, 10.0)
    mod = _bench_module("eval_teachers")
    monkeypatch.setattr(mod, "correlation_report", _quick_report)
    out = tmp_path / "results"
    rc = mod.main(["--labels", str(labels_dir), "--utility", str(util), "--perceptual", str(perc), "--out", str(out),
                   "--ladder-faces", "2", "--kinds", "gaussian_blur", "jpeg", "--fmr", "0.1", "--impostors", "100",
                   "--random-seeds", "2", "--threads", "1"])
    assert rc == 0
    doc = json.loads((out / "teachers_eval.json").read_text())
    assert (out / "teachers_edc.png").read_bytes()[:8] == PNG_MAGIC
    md = (out / "teachers_eval.md").read_text()
    assert "(a) Agreement" in md and "(b) Severity ladders" in md and "(c) EDC" in md
    a = doc["label_agreement"]
    assert a["utility"]["label"] == "cr" and a["perceptual"]["label"] == "mos"
    labels = LabelSet.load(labels_dir)
    held = held_out_rows(labels)
    assert a["perceptual"]["all"]["n"] == len(held)
    assert a["utility"]["all"]["n"] == int(np.isfinite(labels.cr[held]).sum())
    assert a["utility"]["all"]["n_undefined_labels"] == int((~np.isfinite(labels.cr[held])).sum()) > 0
    assert set(doc["severity_ladders"]) == {"gaussian_blur", "jpeg"}
    for entry in doc["severity_ladders"].values():
        for task in ("utility", "perceptual"):
            assert 0.0 <= entry[task]["monotonic_share"] <= 1.0
            assert len(entry[task]["mean_score_by_severity"]) == 6
    # severity 0 is the clean crop, so both ladders start at the same mean score
    b = doc["severity_ladders"]
    assert b["gaussian_blur"]["utility"]["mean_score_by_severity"][0] == pytest.approx(
        b["jpeg"]["utility"]["mean_score_by_severity"][0], rel=1e-5)
    edc_doc = doc["edc"]
    specs = [m["spec"] for m in edc_doc["methods"]]
    assert specs == ["teacher:utility", "teacher:perceptual", "baseline:sharpness", "baseline:random"]
    for m in edc_doc["methods"]:
        assert 0.0 <= m["pauc"]["0.2"] <= 1.0 and m["pauc"]["0.2"] >= edc_doc["theoretical_best"]["0.2"] - 1e-12
    assert "(c) EDC" in capsys.readouterr().out
    # the same teacher through fiqa-eval's teacher:DIR adapter gives the same EDC as eval_teachers computed
    rc, _, stderr = _run_cli(["--labels", str(labels_dir), "--method", f"teacher:{util}", "--fmr", "0.1",
                              "--impostors", "100", "--out", str(tmp_path / "cli")], capsys)
    assert rc == 0, stderr
    cli = json.loads((tmp_path / "cli" / "eval.json").read_text())["methods"][0]
    assert cli["name"] == "utility teacher (vit_fiqa_tiny)"
    assert cli["pauc"]["0.2"] == pytest.approx(edc_doc["methods"][0]["pauc"]["0.2"], abs=1e-6)


def test_eval_teachers_refuses_swapped_teachers(tmp_path, aligned_faces):
    labels_dir = write_label_set(tmp_path / "labels", aligned_faces[:1], n_ids=10, seed=2)
    util = _tiny_teacher(tmp_path / "u", "utility", "vit_fiqa_tiny", 1.0, 0.3)
    perc = _tiny_teacher(tmp_path / "p", "perceptual", "dsl_fiqa_tiny", 80.0, 10.0)
    mod = _bench_module("eval_teachers")
    with pytest.raises(SystemExit, match="holds a perceptual teacher"):
        mod.main(["--labels", str(labels_dir), "--utility", str(perc), "--perceptual", str(util),
                  "--out", str(tmp_path / "r")])


# --------------------------------------------------------------------------------------------- bench/run.py
def test_bench_run_collect_gathers_and_skips_with_reasons(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    detector = {"machine": {"cpu": "x"}, "rows": [
        {"frame": "t1", "detector": "retinaface", "backend": "onnxruntime", "threads": 1, "max_side": 320,
         "median_ms": 8.5, "p90_ms": 12.0},
        {"frame": "t1", "detector": "dlib", "threads": 1, "median_ms": 95.0, "p90_ms": 99.0}]}
    (results / "detector.json").write_text(json.dumps(detector))
    (results / "detector.md").write_text("# Detector latency\n\n| a | b |\n")
    run = _bench_module("run")
    rc = run.main(["--collect", "--results", str(results)])
    assert rc == 0
    doc = json.loads((results / "results.json").read_text())
    assert doc["scripts"]["detector"]["status"] == "collected"
    assert doc["scripts"]["detector"]["files"]["detector.json"] == detector
    assert [r["ms"] for r in doc["latency"]] == [8.5, 95.0]
    assert "onnxruntime" in doc["latency"][0]["config"] and "threads=1" in doc["latency"][0]["config"]
    for name, s in doc["scripts"].items():
        if name != "detector":
            assert s["status"] == "skipped" and s["reason"], name
    assert {"cpu", "cores", "python", "versions"} <= set(doc["machine"])
    readme = (results / "README.md").read_text()
    assert "## Machine" in readme and "## Detector latency" in readme and "| detector |" in readme
    assert (results / "latency.png").read_bytes()[:8] == PNG_MAGIC


def test_bench_run_skips_eval_teachers_without_inputs(tmp_path):
    run = _bench_module("run")
    rc = run.main(["--only", "eval_teachers", "--results", str(tmp_path), "--labels", str(tmp_path / "none"),
                   "--utility", str(tmp_path / "u"), "--perceptual", str(tmp_path / "p")])
    assert rc == 0
    s = json.loads((tmp_path / "results.json").read_text())["scripts"]["eval_teachers"]
    assert s["status"] == "skipped" and "labels.npz" in s["reason"] and "teacher.json" in s["reason"]
    assert not (tmp_path / "latency.png").exists()


# ------------------------------------------------------------------------------------------- bench/eval_student.py
def test_eval_student_scores_the_embedded_student_against_the_teachers(tmp_path, aligned_faces, capsys):
    """The embedded student and teachers on blurred real faces of held-out people: they must agree on order."""
    labels_dir = write_label_set(tmp_path / "labels", aligned_faces, n_ids=40, seed=3)
    mod = _bench_module("eval_student")
    out = tmp_path / "results"
    assert mod.main(["--labels", str(labels_dir), "--out", str(out)]) == 0
    doc = json.loads((out / "student_eval.json").read_text())
    labels = LabelSet.load(labels_dir)
    held = held_out_rows(labels)
    assert doc["held_out"]["crops"] == len(held) and doc["held_out"]["degraded"] > 0
    (row,) = doc["students"]
    assert row["arch"] in ("student_mfn", "student_mfn_deep") and len(row["sha256"]) == 64
    # the row says how the student was distilled, from its own record
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    cfg = json.loads((EMBEDDED_STUDENT / "student.json").read_text())["config"]
    assert f"{cfg['epochs']} epochs" in row["how"] and f"lr {cfg['lr']}" in row["how"]
    assert ("mirror-mean loss" in row["how"]) == bool(cfg.get("mirror_average"))
    assert set(row["srcc"]) == {"all", "clean", "degraded"}
    # blur is the one thing that varies here, and both scores fall with it for teacher and student alike
    assert row["srcc"]["all"]["perceptual"] > 0.8 and row["srcc"]["all"]["utility"] > 0.5
    assert set(row["srcc_utility_single_view"]) == {"all", "clean", "degraded"}
    assert row["srcc_utility_single_view"]["all"] > 0.5
    assert "| student |" in (out / "student_eval.md").read_text()
    assert mod.main(["--labels", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no label set" in capsys.readouterr().err
    assert mod.main(["--labels", str(labels_dir), "--ensemble", "--out", str(out)]) == 2
    assert "--ensemble needs two or more" in capsys.readouterr().err


def test_eval_student_ensemble_row_is_the_mean_of_the_students(tmp_path, aligned_faces):
    """Two copies of one student average to that student: the ensemble row must reproduce its SRCC exactly."""
    from fiqa_compile.student_store import EMBEDDED_STUDENT

    labels_dir = write_label_set(tmp_path / "labels", aligned_faces, n_ids=40, seed=3)
    mod = _bench_module("eval_student")
    out = tmp_path / "results"
    assert mod.main(["--labels", str(labels_dir), "--student", str(EMBEDDED_STUDENT), "--student",
                     str(EMBEDDED_STUDENT), "--ensemble", "--out", str(out)]) == 0
    single, _, mean = json.loads((out / "student_eval.json").read_text())["students"]
    assert mean["arch"] == "ensemble" and mean["sha256"] is None
    assert mean["srcc"] == single["srcc"]
    assert "mean of the 2 students above" in (out / "student_eval.md").read_text()


def test_teacher_repeatability_scores_every_view_set_under_jitter(tmp_path, aligned_faces, capsys):
    labels_dir = write_label_set(tmp_path / "labels", aligned_faces, n_ids=40, seed=3)
    mod = _bench_module("teacher_repeatability")
    out = tmp_path / "results"
    assert mod.main(["--labels", str(labels_dir), "--crops", "60", "--out", str(out)]) == 0
    doc = json.loads((out / "teacher_repeatability.json").read_text())
    assert doc["crops"] == min(60, len(held_out_rows(LabelSet.load(labels_dir))))
    assert set(doc["views"]) == {"1 view", "face + mirror", "10 views"}
    # a 2 px re-alignment keeps the order of blurred and sharp faces: every view set agrees with itself
    assert all(0.5 < v["self_srcc_under_jitter"] <= 1.0 for v in doc["views"].values())
    assert "| 10 views |" in (out / "teacher_repeatability.md").read_text()
    # the student against the 10-view teacher, on training and held-out people, as aligned and re-aligned
    gen = doc["student_vs_10_view_teacher"]
    assert set(gen) == {"training people", "held-out people"}
    assert all(set(v) == {"as aligned", "re-aligned"} and all(0.5 < x <= 1.0 for x in v.values()) for v in gen.values())
    assert gen["held-out people"]["as aligned"] == doc["views"]["10 views"]["student_srcc"]
    assert "| training people |" in (out / "teacher_repeatability.md").read_text()
    assert mod.main(["--labels", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "no label set" in capsys.readouterr().err


def test_teacher_tta_spec_names_the_mode_and_refuses_a_perceptual_teacher():
    from fiqa_compile.teachers import embedded_teacher_dirs

    dirs = embedded_teacher_dirs()
    m = parse_method(f"teacher:{dirs['utility']}#tta")
    assert "10-view mean" in m.name
    crops = np.ascontiguousarray(np.random.default_rng(0).integers(0, 255, (4, 112, 112, 3), dtype=np.uint8))
    mirrored = np.ascontiguousarray(crops[:, :, ::-1])
    np.testing.assert_allclose(m.score(SampleView(crops)), m.score(SampleView(mirrored)), rtol=0, atol=1e-5)
    with pytest.raises(MethodSpecError, match="#tta is for the utility teacher"):
        parse_method(f"teacher:{dirs['perceptual']}#tta")
    with pytest.raises(MethodSpecError, match="unknown teacher mode 'best'"):
        parse_method(f"teacher:{dirs['utility']}#best")


def test_a_student_method_scores_as_the_student_does():
    """student:DIR runs the distilled student in torch: its utility column, one pass or face + mirror."""
    import numpy as np

    from fiqa_compile.distill import _predict
    from fiqa_compile.eval.scorers import MethodSpecError, SampleView, parse_method
    from fiqa_compile.student_store import EMBEDDED_STUDENT, load_student

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    model, info = load_student(EMBEDDED_STUDENT)
    index = next(s["index"] for s in info["scores"] if s["name"] == "utility")
    one = parse_method(f"student:{EMBEDDED_STUDENT}").score(SampleView(crops))
    both = parse_method(f"student:{EMBEDDED_STUDENT}#mirror").score(SampleView(crops))
    assert np.allclose(one, _predict(model, crops)[:, index], atol=1e-5)
    assert np.allclose(both, _predict(model, crops, mirror_average=True)[:, index], atol=1e-5)
    assert not np.allclose(one, both)
    with pytest.raises(MethodSpecError, match="unknown student mode"):
        parse_method(f"student:{EMBEDDED_STUDENT}#tta")
