"""fp32 ONNX export of a (briefly fitted) student: structure, dynamic batch, faithfulness, the fallback path."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from fiqa_compile.export import onnx_export
from fiqa_compile.export.onnx_export import ExportVerificationError, export_onnx, run_onnx
from fiqa_compile.models.students import export_ready
from fiqa_sdk.preprocess import faces_to_tensor
from student_fixtures import exported_onnx, exported_onnx_report, face_pool, fitted_student


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    pool = face_pool()
    return faces_to_tensor(pool.faces[::7])  # 63 varied faces: every person, kind and severity


def test_graph_contract():
    model = onnx.load(str(exported_onnx()))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["faces"] and [o.name for o in model.graph.output] == ["scores"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 112, 112]  # symbolic batch, fixed face
    assert next(o.version for o in model.opset_import if o.domain == "") == 17
    ops = {n.op_type for n in model.graph.node}
    assert ops <= {"Conv", "Relu", "Add", "Gemm", "Reshape", "Flatten"}, ops  # BN folded, nothing exotic


def test_onnx_runtime_matches_torch_on_real_faces(faces):
    net = export_ready(fitted_student())
    with torch.no_grad():
        ref = net(torch.from_numpy(faces)).numpy()
    assert ref.std(0).min() > 0.05  # the fitted student's scores vary across faces
    path = exported_onnx()
    for n in (1, 5, len(faces)):  # dynamic batch axis
        got = run_onnx(path, faces[:n])
        assert got.shape == (n, 2)
        np.testing.assert_allclose(got, ref[:n], atol=1e-4, rtol=1e-4)


def test_report_names_the_exporter_and_the_error():
    report = exported_onnx_report()
    assert report.exporter == "dynamo" and report.fallback_reason is None
    assert report.max_abs_diff < 1e-4 and report.batch_sizes_checked == [1, 8]
    assert report.op_counts.get("Conv", 0) > 5 and report.size_bytes == exported_onnx().stat().st_size


def test_falls_back_to_torchscript_only_when_dynamo_fails(tmp_path, faces, monkeypatch):
    def broken(*_args, **_kw):
        raise RuntimeError("simulated dynamo failure")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    report = export_onnx(fitted_student(), tmp_path / "ts.onnx", check_inputs=faces[:4])
    assert report.exporter == "torchscript" and "simulated dynamo failure" in report.fallback_reason
    np.testing.assert_allclose(run_onnx(tmp_path / "ts.onnx", faces[:3]), run_onnx(exported_onnx(), faces[:3]),
                               atol=1e-4)
    with pytest.raises(RuntimeError, match="simulated"):
        export_onnx(fitted_student(), tmp_path / "no.onnx", check_inputs=faces[:4], allow_torchscript_fallback=False)
    assert not (tmp_path / "no.onnx").exists()


def test_unfaithful_export_is_not_written(tmp_path, faces, monkeypatch):
    real = onnx_export.run_onnx
    monkeypatch.setattr(onnx_export, "run_onnx", lambda m, x, threads=1: real(m, x) + 1e-2)
    with pytest.raises(ExportVerificationError, match="differs from torch"):
        export_onnx(fitted_student(), tmp_path / "bad.onnx", check_inputs=faces[:4])
    assert not (tmp_path / "bad.onnx").exists()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(fitted_student(), tmp_path / "x.onnx", opset=11)
    with pytest.raises(ValueError, match="check_inputs"):
        export_onnx(fitted_student(), tmp_path / "x.onnx", check_inputs=np.zeros((1, 3, 112, 112), np.float32))
