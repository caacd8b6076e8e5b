"""On-the-fly adaptation: drifting streams, a bounded Forward Cache, when to adapt, and the
prequential (test-then-train) loop.

>>> from instantft.stream import StreamConfig, run_stream
>>> report = run_stream(StreamConfig(schedule="abrupt", method="instantft"))  # doctest: +SKIP

Names are imported on first use, so ``instantft --help`` does not load torch through here.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CORRUPTIONS": "corruptions",
    "STREAM_METHODS": "config",
    "StreamConfig": "config",
    "StreamSettings": "config",
    "StreamRun": "loop",
    "run_stream": "loop",
    "POLICIES": "retention",
    "BoundedCache": "retention",
    "Reservoir": "retention",
    "SlidingWindow": "retention",
    "make_retention": "retention",
    "PRESETS": "schedule",
    "Phase": "schedule",
    "parse_schedule": "schedule",
    "Stream": "source",
    "StreamSet": "source",
    "build_stream": "source",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'instantft.stream' has no attribute {name!r}")
    return getattr(importlib.import_module(f"instantft.stream.{_WHERE[name]}"), name)
