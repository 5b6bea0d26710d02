"""What a user without permission meets, for tests that run as root (where chmod 000 stops no read): a file that
cannot be opened, a folder that cannot be listed or looked into. Patched where Python really asks the OS
(io.open / builtins.open, os.stat, os.scandir), so every caller on the way meets the error as it would."""
from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path


def _inside(path: object, target: str, strictly: bool) -> bool:
    if isinstance(path, int):  # a file descriptor: already open
        return False
    p = os.path.abspath(os.fsdecode(os.fspath(path)))
    return p.startswith(target + os.sep) or (not strictly and p == target)


def _denied(path: object) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(os.fspath(path)))


def deny_reading(monkeypatch, target: Path) -> None:
    """``target`` (a file or a folder) as a user without read permission on it sees it: opening it, or anything
    inside it, raises PermissionError; inside a folder, even stat() does (no search permission)."""
    target_s = os.path.abspath(target)
    real_open, real_stat, real_scandir = io.open, os.stat, os.scandir

    def guarded_open(file, *args, **kwargs):
        if _inside(file, target_s, strictly=False):
            raise _denied(file)
        return real_open(file, *args, **kwargs)

    def guarded_stat(path, *args, **kwargs):
        if _inside(path, target_s, strictly=True):
            raise _denied(path)
        return real_stat(path, *args, **kwargs)

    def guarded_scandir(path="."):
        if _inside(path, target_s, strictly=False):
            raise _denied(path)
        return real_scandir(path)

    monkeypatch.setattr(io, "open", guarded_open)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "stat", guarded_stat)
    monkeypatch.setattr(os, "scandir", guarded_scandir)
