"""Deployment bundles: the writer (fiqa_compile.bundle) and the device loader (fiqa_sdk.bundle) on real models.

The bundle holds a seeded torch net exported to ONNX and converted to TFLite; every refusal is provoked by
really damaging a copy of it on disk.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from bundle_fixtures import (
    THRESHOLDS,
    TinyQualityNet,
    export_onnx,
    export_tflite,
    score_specs,
    tflite_cache,
    write_test_bundle,
)

import fiqa_runtimes
import fiqa_runtimes.base as rt_base
import fiqa_sdk.bundle as sdk_bundle
from fiqa_compile.bundle import BundleExistsError, ModelArtifact, write_bundle
from fiqa_runtimes import BackendUnavailable, ModelFormat
from fiqa_sdk.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    BundleError,
    BundleIntegrityError,
    ScoreSpec,
    UnsupportedBundleVersion,
    bundle_id_for,
    default_bundle_path,
    load_bundle,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory, pytestconfig) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    net = TinyQualityNet(seed=0)
    return {"onnx": export_onnx(net, d / "student.onnx"),
            "tflite": export_tflite(net, d / "student.tflite", tflite_cache(pytestconfig))}


@pytest.fixture(scope="module")
def extras(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("extras")
    (d / "report.md").write_text("# tiny test bundle\n")
    (d / "report.json").write_text(json.dumps({"srcc": 0.5}))
    (d / "edc.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    (d / "trt.cache").write_bytes(b"TRT-8601-EntropyCalibration2\nfaces: 3c010a14\n")
    return {"report.md": d / "report.md", "report.json": d / "report.json", "plots/edc.png": d / "edc.png",
            "trt": d / "trt.cache"}


@pytest.fixture(scope="module")
def built(tmp_path_factory, models, extras) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny-cpu"
    files = {k: v for k, v in extras.items() if k != "trt"}
    return write_test_bundle(out, models["onnx"], models["tflite"], extra_files=files, trt_cache=extras["trt"])


@pytest.fixture
def copy(built, tmp_path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(built, tmp_path / "copy"))


def _edit_manifest(path: Path, edit, restamp: bool = True) -> None:
    """Edit the manifest; ``restamp`` recomputes its bundle_id (as a compile would), so a test reaches the check
    it is about rather than the id check that refuses any hand edit."""
    m = json.loads((path / MANIFEST).read_text())
    edit(m)
    if restamp:
        try:
            m["bundle_id"] = bundle_id_for({**{e["file"]: e["sha256"] for e in m["models"]}, **m["files"]}, m)
        except (KeyError, TypeError, ValueError):
            pass  # malformed beyond hashing: the loader refuses it before it looks at the id
    (path / MANIFEST).write_text(json.dumps(m))


# ---- round trip -----------------------------------------------------------------------------------------------------

def test_round_trip_keeps_every_field_and_hashes_every_file(built, models, extras):
    b = load_bundle(built)
    assert b.target == "cpu" and b.path == built
    assert [m.name for m in b.models] == ["tflite_fp32", "onnx_fp32"]
    tfl, onx = b.models
    assert (tfl.file, tfl.format, tfl.precision, tfl.backends) == ("student.tflite", "tflite", "fp32",
                                                                   ("litert", "tflite-runtime"))
    assert (onx.input, onx.output) == ("faces", "scores")
    # TFLite converters rename tensors: the writer records the names the file really has.
    from ai_edge_litert.interpreter import Interpreter
    interp = Interpreter(model_path=str(built / "student.tflite"))
    assert tfl.input == interp.get_input_details()[0]["name"]
    assert tfl.output == interp.get_output_details()[0]["name"]
    # Model files are copied byte for byte: no metadata is written into them.
    for entry, src in ((tfl, models["tflite"]), (onx, models["onnx"])):
        assert (built / entry.file).read_bytes() == src.read_bytes()
    assert set(b.files) == {"report.md", "report.json", "plots/edc.png", "trt_calibration.cache"}
    assert (built / "plots/edc.png").read_bytes() == extras["plots/edc.png"].read_bytes()
    # Every listed hash is the file's real sha256, and the id is derived from them, recomputed here by hand.
    on_disk = {p.relative_to(built).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in built.rglob("*") if p.is_file() and p.name != MANIFEST}
    listed = {**{m.file: m.sha256 for m in b.models}, **b.files}
    assert listed == on_disk
    lines = "".join(f"{k}\t{v}\n" for k, v in sorted(on_disk.items()))
    content = {k: v for k, v in json.loads((built / MANIFEST).read_text()).items() if k != "bundle_id"}
    lines += "manifest\t" + hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest() + "\n"
    assert b.bundle_id == hashlib.sha256(lines.encode()).hexdigest()[:16] == bundle_id_for(on_disk, b.manifest)
    assert b.scores == tuple(score_specs())
    assert b.thresholds == THRESHOLDS
    assert b.gate_config().perceptual_accept == THRESHOLDS["perceptual_accept"]
    assert b.tensorrt.onnx == "student.onnx" and b.tensorrt.calibration_cache == "trt_calibration.cache"
    assert b.tensorrt.backend_options() == {"precision": "fp32", "fp16_fallback": True, "max_batch": 8, "opt_batch": 1,
                                            "workspace_mb": 256}
    m = b.manifest
    # a bundle without mirror averaging stays readable by schema-1 readers
    assert m["schema_version"] == 1 and m["kind"] == "fiqa-bundle"
    assert m["mirror_average"] is False and b.mirror_average is False
    assert m["input"] == {"name": "faces", "shape": [None, 3, 112, 112], "dtype": "float32", "layout": "NCHW"}
    assert datetime.fromisoformat(m["created_utc"].replace("Z", "+00:00")).tzinfo is not None
    assert m["provenance"]["command"] == "pytest" and "torch" in m["provenance"]["tools"]
    assert not list(built.parent.glob(".tiny-cpu.*")), "temp folders left next to the bundle"


def test_score_spec_maps_z_to_0_100_with_clipping_and_flip():
    s = ScoreSpec("utility", 0, "t", mean=10.0, std=2.0, lo=8.0, hi=16.0)
    z = np.array([-5.0, -1.0, 0.0, 1.5, 3.0, 9.0])
    t = z * 2 + 10
    np.testing.assert_allclose(s.to_0_100(z), np.clip(100 * (t - 8) / 8, 0, 100))
    assert s.to_0_100(np.array([-1.0, 3.0])).tolist() == [0.0, 100.0]
    flipped = ScoreSpec("utility", 0, "t", mean=10.0, std=2.0, lo=8.0, hi=16.0, higher_is_better=False)
    np.testing.assert_allclose(flipped.to_0_100(z), 100 - s.to_0_100(z))
    with pytest.raises(BundleError, match="std"):
        ScoreSpec("utility", 0, "t", mean=0.0, std=0.0, lo=0.0, hi=1.0)
    with pytest.raises(BundleError, match="hi=1.0 must be above lo=2.0"):
        ScoreSpec("utility", 0, "t", mean=0.0, std=1.0, lo=2.0, hi=1.0)


def test_score_spec_from_teacher_scores_round_trips_the_teacher_scale():
    from fiqa_compile.bundle import score_spec_from_teacher_scores

    t = np.random.default_rng(0).normal(40.0, 8.0, 2000)
    spec = score_spec_from_teacher_scores("perceptual", 1, "dsl_fiqa", t, meaning="MOS-like")
    assert (spec.mean, spec.std) == pytest.approx((t.mean(), t.std()))
    assert (spec.lo, spec.hi) == pytest.approx(tuple(np.percentile(t, [1, 99])))
    z = (t - spec.mean) / spec.std  # what a perfectly distilled student would output
    np.testing.assert_allclose(spec.to_0_100(z), np.clip(100 * (t - spec.lo) / (spec.hi - spec.lo), 0, 100))
    assert 0.9 < np.mean((spec.to_0_100(z) > 0) & (spec.to_0_100(z) < 100)) < 0.99
    with pytest.raises(ValueError, match="constant"):
        score_spec_from_teacher_scores("utility", 0, "vit", np.full(10, 3.0))


# ---- refusals -------------------------------------------------------------------------------------------------------

def test_corrupted_model_is_refused_naming_file_and_both_hashes(copy):
    expected = load_bundle(copy).models[0].sha256
    data = bytearray((copy / "student.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "student.tflite").write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(BundleIntegrityError) as e:
        load_bundle(copy)
    msg = str(e.value)
    assert "student.tflite" in msg and expected in msg and actual in msg and "rebuild" in msg
    assert "student.onnx" not in msg  # only the damaged file is named


def test_corrupted_report_and_missing_file_are_refused(copy):
    (copy / "report.md").write_text("# edited\n")
    (copy / "plots" / "edc.png").unlink()
    with pytest.raises(BundleIntegrityError) as e:
        load_bundle(copy)
    assert "report.md: corrupt" in str(e.value) and "plots/edc.png: missing" in str(e.value)


def test_swapped_model_with_updated_hash_is_refused_by_the_bundle_id(copy, models):
    # Someone replaces the model and "fixes" its hash: the id no longer matches the file list.
    (copy / "student.tflite").write_bytes(models["onnx"].read_bytes())
    new = hashlib.sha256(models["onnx"].read_bytes()).hexdigest()
    _edit_manifest(copy, lambda m: m["models"][0].update(sha256=new), restamp=False)
    with pytest.raises(BundleIntegrityError, match="bundle_id .* does not match"):
        load_bundle(copy)


@pytest.mark.parametrize("edit", [lambda m: m["thresholds"].update(utility_accept=m["thresholds"]["utility_accept"] - 5),
                                  lambda m: m["scores"][0].update(lo=1.5),
                                  lambda m: m["tensorrt"]["build"].update(max_batch=64)])
def test_hand_edited_settings_are_refused_by_the_bundle_id(copy, edit):
    """The id covers the manifest's content: a gate opened by editing a threshold does not load."""
    _edit_manifest(copy, edit, restamp=False)
    with pytest.raises(BundleIntegrityError, match="the manifest was edited after it was compiled"):
        load_bundle(copy)


def test_an_id_over_the_files_alone_says_the_bundle_is_older(copy):
    def file_only_id(m):
        m["bundle_id"] = bundle_id_for({**{e["file"]: e["sha256"] for e in m["models"]}, **m["files"]})

    _edit_manifest(copy, file_only_id, restamp=False)
    with pytest.raises(BundleIntegrityError, match="older fiqa-compile.*rebuild it"):
        load_bundle(copy)


def test_newer_schema_is_refused_with_upgrade_advice(copy):
    _edit_manifest(copy, lambda m: m.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(UnsupportedBundleVersion, match=r"upgrade fiqa-sdk \(pip install --upgrade fiqa-sdk\)"):
        load_bundle(copy)


def test_mirror_average_is_read_checked_and_written_as_schema_2(copy, tmp_path, models):
    mirrored = load_bundle(write_test_bundle(tmp_path / "mirror", models["onnx"], mirror_average=True))
    assert mirrored.mirror_average is True and mirrored.manifest["schema_version"] == 2 < SCHEMA_VERSION
    _edit_manifest(copy, lambda m: m.update(mirror_average="yes"))
    with pytest.raises(BundleError, match="'mirror_average' must be true or false"):
        load_bundle(copy)
    _edit_manifest(copy, lambda m: m.update(mirror_average=True))  # with schema_version 1
    with pytest.raises(BundleError, match="'mirror_average' needs schema_version 2"):
        load_bundle(copy)
    _edit_manifest(copy, lambda m: m.pop("mirror_average"))  # bundles written before the key: one pass
    assert load_bundle(copy).mirror_average is False


def test_unknown_keys_are_tolerated(copy):
    def add(m):
        m["future_section"] = {"anything": [1, 2]}
        m["models"][0]["future_field"] = "x"
        m["scores"][0]["calibration_set"] = "lfw"
        m["tensorrt"]["build"]["future_flag"] = True
    _edit_manifest(copy, add)
    b = load_bundle(copy)
    assert b.manifest["future_section"] == {"anything": [1, 2]} and b.models[0].name == "tflite_fp32"


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["preprocessing"].update(mean=128.0), "preprocessing spec mismatch in \\['mean'\\]"),
    (lambda m: m["preprocessing"].update(color_order="BGR"), "preprocessing spec mismatch"),
    (lambda m: m["input"].update(shape=[None, 3, 96, 96]), "manifest 'input'"),
    (lambda m: m.update(kind="something-else"), "not a fiqa bundle manifest"),
    (lambda m: m.update(target="mainframe"), "target='mainframe' is not one of"),
    (lambda m: m["scores"].pop(), "must describe \\['utility', 'perceptual'\\]"),
    (lambda m: m["scores"][1].update(index=0), "distinct output columns"),
    (lambda m: m["scores"][0].update(std=-1.0), "std=-1.0 must be > 0"),
    (lambda m: m["models"][0].update(file="../student.tflite"), "plain relative path"),
    (lambda m: m["tensorrt"].update(onnx="student.tflite"), "not one of the bundle's ONNX models"),
    (lambda m: m["models"][0].pop("sha256"), "lacks the required key 'sha256'"),
    (lambda m: m["scores"][0].update(range=None), "range=None: schema 1 defines"),
    (lambda m: m["scores"][0].update(range=100), "range=100: schema 1 defines"),
    (lambda m: m.update(preprocessing=["mean"]), "preprocessing spec must be a JSON object"),
    (lambda m: m["thresholds"].update(window_s=None), "'thresholds' are not a valid gate configuration"),
    (lambda m: m["thresholds"].update(utility_acept=50), "not a valid gate configuration: unknown manifest"),
])
def test_malformed_manifests_are_refused(copy, edit, match):
    _edit_manifest(copy, edit)
    with pytest.raises(BundleError, match=match):
        load_bundle(copy)


@pytest.mark.parametrize("edit, match", [
    # TensorRT build settings a Jetson would build its engine with
    (lambda m: m["tensorrt"]["build"].update(precision="int4"), r"tensorrt.build.precision='int4' is not one of"),
    (lambda m: m["tensorrt"]["build"].update(max_batch=0), "max_batch must be an integer from 1 to 1024, got 0"),
    (lambda m: m["tensorrt"]["build"].update(max_batch="16"), "max_batch must be an integer from 1 to 1024, got '16'"),
    (lambda m: m["tensorrt"]["build"].update(max_batch=10**6), "max_batch must be an integer from 1 to 1024"),
    (lambda m: m["tensorrt"]["build"].update(opt_batch=9), r"opt_batch=9 is above max_batch=8"),
    (lambda m: m["tensorrt"]["build"].update(fp16_fallback="yes"), "fp16_fallback must be true or false"),
    (lambda m: m["tensorrt"]["build"].update(workspace_mb=10**9), "workspace_mb must be an integer from 1 to 65536"),
    # score scales: finite numbers, but no scale a compile could have written
    (lambda m: m["scores"][0].update(lo=-1e308, hi=1e308), r"hi - lo overflows \(lo=-1e\+308, hi=1e\+308\)"),
    (lambda m: m["scores"][0].update(lo=-1e300), r"lie -1.43e\+300 and 2 standard deviations from mean=3.1"),
    (lambda m: m["scores"][0].update(std=1e-300), r"standard deviations from mean=3.1 \(std=1e-300\)"),
    (lambda m: m["scores"][0].update(std=1e300, mean=0.0), r"is 2.5e-300 standard deviations .*a step, not a scale"),
    (lambda m: m["scores"][1].update(lo=30.0, hi=30.000001), r"hi - lo = 1e-06 is 8.33e-08 standard deviations"),
    # a preprocessing step this SDK would silently skip
    (lambda m: m["preprocessing"].update(gamma=2.2), r"preprocessing spec has key\(s\) \['gamma'\] this SDK does not "
                                                     "implement"),
    # what the capture gate reads, refused at load rather than when a CapturePipeline is made
    (lambda m: m.pop("thresholds"), r"has no 'thresholds' section, which the capture gate \(CapturePipeline"),
])
def test_manifest_values_the_bundle_id_cannot_vouch_for_are_refused(copy, edit, match):
    """A hand edit with the bundle id recomputed (as a compile would) still may not load settings no fiqa-compile
    writes; before, each of these loaded."""
    _edit_manifest(copy, edit)
    with pytest.raises(BundleError, match=match):
        load_bundle(copy)


def test_a_key_given_twice_is_refused_not_decided_by_the_last_copy(copy):
    """A reader of the file sees the first ``thresholds``, json.loads would keep the second; the id, computed over
    what json.loads keeps, matched, so the bundle loaded with the thresholds nobody reviewing it saw."""
    m = json.loads((copy / MANIFEST).read_text())
    opened = {**m["thresholds"], "utility_accept": 1.0, "utility_release": 0.0}
    m_opened = {**m, "thresholds": opened}
    m_opened["bundle_id"] = bundle_id_for({**{e["file"]: e["sha256"] for e in m["models"]}, **m["files"]}, m_opened)
    text = json.dumps(m_opened)
    first = json.dumps(m["thresholds"])
    (copy / MANIFEST).write_text(text.replace('"thresholds": ', f'"thresholds": {first}, "thresholds": ', 1))
    with pytest.raises(BundleError, match=r"manifest.json: key 'thresholds' appears twice in one JSON object; "
                                          "fiqa-compile never writes one"):
        load_bundle(copy)


def test_nan_infinity_and_deep_nesting_are_bundle_errors_not_raw_ones(copy):
    _edit_manifest(copy, lambda m: m["provenance"].update(note=float("nan")))  # json.dumps writes NaN
    with pytest.raises(BundleError, match="it holds NaN, which is not JSON"):  # was a ValueError from hashing
        load_bundle(copy)
    (copy / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nests its JSON deeper than this Python can read"):  # was RecursionError
        load_bundle(copy)


@pytest.mark.parametrize("name", ["report.md", "student.onnx"])
def test_a_symlink_out_of_the_bundle_folder_is_refused_even_with_the_right_bytes(copy, tmp_path, name):
    """The link's target holds the verified bytes today; whatever it holds later would be loaded."""
    outside = tmp_path / "elsewhere" / name
    outside.parent.mkdir()
    outside.write_bytes((copy / name).read_bytes())
    (copy / name).unlink()
    (copy / name).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"{name} is a symlink to {outside}, outside the bundle folder; a bundle "
                                          r"must be self-contained: copy the real file in \(cp -L\)"):
        load_bundle(copy)
    # a link that stays inside the folder is the folder's own file
    (copy / name).unlink()
    (copy / "real").mkdir()
    outside.rename(copy / "real" / name)
    (copy / name).symlink_to(copy / "real" / name)
    assert load_bundle(copy).bundle_id


def test_a_model_edited_after_verification_is_refused_when_loaded(copy, tmp_path):
    """Scorer(load_bundle(d)) used to load whatever the model file held by then, under the verified bundle_id."""
    from fiqa_sdk.scorer import Scorer

    b = load_bundle(copy)
    other = export_onnx(TinyQualityNet(seed=1), tmp_path / "other.onnx")  # a valid model, different weights
    (copy / "student.onnx").write_bytes(other.read_bytes())
    with pytest.raises(BundleIntegrityError, match=r"model file student\.onnx changed after the bundle was verified "
                                                   r"\(sha256 now [0-9a-f]{64}, the manifest's [0-9a-f]{64}\), so it "
                                                   "was not loaded"):
        Scorer(b, backend="onnxruntime", detector=None)
    (copy / "student.onnx").unlink()
    with pytest.raises(BundleError, match=r"cannot read model file student\.onnx \(No such file or directory\)"):
        b.load_model(backend="onnxruntime")


def test_the_engine_gets_the_bytes_that_were_hashed(built, monkeypatch):
    """The engine is handed bytes, never a path it would read again later: the hash and the load see one read."""
    seen = []
    real = fiqa_runtimes.load_backend
    monkeypatch.setattr(fiqa_runtimes, "load_backend", lambda model, *a, **k: seen.append(model) or real(model, *a, **k))
    b = load_bundle(built)
    for backend in ("onnxruntime", "litert", "opencv"):
        loaded = b.load_model(backend=backend)
        assert isinstance(seen[-1], bytes)
        assert hashlib.sha256(seen[-1]).hexdigest() == loaded.choice.model.sha256


def test_non_bundles_are_refused(tmp_path, copy):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="is not a fiqa bundle: it has no manifest.json"):
        load_bundle(tmp_path)
    with pytest.raises(BundleError, match="is not a bundle folder"):
        load_bundle(copy / "report.md")
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="is not valid JSON"):
        load_bundle(copy)


@pytest.mark.parametrize("unreadable", ["manifest.json", "student.onnx", "plots/edc.png", "."])
def test_an_unreadable_file_or_folder_is_a_bundle_error_naming_it(copy, monkeypatch, unreadable):
    """Permissions simulated (these tests run as root, where chmod 000 stops no read); a CLI that catches
    BundleError then says so and exits 2 instead of a PermissionError traceback."""
    from fs_faults import deny_reading

    target = (copy / unreadable).resolve()
    deny_reading(monkeypatch, target)
    named = copy / MANIFEST if unreadable == "." else target  # in a folder that cannot be searched: its manifest
    with pytest.raises(BundleError, match=rf"bundle {copy}: cannot read {named} \(Permission denied\); check the "
                                          "path, and that this user may read the bundle folder"):
        load_bundle(copy)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_model_file_without_read_permission_is_a_bundle_error(copy):
    (copy / "student.onnx").chmod(0)
    with pytest.raises(BundleError, match=r"cannot read .*student\.onnx \(Permission denied\)"):
        load_bundle(copy)


def test_a_bundle_path_too_long_for_the_filesystem_is_a_bundle_error(tmp_path):
    with pytest.raises(BundleError, match=r"cannot read .* \(File name too long\)"):
        load_bundle(tmp_path / ("b" * 300))


def test_manifest_path_is_accepted_for_the_folder(built):
    assert load_bundle(built / MANIFEST).bundle_id == load_bundle(built).bundle_id


# ---- the writer: overwrite protection and atomicity ----------------------------------------------------------------

def test_existing_bundle_is_refused_without_force_and_replaced_with_it(copy, models, tmp_path):
    before = load_bundle(copy)
    with pytest.raises(BundleExistsError, match="already holds a bundle; pass --force"):
        write_test_bundle(copy, models["onnx"])
    assert load_bundle(copy).bundle_id == before.bundle_id
    write_test_bundle(copy, models["onnx"], force=True)
    after = load_bundle(copy)
    assert after.bundle_id != before.bundle_id and [m.name for m in after.models] == ["onnx_fp32"]
    assert not (copy / "student.tflite").exists() and not (copy / "report.md").exists()
    assert not [p.name for p in copy.parent.iterdir() if p.name.startswith(".copy.")]


def test_failed_forced_write_leaves_the_old_bundle_intact(copy, models, tmp_path):
    before = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    # Fails midway: the models are already copied into the temp folder when the missing extra file is reached.
    with pytest.raises(FileNotFoundError, match="missing.md"):
        write_test_bundle(copy, models["onnx"], models["tflite"], extra_files={"a.md": tmp_path / "missing.md"},
                          force=True)
    # Fails in validation, before any copying.
    with pytest.raises(ValueError, match="unknown manifest thresholds key"):
        write_test_bundle(copy, models["onnx"], thresholds={"utility_acept": 50}, force=True)
    after = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    assert after == before
    load_bundle(copy)
    assert not [p.name for p in copy.parent.iterdir() if p.name.startswith(".copy.")]


def test_forced_write_never_deletes_files_the_bundle_does_not_list(copy, models):
    """--force replaces a bundle, not a user's captures or notes kept beside it."""
    before = load_bundle(copy).bundle_id
    (copy / "captures").mkdir()
    (copy / "captures" / "p1.jpg").write_bytes(b"jpeg")
    (copy / "notes.txt").write_text("mine")
    with pytest.raises(BundleExistsError, match=r"2 file\(s\) its manifest does not list \(captures/p1.jpg, notes.txt\)"):
        write_test_bundle(copy, models["onnx"], force=True)
    assert (copy / "captures" / "p1.jpg").read_bytes() == b"jpeg" and (copy / "notes.txt").read_text() == "mine"
    assert load_bundle(copy).bundle_id == before


def test_non_bundle_folder_is_never_replaced(tmp_path, models):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(BundleExistsError, match="non-empty folder that is not a bundle"):
        write_test_bundle(tmp_path, models["onnx"], force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_writer_refuses_models_that_do_not_fit_the_manifest(tmp_path, models):
    from onnx import TensorProto, helper

    three = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["faces"], ["g"]), helper.make_node("Flatten", ["g"], ["scores"])],
        "three", [helper.make_tensor_value_info("faces", TensorProto.FLOAT, ["N", 3, 112, 112])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 3])])
    bad = tmp_path / "three.onnx"
    model = helper.make_model(three, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    bad.write_bytes(model.SerializeToString())
    args = dict(target="cpu", scores=score_specs(), thresholds=THRESHOLDS)
    with pytest.raises(ValueError, match=r"to \(2, 3\), not \[2, 2\]"):
        write_bundle(tmp_path / "b1", models=[ModelArtifact("m", bad, "onnx", "fp32", ("onnxruntime",))], **args)
    with pytest.raises(ValueError, match="unknown backend 'onnxrt'"):
        write_bundle(tmp_path / "b2", models=[ModelArtifact("m", models["onnx"], "onnx", "fp32", ("onnxrt",))],
                     **args)
    with pytest.raises(ValueError, match="is tflite but backend 'onnxruntime' runs"):
        write_bundle(tmp_path / "b3", models=[ModelArtifact("m", models["tflite"], "tflite", "fp32",
                                                            ("onnxruntime",))], **args)
    with pytest.raises(ValueError, match="has no output 'quality'"):
        write_bundle(tmp_path / "b4", models=[ModelArtifact("m", models["onnx"], "onnx", "fp32", ("onnxruntime",),
                                                            output="quality")], **args)
    with pytest.raises(ValueError, match="target must be one of"):
        write_bundle(tmp_path / "b5", models=[ModelArtifact("m", models["onnx"], "onnx", "fp32", ("onnxruntime",))],
                     **{**args, "target": "toaster"})
    assert not list(tmp_path.glob("b*")) and not list(tmp_path.glob(".b*"))


# ---- choosing a model and backend ----------------------------------------------------------------------------------

def test_pick_model_follows_preference_among_installed_backends(built):
    b = load_bundle(built)
    auto = b.pick_model()
    assert (auto.backend, auto.model.name) == ("litert", "tflite_fp32")  # tensorrt is not installed here
    assert [(c.backend, c.model.name) for c in b.candidates()] == [
        ("litert", "tflite_fp32"), ("onnxruntime", "onnx_fp32"), ("opencv", "onnx_fp32")]
    assert b.pick_model("onnxruntime").model.name == "onnx_fp32"
    assert b.pick_model("auto", model="onnx_fp32").backend == "onnxruntime"
    trt = b.pick_model("tensorrt")
    assert trt.model.file == "student.onnx" and trt.options["max_batch"] == 8
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        b.load_model("tensorrt")
    with pytest.raises(BundleError, match="no model in bundle .* is meant for backend 'tflite-gpu'"):
        b.pick_model("tflite-gpu")
    with pytest.raises(BundleError, match="has no model named 'int8'"):
        b.pick_model(model="int8")


class _NoDeviceBackend:
    """Registered like a GPU engine whose module imports but whose device is missing (fails in __init__, as
    TensorRTBackend does without CUDA bindings)."""

    def __init__(self, model, threads=None, **options):
        raise BackendUnavailable("fake-gpu: no GPU on this host")


def test_auto_falls_through_an_unavailable_backend_and_says_so(copy, monkeypatch, caplog):
    monkeypatch.setitem(rt_base._REGISTRY, "fake-gpu", ("numpy", f"{__name__}:_NoDeviceBackend", (ModelFormat.ONNX,)))
    _edit_manifest(copy, lambda m: (m.update(backend_preference=["fake-gpu", "onnxruntime"]),
                                    m["models"][1]["backends"].insert(0, "fake-gpu")))
    b = load_bundle(copy)
    loaded = b.load_model()
    assert loaded.choice.backend == "onnxruntime" and loaded.backend.name == "onnxruntime"
    assert [(c.backend, why) for c, why in loaded.skipped] == [("fake-gpu", "fake-gpu: no GPU on this host")]
    assert "fake-gpu unavailable" in caplog.text
    with pytest.raises(BackendUnavailable, match="no GPU"):
        b.load_model("fake-gpu")


def test_bundle_without_an_installed_runtime_names_what_to_install(copy, monkeypatch):
    monkeypatch.setattr(fiqa_runtimes, "available_backends", lambda fmt=None: [])
    with pytest.raises(BundleError, match="pip install ai-edge-litert \\(LiteRT\\) or onnxruntime"):
        load_bundle(copy).pick_model()


# ---- embedded defaults ---------------------------------------------------------------------------------------------

def test_default_bundle_path_prefers_android_tflite_when_litert_is_installed(tmp_path, built, monkeypatch):
    with pytest.raises(BundleError, match="fiqa-compile --target cpu"):
        default_bundle_path(tmp_path)
    shutil.copytree(built, tmp_path / "default-cpu")
    assert default_bundle_path(tmp_path) == tmp_path / "default-cpu"
    shutil.copytree(built, tmp_path / "default-android-arm64")
    assert default_bundle_path(tmp_path) == tmp_path / "default-android-arm64"
    # a runtime asked for by name picks the bundle whose models it runs, whatever else is installed
    assert default_bundle_path(tmp_path, backend="onnxruntime") == tmp_path / "default-cpu"
    assert default_bundle_path(tmp_path, backend="litert") == tmp_path / "default-android-arm64"
    monkeypatch.setattr(fiqa_runtimes, "available_backends",
                        lambda fmt=None: [] if fmt in ("tflite", ModelFormat.TFLITE) else ["onnxruntime"])
    assert default_bundle_path(tmp_path) == tmp_path / "default-cpu"
    monkeypatch.setattr(sdk_bundle, "BUNDLES_DIR", tmp_path / "empty")
    with pytest.raises(BundleError, match="no embedded default bundle"):
        default_bundle_path()


def test_tensorrt_on_a_bundle_without_its_build_section_says_how_to_get_one():
    from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES

    cpu = load_bundle(BUNDLES_DIR / DEFAULT_BUNDLES["cpu"])
    assert cpu.tensorrt is None
    with pytest.raises(BundleError, match="no TensorRT build section.*fiqa-compile --target jetson-orin"):
        cpu.candidates("tensorrt")


def test_a_score_column_the_model_does_not_have_fails_when_the_scorer_loads(copy):
    """Caught by the Scorer's warm-up inference, not on every frame of a capture run."""
    from fiqa_sdk import Scorer

    _edit_manifest(copy, lambda m: m["scores"][0].update(index=5))
    with pytest.raises(ValueError, match=r"the manifest reads columns \[5, 1\]"):
        Scorer(copy, backend="onnxruntime", detector=None)


def test_scorer_with_a_named_backend_and_no_bundle_takes_the_embedded_bundle_that_backend_runs():
    from fiqa_sdk import Scorer

    with Scorer(backend="onnxruntime", detector=None) as scorer:  # LiteRT is installed here too
        assert scorer.info.backend == "onnxruntime" and scorer.info.target == "cpu"
