"""A labelled, drifting stream over a dataset, with a stable id for every sample.

A stream is drawn once, up front and seeded: phase by phase, each arrival is a source image
picked uniformly (with replacement) from the stream pool, transformed by the phase's transform
at that point. A sample is the pair (source image, transform key); it gets an integer id the
first time it appears and keeps it: when the same image comes back under the same transform
(a recurring phase, or a repeat draw), it has the same id and the same pixels (corruptions are
seeded per sample), so the Forward Cache can key on it.

A held-out set of source images (disjoint from the pool) measures the accuracy on any
distribution of the schedule, and on the original one (forgetting).
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from instantft.data import ImageSet
from instantft.data.datasets import load_split, rotate
from instantft.errors import InstantFTError
from instantft.settings import MEMORY_BUDGET_BYTES, human_bytes
from instantft.stream.corruptions import CORRUPTIONS
from instantft.stream.schedule import Phase, parse_schedule

STREAM_DATASETS = ("rotmnist", "rotfmnist", "fan")
#: bytes drawing a stream takes per float32 value of its images: the images, and in the worst case
#: a corruption of all of them at once (its float64 input and output)
STREAM_BYTES_PER_FLOAT32 = 5


def apply_transform(key: str, images: torch.Tensor, sources: torch.Tensor, seed: int) -> torch.Tensor:
    """Images (N, 1, H, W) under transform ``key``; sample i's randomness is seeded by
    (seed, sources[i], key), so the result depends on nothing else."""
    out = images
    for step in key.split("+"):
        if step == "clean":
            continue
        if step.startswith("rot("):
            out = rotate(out, float(step[4:-1]))
            continue
        fn = CORRUPTIONS[step]
        tag = zlib.crc32(key.encode())
        arr = out.numpy().astype(np.float64)
        done = np.empty_like(arr)
        for i, src in enumerate(sources.tolist()):
            rng = np.random.default_rng([seed, int(src), tag])
            for c in range(arr.shape[1]):
                done[i, c] = fn(arr[i, c], rng)
        out = torch.from_numpy(done.astype(np.float32))
    return out


@dataclass(frozen=True)
class StreamSet(ImageSet):
    """An ImageSet cut from a stream: ``indices`` are stream sample ids, and the fingerprint is
    the stream's identity. Ids are stable (an id always means the same pixels in this stream),
    so a Forward Cache bound to the stream may hold rows of any of its windows."""

    stream_identity: str = ""

    @property  # type: ignore[override]
    def fingerprint(self) -> str:
        return self.stream_identity


@dataclass
class Stream:
    """The whole stream as tensors, in arrival order, plus the held-out source images."""

    dataset: str
    spec: str
    seed: int
    phases: list[Phase]
    images: torch.Tensor  # (T, 1, H, W)
    labels: torch.Tensor  # (T,)  read through reveal() in the prequential loop
    ids: torch.Tensor  # (T,) stable sample id
    sources: torch.Tensor  # (T,) source image index
    phase_of: torch.Tensor  # (T,) phase number
    keys: list[str]  # (T,) transform key
    heldout_images: torch.Tensor
    heldout_labels: torch.Tensor
    heldout_sources: torch.Tensor
    identity: str
    _heldout_cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def phase_bounds(self) -> list[tuple[int, int]]:
        edges = np.cumsum([0, *(p.length for p in self.phases)])
        return [(int(a), int(b)) for a, b in itertools.pairwise(edges)]

    def reveal(self, start: int, stop: int) -> torch.Tensor:
        """Labels of arrivals start..stop-1: the prequential loop reads labels only here,
        after predicting those arrivals."""
        return self.labels[start:stop]

    def window(self, rows: torch.Tensor) -> StreamSet:
        return StreamSet(
            f"stream-{self.identity[:8]}", self.images[rows], self.labels[rows], self.ids[rows], self.identity
        )

    def heldout(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out images under transform ``key`` (computed once per key), and labels."""
        if key not in self._heldout_cache:
            # held-out sources are offset so their noise never equals a stream sample's
            self._heldout_cache[key] = apply_transform(
                key, self.heldout_images, self.heldout_sources + 1_000_000, self.seed
            )
        return self._heldout_cache[key], self.heldout_labels


def build_stream(
    dataset: str = "rotmnist",
    schedule: str = "gradual",
    *,
    phase_length: int = 1000,
    seed: int = 0,
    heldout: int = 500,
    pool: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Stream:
    """Draw the stream: test split → ``heldout`` held-out images and a pool (the rest, or the
    first ``pool``), then ``phases`` of arrivals from the pool."""
    if dataset not in STREAM_DATASETS:
        raise InstantFTError(f"unknown stream dataset {dataset!r}; valid: {', '.join(STREAM_DATASETS)}")
    if dataset == "fan":
        return build_fan_stream(schedule, phase_length=phase_length, seed=seed, heldout=heldout, data_dir=data_dir)
    phases = parse_schedule(schedule, phase_length)
    if heldout < 1:
        raise InstantFTError(f"--heldout must be >= 1, got {heldout}")
    base = load_split(dataset.removeprefix("rot"), "test", data_dir)
    total = sum(p.length for p in phases)
    per = 4 * math.prod(base.images.shape[1:])
    need = total * per * STREAM_BYTES_PER_FLOAT32
    if need > MEMORY_BUDGET_BYTES:  # the stream's images, and a transform's float64 work, before either is made
        raise InstantFTError(
            f"the schedule's {total:,} samples need {human_bytes(need)} to draw, more than the "
            f"{human_bytes(MEMORY_BUDGET_BYTES)} memory budget; shorten the phases (--phase-length)"
        )
    if heldout >= len(base):
        raise InstantFTError(f"--heldout must be < {len(base)}, got {heldout}")
    perm = torch.randperm(len(base), generator=torch.Generator().manual_seed(seed))
    held_rows, pool_rows = perm[:heldout], perm[heldout:]
    if pool is not None:
        if not 1 <= pool <= len(pool_rows):
            raise InstantFTError(f"--pool must be in 1..{len(pool_rows)}, got {pool}")
        pool_rows = pool_rows[:pool]
    rng = np.random.default_rng([seed, 7])
    total = sum(p.length for p in phases)
    sources = np.empty(total, dtype=np.int64)
    phase_of = np.empty(total, dtype=np.int64)
    keys: list[str] = []
    at = 0
    for n, phase in enumerate(phases):
        sources[at : at + phase.length] = pool_rows.numpy()[rng.integers(0, len(pool_rows), phase.length)]
        phase_of[at : at + phase.length] = n
        keys += [phase.key(t) for t in range(phase.length)]
        at += phase.length
    src = torch.from_numpy(sources)
    images = torch.empty((total, *base.images.shape[1:]))
    for key in dict.fromkeys(keys):
        rows = torch.from_numpy(np.flatnonzero(np.array(keys) == key))
        images[rows] = apply_transform(key, base.images[src[rows]], src[rows], seed)
    id_of: dict[tuple[int, str], int] = {}
    ids = torch.tensor([id_of.setdefault((int(s), k), len(id_of)) for s, k in zip(sources, keys, strict=True)])
    h = hashlib.sha256()
    h.update(f"{dataset}|{schedule}|{phase_length}|{seed}|{heldout}|{pool}|".encode())
    h.update(base.fingerprint.encode())
    return Stream(
        dataset=dataset,
        spec=schedule,
        seed=seed,
        phases=phases,
        images=images,
        labels=base.labels[src].clone(),
        ids=ids,
        sources=src,
        phase_of=torch.from_numpy(phase_of),
        keys=keys,
        heldout_images=base.images[held_rows],
        heldout_labels=base.labels[held_rows],
        heldout_sources=held_rows,
        identity="stream-" + h.hexdigest()[:16],
    )


# --- the cooling-fan stream: the fan moves between rooms ------------------------------------------
#: the fan schedules (L = the phase length): a quiet room, the noisy one, and back
FAN_PRESETS = {
    "abrupt": "silentA:L, noisy:L, silentA:L",
    "recurring": "silentA:L, noisy:L, silentA:L, noisy:L, silentA:L",
    "rooms": "silentA:L, silentB:L, noisy:L, silentA:L",
}


def parse_fan_schedule(spec: str, phase_length: int = 1000) -> list[Phase]:
    """Phases of a fan stream: a preset (:data:`FAN_PRESETS`) or ``ROOM[:LENGTH]`` items, a room
    being silentA, silentB or noisy (each phase's key is its room)."""
    from instantft.data.fan import ROOMS
    from instantft.stream.schedule import Atom, _length

    if phase_length < 1:
        raise InstantFTError(f"--phase-length must be >= 1, got {phase_length}")
    text = "".join(FAN_PRESETS.get(spec.strip(), spec).split())
    phases = []
    for item in text.split(","):
        room, _, length = item.partition(":")
        if room not in ROOMS:
            presets = ", ".join(FAN_PRESETS)
            raise InstantFTError(f"unknown room {room!r} in the fan schedule; valid: {presets} or ROOM:LENGTH items "
                                 f"with ROOM one of {', '.join(ROOMS)}")  # fmt: skip
        phases.append(Phase((Atom(room),), _length(length, phase_length) if length else phase_length))
    if sum(p.length for p in phases) > 10_000_000:
        raise InstantFTError("schedule has more than 10,000,000 samples")
    return phases


@dataclass
class FanStream(Stream):
    """A stream whose phases are rooms: arrivals drawn from each room's take 1, the held-out
    spectra of a room from its take 2 (``clean``: the source room, silentA)."""

    rooms: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def heldout(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rooms["silentA" if key == "clean" else key]


def build_fan_stream(
    schedule: str = "abrupt",
    *,
    phase_length: int = 300,
    seed: int = 0,
    heldout: int = 500,
    data_dir: str | os.PathLike[str] | None = None,
) -> FanStream:
    """The fan type of a 12 cm fan as the fan moves between rooms (:func:`parse_fan_schedule`):
    each arrival a spectrum drawn uniformly from the current room's take 1; the held-out set of
    every room ``heldout`` spectra of its take 2 drawn with ``seed``."""
    from instantft.data.fan import BINS, ROOMS, fan_split

    phases = parse_fan_schedule(schedule, phase_length)
    need = sum(p.length for p in phases) * BINS * 4
    if need > MEMORY_BUDGET_BYTES:  # the stream's spectra, before they are drawn
        raise InstantFTError(
            f"the fan stream's spectra would take {human_bytes(need)}, more than the "
            f"{human_bytes(MEMORY_BUDGET_BYTES)} memory budget; shorten the phases (--phase-length)"
        )
    if heldout < 1:
        raise InstantFTError(f"--heldout must be >= 1, got {heldout}")
    takes = {room: fan_split("type", room, data_dir) for room in ROOMS}
    rng = np.random.default_rng([seed, 7])
    rooms: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for room, (_, take2) in takes.items():
        if heldout > len(take2):
            raise InstantFTError(f"--heldout must be <= {len(take2)} for the fan stream, got {heldout}")
        rows = torch.from_numpy(np.sort(rng.permutation(len(take2))[:heldout]))
        rooms[room] = (take2.images[rows], take2.labels[rows])
    parts, keys, phase_of = [], [], []
    for n, phase in enumerate(phases):
        room = phase.label
        pool = takes[room][0]
        rows = torch.from_numpy(rng.integers(0, len(pool), phase.length))
        parts.append((pool.images[rows], pool.labels[rows], pool.indices[rows]))
        keys += [room] * phase.length
        phase_of += [n] * phase.length
    ids = torch.cat([p[2] for p in parts])  # the global sample index: one spectrum, one id
    h = hashlib.sha256()
    h.update(f"fan|{schedule}|{phase_length}|{seed}|{heldout}|".encode())
    for room in ROOMS:
        h.update(takes[room][0].fingerprint.encode())
    held_images, held_labels = rooms["silentA"]
    return FanStream(
        dataset="fan",
        spec=schedule,
        seed=seed,
        phases=phases,
        images=torch.cat([p[0] for p in parts]),
        labels=torch.cat([p[1] for p in parts]),
        ids=ids,
        sources=ids.clone(),
        phase_of=torch.tensor(phase_of),
        keys=keys,
        heldout_images=held_images,
        heldout_labels=held_labels,
        heldout_sources=torch.arange(len(held_labels)),
        identity="stream-" + h.hexdigest()[:16],
        rooms=rooms,
    )
