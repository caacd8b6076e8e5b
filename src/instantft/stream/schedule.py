"""Drift schedules: a spec string → a list of phases, each a transform held (or ramped) for a
number of samples.

Grammar (whitespace ignored)::

    spec      := item ("," item)*
    item      := "(" spec ")" "*" COUNT  |  phase
    phase     := transform [":" LENGTH]          # LENGTH defaults to the phase length
    transform := atom ("+" atom)*                 # applied left to right
    atom      := "clean" | "rot(" DEG ")" | "rot(" DEG "->" DEG ")" | CORRUPTION

``rot(a->b)`` ramps the angle linearly over the phase (rounded to whole degrees, so samples
at the same angle share a transform). The four named schedules are specs too
(:data:`PRESETS`, with L the phase length): ``gradual``, ``abrupt``, ``recurring``, ``corrupt``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from instantft.errors import InstantFTError
from instantft.stream.corruptions import CORRUPTIONS

PRESETS: dict[str, str] = {
    "gradual": "rot(0):L, rot(0->90):2L, rot(90):L",
    "abrupt": "rot(0):L, rot(90):L, rot(45):L, rot(-45):L",
    "recurring": "rot(0):L, (rot(90):L, rot(0):L)*2",
    "corrupt": "clean:L, shot_noise:L, motion_blur:L, fog:L, zigzag:L",
}


@dataclass(frozen=True)
class Atom:
    """One step of a transform: ``rot`` (angle, or a ramp start→end) or a corruption name."""

    kind: str  # "rot" or a corruption name
    start: float = 0.0
    end: float = 0.0

    @property
    def ramp(self) -> bool:
        return self.kind == "rot" and self.start != self.end

    def at(self, frac: float) -> str:
        """The concrete transform key at a fraction 0..1 through the phase."""
        if self.kind != "rot":
            return self.kind
        return f"rot({round(self.start + (self.end - self.start) * frac):d})"

    def __str__(self) -> str:
        if self.kind != "rot":
            return self.kind
        return f"rot({self.start:g}->{self.end:g})" if self.ramp else f"rot({self.start:g})"


@dataclass(frozen=True)
class Phase:
    atoms: tuple[Atom, ...]  # empty: clean
    length: int

    @property
    def label(self) -> str:
        return "+".join(str(a) for a in self.atoms) or "clean"

    @property
    def ramp(self) -> bool:
        return any(a.ramp for a in self.atoms)

    def key(self, t: int) -> str:
        """Transform key of the phase's t-th sample: a ``+``-joined list of concrete steps."""
        frac = t / max(self.length - 1, 1)
        return "+".join(a.at(frac) for a in self.atoms) or "clean"


_NUM = r"[+-]?\d+(?:\.\d+)?"
_ROT = re.compile(rf"rot\(({_NUM})(?:->({_NUM}))?\)$")


def _atom(text: str) -> Atom | None:
    if text == "clean":
        return None
    m = _ROT.match(text)
    if m:
        a = float(m.group(1))
        return Atom("rot", a, float(m.group(2)) if m.group(2) is not None else a)
    if text in CORRUPTIONS:
        return Atom(text)
    raise InstantFTError(
        f"unknown transform {text!r} in the schedule; valid: clean, rot(DEG), rot(DEG->DEG), " + ", ".join(CORRUPTIONS)
    )


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise InstantFTError(f"schedule {text!r}: unbalanced parentheses")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise InstantFTError(f"schedule {text!r}: unbalanced parentheses")
    return [*parts, cur]


def _length(text: str, phase_length: int) -> int:
    m = re.fullmatch(r"(\d*)L|(\d+)", text)
    if not m:
        raise InstantFTError(f"schedule: phase length {text!r} is not a whole number or kL")
    n = (int(m.group(1)) if m.group(1) else 1) * phase_length if m.group(2) is None else int(m.group(2))
    if n < 1:
        raise InstantFTError(f"schedule: phase length must be >= 1, got {text!r}")
    return n


def _parse(text: str, phase_length: int, depth: int = 0) -> list[Phase]:
    if depth > 8:
        raise InstantFTError("schedule: groups nested too deeply")
    phases: list[Phase] = []
    for item in _split_top(text):
        if not item:
            raise InstantFTError(f"schedule {text!r}: empty item")
        g = re.fullmatch(r"\((.*)\)\*(\d+)", item)
        if g:
            count = int(g.group(2))
            if not 1 <= count <= 1000:
                raise InstantFTError(f"schedule: repeat count must be in 1..1000, got {count}")
            phases += _parse(g.group(1), phase_length, depth + 1) * count
            continue
        body, _, length = item.partition(":")
        atoms = tuple(a for a in (_atom(p) for p in body.split("+")) if a is not None)
        phases.append(Phase(atoms, _length(length, phase_length) if length else phase_length))
    return phases


def parse_schedule(spec: str, phase_length: int = 1000) -> list[Phase]:
    """Phases of a schedule (a preset name or a spec string); raises InstantFTError on any error."""
    if phase_length < 1:
        raise InstantFTError(f"--phase-length must be >= 1, got {phase_length}")
    text = PRESETS.get(spec.strip(), spec)
    text = re.sub(r"\s+", "", text)
    if not text:
        raise InstantFTError("empty schedule")
    phases = _parse(text, phase_length)
    total = sum(p.length for p in phases)
    if total > 10_000_000:
        raise InstantFTError(f"schedule has {total} samples; at most 10,000,000")
    return phases
