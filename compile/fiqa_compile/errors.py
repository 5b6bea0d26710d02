"""The one error type of the compile side: raised by any stage, printed by the CLIs without a traceback."""
from __future__ import annotations


class CompileError(RuntimeError):
    """A stage failed a check; the message names the stage, the numbers and what to try."""
