"""Write a deployment bundle: model files copied byte for byte, every file hashed, one ``manifest.json`` sidecar.

The manifest schema is defined (and documented) once, in :mod:`fiqa_sdk.bundle`; this writer produces it and then
proves it by loading the result with the device loader before publishing it. Publishing is a directory swap:
the bundle is assembled in a hidden temp folder next to ``out_dir`` and renamed into place, so a failure at any
point leaves an existing bundle untouched and no half-written one behind.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from fiqa_sdk.bundle import (
    DEFAULT_BACKEND_PREFERENCE,
    KIND,
    MANIFEST,
    MODEL_FORMATS,
    PRECISIONS,
    SCORE_NAMES,
    TARGETS,
    ScoreSpec,
    bundle_id_for,
    check_relative_name,
    load_bundle,
)
from fiqa_sdk.preprocess import SPEC

log = logging.getLogger(__name__)

TOOLS = ("fiqa-sdk", "torch", "onnx", "onnxruntime", "onnxsim", "litert-torch", "ai-edge-litert", "numpy")


class BundleExistsError(FileExistsError):
    """``out_dir`` already holds a bundle (or other files) and ``force`` was not given."""


@dataclass(frozen=True)
class ModelArtifact:
    """A model file to ship. ``input``/``output``: its tensor names; ``None`` reads them from the file (TFLite
    converters rename tensors), a given name must exist in the file."""

    name: str
    path: Path
    format: str
    precision: str
    backends: tuple[str, ...]
    input: str | None = None
    output: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "backends", tuple(self.backends))
        if self.format not in MODEL_FORMATS:
            raise ValueError(f"model {self.name!r}: format must be one of {list(MODEL_FORMATS)}, got {self.format!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"model {self.name!r}: precision must be one of {list(PRECISIONS)}, "
                             f"got {self.precision!r}")
        if not self.backends:
            raise ValueError(f"model {self.name!r}: list at least one backend that may run it")


@dataclass(frozen=True)
class TensorRTArtifact:
    """The TensorRT section: ``model`` names the ONNX :class:`ModelArtifact` (normally the Q/DQ INT8 one) a Jetson
    builds its engine from; ``calibration_cache`` is copied into the bundle as ``trt_calibration.cache``."""

    model: str
    calibration_cache: Path | None = None
    precision: str = "int8"
    fp16_fallback: bool = True
    max_batch: int = 16
    opt_batch: int = 1
    workspace_mb: int = 256

    def __post_init__(self) -> None:
        if self.precision not in ("int8", "fp16", "fp32"):
            raise ValueError(f"tensorrt precision must be int8, fp16 or fp32, got {self.precision!r}")
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ValueError(f"need 1 <= opt_batch <= max_batch, got {self.opt_batch}, {self.max_batch}")
        if self.workspace_mb < 1:
            raise ValueError(f"workspace_mb must be >= 1, got {self.workspace_mb}")

    def build(self) -> dict[str, Any]:
        return {"precision": self.precision, "fp16_fallback": self.fp16_fallback, "max_batch": self.max_batch,
                "opt_batch": self.opt_batch, "workspace_mb": self.workspace_mb}


# -- helpers ----------------------------------------------------------------------------------------------------------

def _copy_hashed(src: Path, dst: Path) -> str:
    """Copy bytes unchanged and return the sha256 of what was written (read back, so the disk is checked too)."""
    if not src.is_file():
        raise FileNotFoundError(f"bundle input {src} does not exist or is not a file")
    dst.parent.mkdir(parents=True, exist_ok=True)
    h_src = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        while block := fi.read(1 << 20):
            h_src.update(block)
            fo.write(block)
        fo.flush()
        os.fsync(fo.fileno())
    h_dst = hashlib.sha256(dst.read_bytes()).hexdigest()
    if h_dst != h_src.hexdigest():
        raise OSError(f"copy of {src} to {dst} reads back differently (sha256 {h_dst} != {h_src.hexdigest()})")
    return h_dst


def _registered_backends() -> dict[str, tuple[str, ...]]:
    """Backend name -> model formats it runs, from fiqa_runtimes' registry (installed or not)."""
    from fiqa_runtimes import base

    return {name: tuple(f.value for f in formats) for name, (_, _, formats) in base._REGISTRY.items()}


def _probe(artifact: ModelArtifact, n_scores: int) -> tuple[str, str]:
    """Run the model once on a batch of 2 zero faces in an installed runtime; return its (input, output) names.

    Catches a wrong file, a wrong format, a static batch that cannot be resized and an output that is not
    [N, n_scores] at compile time instead of on the device.
    """
    from fiqa_runtimes import available_backends, load_backend

    usable = [b for b in available_backends(artifact.format) if b != "tensorrt"]
    if not usable:
        raise RuntimeError(f"cannot check model {artifact.name!r}: no runtime for {artifact.format} is installed "
                           "on this host; fiqa-compile depends on fiqa-sdk[onnx,tflite]: reinstall it "
                           "(pip install . ./host)")
    engine = load_backend(str(artifact.path), artifact.format, backend=usable[0], threads=1)
    inputs, outputs = engine.input_names, engine.output_names
    if artifact.input is not None and artifact.input not in inputs:
        raise ValueError(f"model {artifact.name!r} ({artifact.path}) has no input {artifact.input!r}; it has {inputs}")
    if artifact.output is not None and artifact.output not in outputs:
        raise ValueError(f"model {artifact.name!r} ({artifact.path}) has no output {artifact.output!r}; "
                         f"it has {outputs}")
    if artifact.input is None and len(inputs) != 1:
        raise ValueError(f"model {artifact.name!r} has inputs {inputs}; name the face input in ModelArtifact.input")
    if artifact.output is None and len(outputs) != 1:
        raise ValueError(f"model {artifact.name!r} has outputs {outputs}; name the scores output in "
                         "ModelArtifact.output")
    in_name = artifact.input or inputs[0]
    out_name = artifact.output or outputs[0]
    x = np.zeros((2, 3, SPEC.size, SPEC.size), np.float32)
    y = engine.run({in_name: x})[out_name]
    if y.shape != (2, n_scores):
        raise ValueError(f"model {artifact.name!r} maps a [2, 3, {SPEC.size}, {SPEC.size}] batch to {y.shape}, "
                         f"not [2, {n_scores}] (utility, perceptual); a bundle needs a batch-resizable scores model")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"model {artifact.name!r} outputs non-finite values on a blank batch")
    return in_name, out_name


def _tool_versions() -> dict[str, str]:
    out = {}
    for dist in TOOLS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _check_thresholds(thresholds: Mapping[str, Any]) -> dict[str, Any]:
    from fiqa_sdk.gate import GateConfig

    try:
        config = GateConfig.from_manifest({"thresholds": dict(thresholds)})
    except (TypeError, ValueError) as e:
        raise ValueError(f"thresholds are not a valid gate configuration: {e}") from e
    return {k: getattr(config, k) for k in thresholds}


def _holds_bundle(path: Path) -> bool:
    return (path / MANIFEST).exists()


def _files_outside_bundle(path: Path) -> list[str]:
    """Files under ``path`` that its manifest does not list (a user's notes, captures...): --force must not
    delete them with the old bundle. An unreadable manifest lists nothing, so every file counts."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        listed = {MANIFEST, *(m["file"] for m in manifest.get("models", [])), *manifest.get("files", {})}
        if manifest.get("tensorrt") and manifest["tensorrt"].get("calibration_cache"):
            listed.add(manifest["tensorrt"]["calibration_cache"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        listed = set()
    present = {f.relative_to(path).as_posix() for f in path.rglob("*") if not f.is_dir()}
    return sorted(present - listed)


def output_dir_problem(out: Path, force: bool) -> str | None:
    """Why a new bundle cannot be written to ``out`` (None when it can). ``force`` replaces an existing bundle,
    but only one whose folder holds nothing else: it can never delete files the bundle does not list."""
    out = Path(out)
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out} exists and is not a folder; choose another --out"
    if not _holds_bundle(out):
        if any(out.iterdir()):
            return (f"{out} is a non-empty folder that is not a bundle; refusing to replace its contents, even with "
                    "--force. Choose an empty or new --out")
        return None
    if not force:
        return (f"{out} already holds a bundle; pass --force to replace it (the old one is kept until the new one is "
                "complete) or choose another --out")
    foreign = _files_outside_bundle(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return (f"{out} holds a bundle and also {len(foreign)} file(s) its manifest does not list ({shown}); --force "
                "replaces a bundle only when nothing else is in its folder, so move them out or choose another --out")
    return None


# -- the writer -------------------------------------------------------------------------------------------------------

def write_bundle(out_dir: str | os.PathLike, target: str, models: Sequence[ModelArtifact],
                 scores: Sequence[ScoreSpec | Mapping[str, Any]], thresholds: Mapping[str, Any],
                 tensorrt: TensorRTArtifact | None = None, extra_files: Mapping[str, str | os.PathLike] | None = None,
                 provenance: Mapping[str, Any] | None = None, force: bool = False,
                 backend_preference: Sequence[str] = DEFAULT_BACKEND_PREFERENCE, mirror_average: bool = False) -> Path:
    """Assemble, verify and publish a bundle at ``out_dir``; returns its path.

    Refuses an ``out_dir`` that already holds a bundle unless ``force`` (then the old bundle is replaced only once
    the new one is complete and verified), and always refuses a non-empty folder that is not a bundle, so force
    can never delete unrelated files. ``scores``: :class:`fiqa_sdk.bundle.ScoreSpec` objects or their dicts.
    ``thresholds``: :class:`fiqa_sdk.gate.GateConfig` keys. ``extra_files``: ``{name in bundle: source path}``
    (reports, plots), hashed under the manifest's ``files``. ``mirror_average``: the device scores each face as
    the mean over it and its mirror image (written as schema_version 2, which older readers refuse rather than
    score differently); a score with a calibrated scale (``ScoreSpec.scale`` isotonic) makes it schema_version 3.
    """
    out = Path(out_dir).absolute()
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    if (problem := output_dir_problem(out, force)) is not None:
        raise BundleExistsError(problem)

    # Validate everything that needs no copying first: a bad argument should fail before any I/O.
    if not models:
        raise ValueError("a bundle needs at least one model")
    specs = [s if isinstance(s, ScoreSpec) else ScoreSpec.from_dict(s) for s in scores]
    if sorted(s.name for s in specs) != sorted(SCORE_NAMES) or len({s.index for s in specs}) != len(specs):
        raise ValueError(f"scores must describe {list(SCORE_NAMES)} once each on distinct output columns, got "
                         f"{[(s.name, s.index) for s in specs]}")
    n_out = max(s.index for s in specs) + 1
    thresholds = _check_thresholds(thresholds)
    registered = _registered_backends()
    names, files = set(), set()
    for a in models:
        check_relative_name(a.path.name, f"model {a.name!r} file name")
        if a.name in names or a.path.name in files:
            raise ValueError(f"model names and file names must be unique; {a.name!r} / {a.path.name!r} repeats")
        names.add(a.name)
        files.add(a.path.name)
        for b in a.backends:
            if b not in registered:
                raise ValueError(f"model {a.name!r} lists unknown backend {b!r}; known: {sorted(registered)}")
            if a.format not in registered[b]:
                raise ValueError(f"model {a.name!r} is {a.format} but backend {b!r} runs {list(registered[b])}")
    unknown_pref = [b for b in backend_preference if b not in registered]
    if unknown_pref:
        raise ValueError(f"backend_preference names unknown backends {unknown_pref}; known: {sorted(registered)}")
    extras = {check_relative_name(k, "extra file"): Path(v) for k, v in (extra_files or {}).items()}
    trt_section = None
    if tensorrt is not None:
        trt_model = next((a for a in models if a.name == tensorrt.model), None)
        if trt_model is None or trt_model.format != "onnx":
            raise ValueError(f"tensorrt.model={tensorrt.model!r} must name one of the ONNX models "
                             f"{[a.name for a in models if a.format == 'onnx']}")
        if tensorrt.calibration_cache is not None:
            extras = {**extras, "trt_calibration.cache": Path(tensorrt.calibration_cache)}
        trt_section = {"onnx": trt_model.path.name,
                       "calibration_cache": "trt_calibration.cache" if tensorrt.calibration_cache else None,
                       "build": tensorrt.build()}
    clash = sorted(set(extras) & files)
    if clash:
        raise ValueError(f"extra files {clash} clash with model file names")
    prov = dict(provenance or {})
    prov["tools"] = {**_tool_versions(), **dict(prov.get("tools", {}))}

    probed = {a.name: _probe(a, n_out) for a in models}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        entries = []
        for a in models:
            digest = _copy_hashed(a.path, tmp / a.path.name)
            in_name, out_name = probed[a.name]
            entries.append({"name": a.name, "file": a.path.name, "sha256": digest, "format": a.format,
                            "precision": a.precision, "backends": list(a.backends), "input": in_name,
                            "output": out_name})
        hashed = {name: _copy_hashed(src, tmp / name) for name, src in sorted(extras.items())}
        manifest = {
            "schema_version": schema_version(specs, mirror_average), "kind": KIND, "bundle_id": None,
            "target": target,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "models": entries, "backend_preference": list(backend_preference),
            "input": {"name": "faces", "shape": [None, 3, SPEC.size, SPEC.size], "dtype": SPEC.dtype,
                      "layout": SPEC.layout},
            "preprocessing": SPEC.to_dict(), "mirror_average": bool(mirror_average),
            "scores": [s.to_dict() for s in sorted(specs, key=lambda s: s.index)],
            "thresholds": thresholds, "tensorrt": trt_section, "files": hashed, "provenance": prov,
        }
        try:
            text = json.dumps(manifest, indent=2, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"bundle manifest is not plain JSON (check provenance values): {e}") from e
        # the id covers the manifest as the device will read it back (tuples as lists, numpy floats as floats)
        manifest["bundle_id"] = bundle_id_for({**{e["file"]: e["sha256"] for e in entries}, **hashed},
                                              json.loads(text))
        text = json.dumps(manifest, indent=2, allow_nan=False)
        (tmp / MANIFEST).write_text(text + "\n", encoding="utf-8")
        load_bundle(tmp)  # the device loader must accept exactly what we publish
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (%s) to %s", manifest["bundle_id"], target, out)
    return out


def schema_version(specs: Sequence[ScoreSpec], mirror_average: bool) -> int:
    """The oldest schema that holds these settings, so a bundle that needs nothing new stays readable by older
    SDKs: 3 for a calibrated score scale, 2 for mirror averaging (an older reader would skip either and score
    differently, so it must refuse the bundle instead), else 1."""
    if any(s.calibrated for s in specs):
        return 3
    return 2 if mirror_average else 1


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an existing bundle is set aside and restored if the move fails."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        out.rmdir()
        os.rename(tmp, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    old.rmdir()
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def score_spec_from_teacher_scores(name: str, index: int, teacher: str, teacher_scores: np.ndarray,
                                   meaning: str = "", higher_is_better: bool = True) -> ScoreSpec:
    """A :class:`ScoreSpec` from a teacher's scores: mean/std (population std) for the z-scores, lo/hi = the
    1st/99th percentiles for the 0-100 scale.

    Pass exactly the teacher scores the distillation normalised its targets with: the device un-normalises the
    student's output with these mean/std, so any other statistics would shift every device score.
    """
    t = np.asarray(teacher_scores, dtype=np.float64).ravel()
    t = t[np.isfinite(t)]
    if t.size < 2:
        raise ValueError(f"need at least 2 finite teacher scores for {name!r}, got {t.size}")
    lo, hi = np.percentile(t, [1, 99])
    std = float(t.std())
    if not math.isfinite(std) or std <= 0 or hi <= lo:
        raise ValueError(f"teacher scores for {name!r} are constant; cannot define a score scale")
    return ScoreSpec(name=name, index=index, teacher=teacher, mean=float(t.mean()), std=std, lo=float(lo),
                     hi=float(hi), higher_is_better=higher_is_better, meaning=meaning)
