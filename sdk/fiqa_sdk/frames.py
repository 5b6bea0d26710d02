"""Frame validation: every entry point funnels frames through here so bad input fails once, clearly."""
from __future__ import annotations

import cv2
import numpy as np


class FrameError(ValueError):
    """A frame that cannot be interpreted as an image."""


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """Return an HxWx3 uint8 BGR view/copy of a grayscale, BGR or BGRA frame.

    Accepts uint8 (0-255) and float frames in [0, 1]; anything else raises FrameError naming the fix.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"frame must be a numpy array, got {type(frame).__name__}; "
                         "decode images with cv2.imread / cv2.VideoCapture first")
    if frame.size == 0:
        raise FrameError(f"frame is empty (shape {frame.shape})")
    if frame.dtype != np.uint8:
        if np.issubdtype(frame.dtype, np.floating):
            if np.nanmin(frame) < 0.0 or np.nanmax(frame) > 1.0:
                raise FrameError("float frames must hold values in [0, 1]; convert 0-255 images to uint8")
            frame = np.round(np.nan_to_num(frame) * 255.0).astype(np.uint8)
        else:
            raise FrameError(f"frame dtype {frame.dtype} is not supported; use uint8 (0-255) or float in [0, 1]")
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3:
        channels = frame.shape[2]
        if channels == 1:
            return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
        if channels == 3:
            return frame
        if channels == 4:
            return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    raise FrameError(f"frame of shape {frame.shape} is not an image: expected HxW (gray), HxWx3 (BGR) or HxWx4 (BGRA)")
