"""The JSON records beside weights (``teacher.json``, ``student.json``), read so that a damaged one is named."""
from __future__ import annotations

import json
from pathlib import Path


def read_record(path: Path, keys: tuple[str, ...], error: type[Exception], fix: str) -> dict:
    """``path``'s JSON object, which must hold ``keys`` (the first a string: the model it describes).

    Raises ``error`` naming the file and ``fix`` when it is not JSON, not an object, or lacks a key: a traceback
    from deep inside the loader would not say which file to restore.
    """
    try:
        info = json.loads(Path(path).read_text())
        if not isinstance(info, dict) or not isinstance(info.get(keys[0]), str) or any(k not in info for k in keys):
            raise ValueError(f"it needs the keys {', '.join(repr(k) for k in keys)}")
    except ValueError as e:  # JSONDecodeError is a ValueError
        what = Path(path).stem
        raise error(f"{path} is not a {what} record ({e}); {fix}") from e
    return info
