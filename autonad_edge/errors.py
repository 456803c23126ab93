"""The root of the host library's errors.

Every error the library raises on purpose (bad data, a bad architecture or checkpoint, an
unreachable target, a failed export, ...) derives from `AutonadError`, and from the builtin
its callers have caught so far (ValueError, RuntimeError, LookupError). The CLI turns an
`AutonadError` into one line naming the problem; anything else is a bug and keeps its
traceback. Pure Python: the torch-free modules (`space.py`, the latency table) use it too.
"""

from __future__ import annotations


class AutonadError(Exception):
    """An error the library raises on purpose; its message is one line naming the problem."""


__all__ = ["AutonadError"]
