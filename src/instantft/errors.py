"""The one exception type users see: a single line naming the file or value and the problem."""

from __future__ import annotations


class InstantFTError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` and no traceback."""
