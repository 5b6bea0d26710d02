"""fiqa-sdk, device side: detect, align and score faces, and gate captures. Imports no torch."""
from fiqa_sdk.align import align_face, alignment_matrix, estimate_similarity, transform_points
from fiqa_sdk.detection import (
    Detection,
    Detector,
    DetectorUnavailable,
    RetinaFaceDetector,
    available_detectors,
    create_detector,
    register_detector,
)
# Registers "dlib" with create_detector; dlib itself is imported only when a DlibDetector is built.
from fiqa_sdk.dlib_detector import DlibDetector, dlib_landmarks68
from fiqa_sdk.frames import FrameError, to_bgr
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112, SPEC, PreprocessSpec, faces_to_tensor
from fiqa_sdk.samples import SampleUnavailable, load_sample, sample_images
from fiqa_sdk.bundle import Bundle, BundleError, default_bundle_path, load_bundle
from fiqa_sdk.gate import CaptureGate, GateConfig, GateDecision, Reason
from fiqa_sdk.pipeline import CapturePipeline, FrameReport
from fiqa_sdk.scorer import FaceResult, FaceScore, Scorer, ScoreBatch
from fiqa_sdk.sources import open_source

__version__ = "0.1.0"

__all__ = [
    "Bundle", "BundleError", "CaptureGate", "CapturePipeline", "FaceResult", "FaceScore", "FrameReport", "GateConfig",
    "GateDecision", "Reason", "ScoreBatch", "Scorer", "default_bundle_path", "load_bundle", "open_source",
    "ARCFACE_TEMPLATE_112", "SPEC", "Detection", "Detector", "DetectorUnavailable", "DlibDetector", "FrameError",
    "PreprocessSpec", "RetinaFaceDetector", "SampleUnavailable", "align_face", "alignment_matrix",
    "available_detectors", "create_detector", "dlib_landmarks68", "estimate_similarity", "faces_to_tensor",
    "load_sample", "register_detector", "sample_images", "to_bgr", "transform_points",
]
