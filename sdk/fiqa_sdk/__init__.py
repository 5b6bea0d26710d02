"""fiqa-sdk, device side: detect, align and score faces, and gate captures. Imports no torch."""
from fiqa_sdk.align import align_face, alignment_matrix, estimate_similarity
from fiqa_sdk.detection import Detection, Detector, RetinaFaceDetector, create_detector
from fiqa_sdk.frames import FrameError, to_bgr
from fiqa_sdk.preprocess import ARCFACE_TEMPLATE_112, SPEC, PreprocessSpec, faces_to_tensor

__version__ = "0.1.0"

__all__ = [
    "ARCFACE_TEMPLATE_112", "SPEC", "Detection", "Detector", "FrameError", "PreprocessSpec",
    "RetinaFaceDetector", "align_face", "alignment_matrix", "create_detector", "estimate_similarity",
    "faces_to_tensor", "to_bgr",
]
