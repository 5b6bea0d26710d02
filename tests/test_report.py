"""The compile report's error-versus-discard section: one EDC per FR model, an unavailable model skipped by name;
and the manifest's score meanings taken from the student's record."""
from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np
import pytest

from fiqa_compile import fr as fr_registry
from fiqa_compile import report
from fiqa_compile.distill import SCORE_NAMES
from fiqa_compile.fr.mobilefacenet import GET_HINT, find_model

PORTRAITS = ("grace_hopper", "tom_hanks", "astronaut")


@functools.cache
def verify_faces():
    """The compile's own verification faces, smaller: the 3 pip-shipped portraits, clean + 4 degradations x 2
    severities (27 faces of 3 people: both genuine and impostor pairs)."""
    from fiqa_calibration.calibration_set import sample_pool
    from fiqa_compile.compiler import faces_from_pool

    pool = sample_pool(photos=PORTRAITS, severities=(0.3, 0.8),
                       kinds=("gaussian_blur", "jpeg", "low_light", "occlusion"), seed=7919)
    return faces_from_pool(pool, "pip-shipped portraits (3 people), degraded")


def write(tmp_path):
    """write_report on the small verification set with stand-ins for what the compile's other stages give."""
    verify = verify_faces()
    rng = np.random.default_rng(0)
    teacher = rng.random((len(verify.crops), 2))
    student = teacher + 0.05 * rng.standard_normal(teacher.shape)
    cell = {"srcc": 0.9, "plcc": 0.9, "plcc_fit": 0.91, "mae": 0.01}
    files = tmp_path / "bundle"
    files.mkdir()
    written = report.write_report(
        files, target=SimpleNamespace(name="cpu", description="test target"), verify=verify,
        teacher_scores=teacher, student_scale=student, outputs={"onnx_fp32": student},
        verification={"torch_fp32": {"vs_teacher": {n: cell for n in SCORE_NAMES}}},
        stages=[{"stage": "student", "seconds": 0.1, "result": "test"}], student_origin="test student",
        thresholds={"utility_accept": 50}, opts=SimpleNamespace(calibration_method="minmax", calibration=None,
                                                              mirror_average=True),
        calib=_Calib())
    return files, written, json.loads((files / "report.json").read_text()), (files / "report.md").read_text()


class _Calib:
    """A calibration set as the report reads it: its size and strata."""

    def __len__(self):
        return 12

    def strata(self):
        return {"clean": 12}


@pytest.mark.skipif(find_model() is None, reason=f"MobileFaceNet is not installed here: {GET_HINT}")
def test_report_shows_an_edc_per_fr_model(tmp_path):
    files, written, doc, md = write(tmp_path)
    edc = doc["edc"]
    assert set(edc["models"]) == set(fr_registry.FR_MODELS)
    for name, m in edc["models"].items():
        assert m["status"] == "computed" and m["plot"] == report.edc_plot_name(name)
        assert (files / m["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and files / m["plot"] in written
        assert set(m["methods"]) >= {"student utility (fp32)", "teacher utility", "onnx_fp32 utility",
                                     "baseline: Laplacian sharpness", "baseline: random"}
        assert f"![EDC, {m['title']}]({m['plot']})" in md and f"### {m['title']} (`{m['model']}`" in md
    dlib, mfn = edc["models"]["dlib"], edc["models"]["mobilefacenet"]
    assert dlib["plot"] == "plots/edc.png" and mfn["plot"] == "plots/edc_mobilefacenet.png"
    assert (dlib["dim"], mfn["dim"]) == (128, 192) and "padded" in dlib["input"] and "as is" in mfn["input"]
    # what readers of earlier reports take: dlib's methods at the top, the pair counts, the caveat flag
    assert edc["methods"] == dlib["methods"] and edc["people"] == 3 and edc["indicative_only"] is True
    n = len(verify_faces().crops)
    assert edc["genuine_pairs"] + edc["impostor_pairs"] == n * (n - 1) // 2
    # each model at its own threshold: the two FR models do not share similarity scales
    assert dlib["methods"]["teacher utility"]["threshold"] != mfn["methods"]["teacher utility"]["threshold"]
    assert md.count("Indicative only") == 1 and "Not computed" not in md and "Skipped" not in md


def test_an_unavailable_fr_model_is_skipped_by_name(tmp_path, monkeypatch):
    real = fr_registry.create_recognizer

    def create(name, **options):
        if name == "mobilefacenet":
            raise fr_registry.FRModelUnavailable(f"MobileFaceNet not found (looked in /nowhere): {GET_HINT}")
        return real(name, **options)

    monkeypatch.setattr(fr_registry, "create_recognizer", create)
    files, written, doc, md = write(tmp_path)
    edc = doc["edc"]
    assert edc["models"]["dlib"]["status"] == "computed" and (files / "plots/edc.png").is_file()
    mfn = edc["models"]["mobilefacenet"]
    assert mfn["status"] == "unavailable" and "scripts/get_mobilefacenet.sh" in mfn["skipped"]
    assert "plot" not in mfn and not (files / "plots/edc_mobilefacenet.png").exists()
    assert "### MobileFaceNet\n\nSkipped (unavailable): MobileFaceNet not found" in md
    assert "scripts/get_mobilefacenet.sh" in md and "![EDC, dlib ResNet](plots/edc.png)" in md
    assert edc["methods"] == edc["models"]["dlib"]["methods"] and edc["indicative_only"] is True
    assert "Indicative only" in md and "Not computed" not in md


def test_an_unavailable_reason_always_says_how_to_get_mobilefacenet():
    e = fr_registry.FRModelUnavailable("MobileFaceNet needs a TFLite engine: no litert")
    assert "scripts/get_mobilefacenet.sh" in report.unavailable_reason("mobilefacenet", e)
    assert report.unavailable_reason("dlib", RuntimeError("pip install 'fiqa-sdk[dlib]'")) == \
        "pip install 'fiqa-sdk[dlib]'"


def test_pairs_that_cannot_make_an_edc_are_not_computed_under_any_model(monkeypatch):
    def refuse(name, **options):
        raise AssertionError("no FR model is needed when the pairs cannot make an EDC")

    monkeypatch.setattr(fr_registry, "create_recognizer", refuse)
    one_person = SimpleNamespace(crops=np.zeros((4, 112, 112, 3), np.uint8), person=np.array(["a"] * 4))
    curves, summary = report.edc_curves(one_person, {"q": np.arange(4.0)})
    assert curves == {} and "indicative_only" not in summary and summary["methods"] == {}
    assert {m["status"] for m in summary["models"].values()} == {"not computed"}
    md = "\n".join(report.edc_markdown(curves, summary))
    assert "Not computed: 4 held-out faces of 1 people" in md and "Indicative only" not in md


def test_score_meanings_come_from_the_students_record():
    from fiqa_compile.compiler import DEFAULT_SCORE_MEANINGS, score_meaning

    recorded = {"utility_target": "recognition margins of dlib + MobileFaceNet at FMR 1e-3 (labels.recognition)",
                "perceptual_target": "the init student's perceptual score (face + mirror mean)"}
    assert score_meaning("utility", recorded) == recorded["utility_target"]
    assert score_meaning("perceptual", recorded) == recorded["perceptual_target"]
    # a student distilled from the two teachers records neither: today's meanings
    assert score_meaning("utility", {}) == "recognition utility: ViT-FIQA certainty ratio under dlib's FR model"
    assert score_meaning("perceptual", {"utility_target": "x"}) == DEFAULT_SCORE_MEANINGS["perceptual"]
    for not_text in (None, "", "  ", 3, {"a": 1}):
        assert score_meaning("utility", {"utility_target": not_text}) == DEFAULT_SCORE_MEANINGS["utility"]


def test_a_recorded_meaning_is_free_text_the_manifest_loader_keeps():
    from fiqa_compile.compiler import score_meaning
    from fiqa_sdk.bundle import ScoreSpec

    meaning = score_meaning("utility", {"utility_target": "recognition margins of dlib + MobileFaceNet at FMR 1e-3"})
    spec = ScoreSpec.from_dict({"name": "utility", "index": 0, "teacher": "t", "mean": 0.0, "std": 1.0, "lo": -1.0,
                                "hi": 1.0, "range": [0, 100], "meaning": meaning})
    assert spec.meaning == meaning and ScoreSpec.from_dict(spec.to_dict()) == spec
