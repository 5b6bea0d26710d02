"""Real tiny bundles for the bundle, scorer and pipeline tests: torch modules exported to ONNX (and TFLite with
litert-torch), written with the real ``write_bundle``.

Two models:

* :class:`TinyQualityNet`: a seeded conv -> ReLU -> mean -> linear net; arbitrary but fixed numbers, to check
  that every backend and the 0-100 mapping compute exactly what the ONNX file computes.
* :class:`SharpnessBrightnessNet`: fixed (not learned) weights that make its scores really track image quality:
  both outputs grow with the log energy of the Laplacian of luma (sharpness) and fall as the mean luma drops
  below ~100/255 (darkness). Used where a test needs a scorer whose perceptual score means something.

Exports are memoised per process; the TFLite conversion (seconds of CPU) is also cached on disk in pytest's
cache folder, keyed by the model's weights and the torch/litert-torch versions.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import warnings
from pathlib import Path

import numpy as np

from fiqa_sdk import align_face, load_sample
from fiqa_sdk.bundle import ScoreSpec

torch = __import__("torch")
nn = torch.nn

UTILITY_TEACHER = "vit_fiqa_tiny"
PERCEPTUAL_TEACHER = "dsl_fiqa_tiny"


class TinyQualityNet(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, faces):
        return self.fc(torch.relu(self.conv(faces)).mean((2, 3)))


class SharpnessBrightnessNet(nn.Module):
    """scores = W @ [log(mean(laplacian(luma)^2)), relu(-0.2 - mean(luma))] + b, luma in [-1, 1]."""

    def __init__(self):
        super().__init__()
        self.luma = nn.Conv2d(3, 1, 1, bias=False)
        self.lap = nn.Conv2d(1, 1, 3, bias=False)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.luma.weight.copy_(torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))  # input is RGB
            self.lap.weight.copy_(torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3))
            self.head.weight.copy_(torch.tensor([[0.8, -4.0], [2.0, -16.0]]))
            self.head.bias.copy_(torch.tensor([4.0, 5.0]))

    def forward(self, faces):
        y = self.luma(faces)
        energy = torch.log(self.lap(y).pow(2).mean((2, 3)) + 1e-6)
        dark = torch.relu(-0.2 - y.mean((2, 3)))
        return self.head(torch.cat([energy, dark], 1))


def weights_key(module: nn.Module) -> str:
    h = hashlib.sha256(type(module).__name__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    for dist in ("torch", "litert-torch"):
        h.update(importlib.metadata.version(dist).encode())
    return h.hexdigest()[:16]


def export_onnx(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, 112, 112),), str(path), input_names=["faces"],
                          output_names=["scores"], dynamic_axes={"faces": {0: "batch"}, "scores": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return path


def tflite_cache(pytestconfig) -> Path | None:
    """pytest's cache folder for converted models (None when pytest runs with -p no:cacheprovider)."""
    cache = getattr(pytestconfig, "cache", None)
    return cache.mkdir("fiqa-test-tflite") if cache is not None else None


def export_tflite(module: nn.Module, path: Path, cache_dir: Path | None) -> Path:
    cached = cache_dir / f"{weights_key(module)}.tflite" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        shutil.copyfile(cached, path)
        return path
    import litert_torch

    litert_torch.convert(module.eval(), (torch.zeros(1, 3, 112, 112),)).export(str(path))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, cached)
    return path


def torch_scores(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.eval()(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def score_specs(u: tuple[float, float, float, float] = (3.1, 0.7, 2.0, 4.5),
                p: tuple[float, float, float, float] = (50.0, 12.0, 30.0, 80.0)) -> list[ScoreSpec]:
    """(mean, std, lo, hi) per score; non-trivial values so the test of the 0-100 formula can fail."""
    return [ScoreSpec("utility", 0, UTILITY_TEACHER, *u, meaning="recognition utility (test)"),
            ScoreSpec("perceptual", 1, PERCEPTUAL_TEACHER, *p, meaning="perceptual quality (test)")]


THRESHOLDS = {"utility_accept": 60.0, "utility_release": 50.0, "perceptual_accept": 50.0,
              "perceptual_release": 40.0}


_ALIGNED: dict[str, np.ndarray] = {}


def aligned_faces(detector) -> dict[str, np.ndarray]:
    """Aligned 112x112 BGR faces from the pip-shipped photos: t1 (6 faces), grace_hopper, astronaut."""
    if not _ALIGNED:
        for name in ("t1", "grace_hopper", "astronaut"):
            img = load_sample(name)
            dets = detector(img)
            _ALIGNED[name] = np.stack([align_face(img, d.landmarks) for d in dets])
    return dict(_ALIGNED)


def write_test_bundle(out: Path, onnx: Path, tflite: Path | None = None, specs: list[ScoreSpec] | None = None,
                      thresholds: dict | None = None, extra_files: dict | None = None, trt_cache: Path | None = None,
                      target: str = "cpu", force: bool = False, mirror_average: bool = False) -> Path:
    """A bundle as fiqa-compile would write it: TFLite first (LiteRT), the ONNX for ORT/OpenCV and TensorRT."""
    from fiqa_compile.bundle import ModelArtifact, TensorRTArtifact, write_bundle

    models = [ModelArtifact("onnx_fp32", onnx, "onnx", "fp32", ("tensorrt", "onnxruntime", "opencv"))]
    if tflite is not None:
        models.insert(0, ModelArtifact("tflite_fp32", tflite, "tflite", "fp32", ("litert", "tflite-runtime")))
    return write_bundle(out, target, models, specs or score_specs(), THRESHOLDS if thresholds is None else thresholds,
                        tensorrt=TensorRTArtifact("onnx_fp32", calibration_cache=trt_cache, precision="fp32",
                                                  max_batch=8, opt_batch=1),
                        extra_files=extra_files, force=force, mirror_average=mirror_average,
                        provenance={"command": "pytest", "student": {"arch": "tiny-test"}})


def newer_opset_bundle(dst: Path) -> Path:
    """The embedded cpu bundle with its ONNX models stamped opset 99, newer than any installed ONNX Runtime knows
    (which refuses them at load; OpenCV's importer does not check the stamp), hashes and bundle id redone as a
    compile would."""
    import json

    import onnx

    from fiqa_sdk.bundle import BUNDLES_DIR, DEFAULT_BUNDLES, MANIFEST, bundle_id_for, sha256_file

    shutil.copytree(BUNDLES_DIR / DEFAULT_BUNDLES["cpu"], dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    for entry in manifest["models"]:
        model = onnx.load(str(dst / entry["file"]))
        for opset in model.opset_import:
            if opset.domain in ("", "ai.onnx"):
                opset.version = 99
        onnx.save(model, str(dst / entry["file"]))
        entry["sha256"] = sha256_file(dst / entry["file"])
    hashes = {**{e["file"]: e["sha256"] for e in manifest["models"]}, **manifest["files"]}
    manifest["bundle_id"] = bundle_id_for(hashes, manifest)
    (dst / MANIFEST).write_text(json.dumps(manifest))
    return dst
