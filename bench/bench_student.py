"""Student cost: parameters, MACs, artifact sizes and per-face latency of every deployable form.

For each student (default ``student_mfn``, ``student_mfn_deep``, ``student_mfn_full``, ``student_nano``) this
exports and converts exactly as the compile does -- fp32 ONNX (dynamo + onnxsim), Q/DQ INT8 ONNX (percentile
calibration), float TFLite, full-INT8 TFLite (PT2E) -- calibrating on a 300-face stratified set built from the
pip-shipped sample photos, then times batch-1 inference of one 112x112 face through each runtime at 1 and 2 threads:

torch fp32 (eval, BN folded) | ONNX Runtime fp32 | ONNX Runtime Q/DQ INT8 | LiteRT fp32 | LiteRT INT8

ORT and LiteRT are timed through ``fiqa_runtimes`` backends (what the SDK calls: LiteRT's includes quantising
the float input and dequantising the scores). Weights are random (latency does not depend on their values), with
BatchNorm given trained-like affine parameters and statistics from real faces: a fresh model's zero-initialised
residual BNs fold into all-zero convs, which the TFLite writer de-duplicates and which would understate file sizes.
Writes ``bench/results/student.{json,md}``.

Usage:  python bench/bench_student.py [--models student_mfn student_mfn_deep ...] [--runs 200]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/common.py, also when loaded by path
from common import cpu_name, time_interleaved  # noqa: E402
import torch

from fiqa_calibration.calibration_set import build_calibration_set, sample_pool
from fiqa_compile.export.onnx_export import export_onnx
from fiqa_compile.export.qdq import build_qdq
from fiqa_compile.export.tflite import convert_float, convert_int8
from fiqa_compile.models import create_model
from fiqa_compile.models.profile import profile_model
from fiqa_compile.models.students import export_ready
from fiqa_runtimes import load_backend

THREADS = (1, 2)


def machine() -> dict:
    cpu = cpu_name()
    import ai_edge_litert
    import litert_torch
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "loadavg_at_start": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "litert_torch": litert_torch.__version__,
            "ai_edge_litert": getattr(ai_edge_litert, "__version__", "?")}


def trained_like(model: torch.nn.Module, faces: np.ndarray) -> torch.nn.Module:
    """Random BN affine parameters and running statistics measured on real faces (see the module docstring)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
        model.train()
        for i in range(0, len(faces), 16):
            model(torch.from_numpy(faces[i:i + 16]))
    return model.eval()


def convert_model(name: str, calib: np.ndarray, check: np.ndarray, workdir: Path) -> tuple[dict, torch.nn.Module]:
    """Write the four artifacts of one student into ``workdir/name``; returns its static facts and the model."""
    prof = profile_model(name)
    torch.manual_seed(0)
    model = trained_like(create_model(name), calib[:64])
    d = workdir / name
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    onnx_rep = export_onnx(model, d / "fp32.onnx")
    qdq = build_qdq(d / "fp32.onnx", d / "int8.qdq.onnx", calib, method="percentile", check_inputs=check)
    tfl_f = convert_float(model, d / "fp32.tflite", check_inputs=check[:8])
    tfl_q = convert_int8(model, d / "int8.tflite", calib, check_inputs=check)
    facts = {"model": name, "params": prof.params, "macs": prof.macs,
             "sizes_bytes": {"onnx_fp32": onnx_rep.size_bytes, "onnx_qdq_int8": qdq.size_bytes,
                             "tflite_fp32": tfl_f.size_bytes, "tflite_int8": tfl_q.size_bytes},
             "onnx_exporter": onnx_rep.exporter, "tflite_int8_ops": tfl_q.op_counts,
             "tflite_int8_io": {"input": tfl_q.inputs[0], "output": tfl_q.outputs[0]},
             "conversion_s": round(time.perf_counter() - t0, 1)}
    return facts, model


def runners(name: str, model: torch.nn.Module, face: np.ndarray, workdir: Path) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per (runtime, threads) for this student's artifacts."""
    d = workdir / name
    net = export_ready(model)
    x = torch.from_numpy(face)
    fns: dict[str, Callable[[], object]] = {}

    def torch_call(th: int) -> Callable[[], object]:
        def call():
            torch.set_num_threads(th)  # cheap when unchanged; other runners may have changed it
            with torch.no_grad():
                return net(x)
        return call

    for th in THREADS:
        fns[f"{name}|torch_fp32@{th}"] = torch_call(th)
    for label, fname, fmt, backend in (("ort_fp32", "fp32.onnx", "onnx", "onnxruntime"),
                                       ("ort_qdq_int8", "int8.qdq.onnx", "onnx", "onnxruntime"),
                                       ("litert_fp32", "fp32.tflite", "tflite", "litert"),
                                       ("litert_int8", "int8.tflite", "tflite", "litert")):
        for th in THREADS:
            be = load_backend((d / fname).read_bytes(), fmt, backend=backend, threads=th)
            fns[f"{name}|{label}@{th}"] = (lambda b: lambda: b.run1(face))(be)
    return fns


def markdown(results: list[dict], info: dict) -> str:
    lines = ["# Student cost", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, load average when timing started "
             f"{info['loadavg_at_timing']} (shared VM: compare within this file only). Batch 1, one 112x112 face; "
             f"median (p90) ms over {results[0]['latency']['torch_fp32@1']['runs']} runs, all configurations "
             "interleaved in 4 rounds. On this 2-core VM shared with other jobs the 2-thread column is contention-"
             "bound (torch's OpenMP pool worst of all): read the 1-thread column.", "",
             "| model | params | MMACs | ONNX fp32 | Q/DQ INT8 | TFLite fp32 | TFLite INT8 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s = {k: f"{v / 1e6:.2f} MB" for k, v in r["sizes_bytes"].items()}
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['macs'] / 1e6:.0f} | {s['onnx_fp32']} | "
                     f"{s['onnx_qdq_int8']} | {s['tflite_fp32']} | {s['tflite_int8']} |")
    lines += ["", "| model | runtime | 1 thread | 2 threads |", "|---|---|---:|---:|"]
    for r in results:
        for label in ("torch_fp32", "ort_fp32", "ort_qdq_int8", "litert_fp32", "litert_int8"):
            cells = [f"{r['latency'][f'{label}@{t}']['median_ms']:.2f} ({r['latency'][f'{label}@{t}']['p90_ms']:.2f})"
                     for t in THREADS]
            lines.append(f"| {r['model']} | {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["student_mfn", "student_mfn_deep", "student_mfn_full", "student_nano"])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()

    info = machine()
    pool = sample_pool(seed=0)
    calib_set = build_calibration_set(pool.faces, pool.kinds, pool.severity, size=300, seed=0)
    from fiqa_sdk.preprocess import faces_to_tensor

    rest = np.setdiff1d(np.arange(len(pool.faces)), calib_set.source_index)
    check = faces_to_tensor(pool.faces[rest[:64]])
    face = check[:1].copy()
    results, fns = [], {}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="fiqa-bench-student-") as tmp:
        for name in args.models:
            print(f"[bench_student] converting {name} ...", flush=True)
            facts, model = convert_model(name, calib_set.tensors, check, Path(tmp))
            results.append(facts)
            fns.update(runners(name, model, face, Path(tmp)))
        print(f"[bench_student] timing {len(fns)} configurations ...", flush=True)
        info["loadavg_at_timing"] = [round(v, 2) for v in os.getloadavg()]
        timings = time_interleaved(fns, args.runs, args.warmup)
    torch.set_num_threads(threads)
    for r in results:
        r["latency"] = {k.split("|", 1)[1]: v for k, v in timings.items() if k.split("|", 1)[0] == r["model"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "student.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    md = markdown(results, info)
    (args.out / "student.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
