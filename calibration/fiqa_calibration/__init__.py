"""fiqa-calibration: face datasets, degradations and calibration-set selection for the compile side.

Imports fiqa_sdk (detection, alignment, the preprocessing spec) and never torch.
"""
from fiqa_calibration.datasets import (
    IMAGE_EXTENSIONS,
    FaceDataset,
    FaceFolder,
    SampleFaces,
    find_lfw_dev,
    held_out_people,
)

__all__ = ["IMAGE_EXTENSIONS", "FaceDataset", "FaceFolder", "SampleFaces", "find_lfw_dev", "held_out_people"]
