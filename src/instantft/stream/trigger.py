"""When to adapt: every M samples, and/or when a drift detector over the prequential error or
loss signals a change.

The detectors are river's (``river.drift.ADWIN`` and ``river.drift.PageHinkley``), a
maintained online-learning library, rather than a hand-written test. ADWIN flags a change of
the mean in either direction (a rise when the data drift, a fall once an adaptation has
worked); Page-Hinkley runs in ``mode="up"`` and flags rises only. A signal is a *shift* when
the error went up: that is when ``--on-shift reset`` resets the adapters.
"""

from __future__ import annotations

from typing import Any

from instantft.errors import InstantFTError
from instantft.extras import require

DETECTORS = ("adwin", "page-hinkley")


def make_detector(name: str) -> Any:
    """A river detector by name; one line naming the ``stream`` extra if river is missing."""
    if name not in DETECTORS:
        raise InstantFTError(f"unknown detector {name!r}; valid: {', '.join(DETECTORS)}")
    drift = require("stream", "river.drift", "instantft stream --detector")
    if name == "adwin":
        return drift.ADWIN(delta=0.002)
    return drift.PageHinkley(mode="up", threshold=20.0, delta=0.005)


class Trigger:
    """Decides after each arrival batch whether to adapt now."""

    def __init__(self, every: int | None, detector: str | None) -> None:
        self.every = every
        self.detector_name = detector
        self.detector = make_detector(detector) if detector else None
        self.since = 0
        self.signals: list[tuple[int, bool]] = []  # (arrival index, was a rise)
        self._pending: bool | None = None

    def observe(self, values: list[float], at: int) -> None:
        """Feed the per-sample error (or loss) of the arrivals just labelled."""
        self.since += len(values)
        if self.detector is None:
            return
        for k, v in enumerate(values):
            before = getattr(self.detector, "estimation", None)
            self.detector.update(v)
            if self.detector.drift_detected:
                after = getattr(self.detector, "estimation", None)
                rise = True if before is None or after is None else after > before
                self.signals.append((at + k + 1, rise))
                self._pending = rise if self._pending is None else (self._pending or rise)

    def due(self) -> tuple[bool, bool]:
        """(adapt now?, was there a detected rise since the last adaptation?)."""
        periodic = self.every is not None and self.since >= self.every
        signal = self._pending is not None
        return periodic or signal, bool(self._pending)

    def adapted(self) -> None:
        self.since = 0
        self._pending = None
