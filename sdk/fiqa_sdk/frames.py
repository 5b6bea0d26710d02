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
            bad = int(np.count_nonzero(~np.isfinite(frame)))
            if bad:  # a NaN would otherwise be scored as a black pixel, an inf as a range error that says nothing
                raise FrameError(f"float frame holds {bad} NaN or infinite value(s) (of {frame.size}), which would "
                                 "be scored as black pixels; fix what produced them (np.isfinite(frame) shows where) "
                                 "or replace them with np.nan_to_num(frame) if black is what they mean")
            if frame.min() < 0.0 or frame.max() > 1.0:
                raise FrameError("float frames must hold values in [0, 1]; convert 0-255 images to uint8")
            frame = np.round(frame * 255.0).astype(np.uint8)
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
    raise FrameError(f"frame of shape {frame.shape} is not an image: expected HxW (gray), HxWx3 (BGR) or HxWx4 "
                     f"(BGRA){_layout_hint(frame.shape)}")


def _layout_hint(shape: tuple[int, ...]) -> str:
    """The fix for a frame of this (refused) shape, when its shape says what it is."""
    channels_first = len(shape) >= 3 and shape[-3] in (1, 3, 4) and shape[-1] not in (1, 3, 4)
    if len(shape) == 4 and shape[0] == 1:
        return ("; this looks like a model's NCHW tensor of one frame: pass frame[0].transpose(1, 2, 0)"
                if channels_first else "; this is a batch of one frame: pass frame[0]")
    if len(shape) == 4:
        return f"; this is a batch of {shape[0]} frames: pass them one at a time"
    if len(shape) == 3 and channels_first:
        return "; this looks channels-first (CxHxW, a model's layout): pass frame.transpose(1, 2, 0)"
    if len(shape) == 3 and shape[2] == 2:
        return "; 2 channels is gray + alpha: pass the gray plane, frame[..., 0]"
    return ""
