"""Values made strict-JSON safe, for every file the SDK and the compile write (reports, manifests, results)."""
from __future__ import annotations

import numpy as np


def finite_or_null(obj):
    """``obj`` with every NaN/inf float (numpy scalars included) as None, numpy scalars as Python numbers and
    dict keys as strings (JSON's only key type; json.dumps refuses numpy keys)."""
    if isinstance(obj, dict):
        return {str(k): finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
