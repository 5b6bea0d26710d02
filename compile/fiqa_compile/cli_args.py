"""argparse value types shared by the fiqa-* commands: a bad number is refused when the options are read, with
the option's name, instead of failing minutes later (a ZeroDivisionError after scoring every face)."""
from __future__ import annotations

import argparse
import math


def _bounded(text: str, cast: type, lo: float, hi: float, need: str) -> int | float:
    try:
        value = cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if cast is int else 'a number'}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise argparse.ArgumentTypeError(f"{value} must be {need}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, epochs, threads)."""
    return _bounded(text, int, 1, math.inf, "1 or more")


def non_negative_int(text: str) -> int:
    """An integer >= 0 (e.g. 0 extra degraded versions)."""
    return _bounded(text, int, 0, math.inf, "0 or more")


def positive_float(text: str) -> float:
    """A number > 0 (learning rates, time limits)."""
    return _bounded(text, float, math.nextafter(0.0, 1.0), math.inf, "positive")


def correlation(text: str) -> float:
    """A correlation threshold in [-1, 1] (-1 accepts anything: the check is off)."""
    return _bounded(text, float, -1.0, 1.0, "between -1 and 1 (an SRCC)")


def plain(doc: str | None) -> str:
    """A module docstring as ``--help`` text: reST literals (double backquotes) read as plain words on a terminal."""
    return (doc or "").replace("``", "")
