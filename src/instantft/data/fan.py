"""The Skip2-LoRA authors' cooling-fan vibration spectra as drift tasks.

Each zip of ``cooling-fan/`` (registered in :data:`instantft.data.files.REGISTRY` under ``fan``,
fetched from GitHub when missing, never bundled: the data has no licence) holds one recording:
a folder of CSV files named by their timestamp, one 512-bin spectrum each (``k, value`` for
k = 0..511). The zips are read in place (:mod:`zipfile`, nothing unpacked to disk), the members
in name order, i.e. in time order; every row is checked, and a member claiming more bytes than a
spectrum can take is refused before it is read.

Tasks (the ``--dataset`` names; ``fan`` is ``fan-silentA-noisy``):

====================== ============ ============================= ==========================
name                   label        source (pre-training)         target
====================== ============ ============================= ==========================
fan-silentA-noisy      fan type     12 cm hmlo, silentA           12 cm hmlo, noisy
fan-silentB-noisy      fan type     12 cm hmlo, silentB           12 cm hmlo, noisy
fan-silentA-silentB    fan type     12 cm hmlo, silentA           12 cm hmlo, silentB
fan-12cm-14cm          fan speed    12 cm h/m/l/o, silentA        14 cm h/m/l/o, silentA
fan-12cm-8cm           fan speed    12 cm h/m/l/o, silentA        8 cm h/m/l/o, silentA
====================== ============ ============================= ==========================

Fan type (normal, damage1, damage2) is learnt in one room and fine-tuned to another: the
rooms' background vibration changes every bin. The target room's data is split by recording:
fine-tune on take 1, evaluate on take 2 (the backbone: train on the source's take 1, test on its
take 2). Fan speed (h, m, l, o) is learnt on a 12 cm fan and fine-tuned to a 14 cm or 8 cm one:
a different fan turns at other speeds and resonates at other frequencies, so the peaks that
told the speeds apart move. These files are single recordings, so they are split in time: the
first half of each for fine-tuning (pre-training), the second half for evaluation (testing).

Samples carry a global index (file number in the registry's order x 1000 + position in the
file), the Forward Cache's key. Spectra are given raw (values in [0, 1]); the backbone
standardises them with its source's statistics (:class:`instantft.models.fan.Standardize`).
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from instantft.data import files
from instantft.data.datasets import DriftTask, ImageSet
from instantft.errors import InstantFTError

BINS = 512
#: a spectrum CSV is about 7 KB (512 lines of ``k, 0.123456``); a member claiming more is refused
MAX_MEMBER_BYTES = 64 * 1024
#: the largest recording is 300 spectra; a zip listing more members than this is refused
MAX_MEMBERS = 10_000
TYPES = ("normal", "damage1", "damage2")
SPEEDS = ("h", "m", "l", "o")
ROOMS = ("silentA", "silentB", "noisy")


@dataclass(frozen=True)
class FanTask:
    """A task's label, its source (whose data pre-trains the backbone) and its target."""

    label: str  # "type" or "speed"
    source: str  # the source's name, e.g. "fan-silentA": the bundled backbone mlp-<source>
    source_group: str  # room (type) or size (speed) of the source
    target_group: str

    @property
    def classes(self) -> tuple[str, ...]:
        return TYPES if self.label == "type" else SPEEDS


FAN_TASKS: dict[str, FanTask] = {
    "fan-silentA-noisy": FanTask("type", "fan-silentA", "silentA", "noisy"),
    "fan-silentB-noisy": FanTask("type", "fan-silentB", "silentB", "noisy"),
    "fan-silentA-silentB": FanTask("type", "fan-silentA", "silentA", "silentB"),
    "fan-12cm-14cm": FanTask("speed", "fan-12cm", "12cm", "14cm"),
    "fan-12cm-8cm": FanTask("speed", "fan-12cm", "12cm", "8cm"),
}
FAN_TASKS["fan"] = FAN_TASKS["fan-silentA-noisy"]
#: the sources a backbone is pre-trained on (``instantft pretrain --dataset``); ``fan`` is fan-silentA
FAN_SOURCES = {"fan-silentA": ("type", "silentA"), "fan-silentB": ("type", "silentB"), "fan-12cm": ("speed", "12cm")}
FAN_SOURCE_ALIASES = {"fan": "fan-silentA"}


def is_fan(dataset: str | None) -> bool:
    return dataset is not None and (dataset in FAN_TASKS or dataset in FAN_SOURCES)


def source_of(dataset: str) -> str:
    """The source (backbone) name of a fan task or source name."""
    if dataset in FAN_TASKS:
        return FAN_TASKS[dataset].source
    return FAN_SOURCE_ALIASES.get(dataset, dataset)


# --- reading the zips ---------------------------------------------------------------------------
def parse_spectrum(raw: bytes, where: str) -> np.ndarray:
    """One CSV (512 lines ``k, value``, k = 0..511, finite values) -> float32 (512,); a bad file
    is one error naming ``where`` and the row (1-based line number)."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise InstantFTError(f"{where}: not a text file (byte {exc.start} is not ASCII)") from None
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) != BINS:
        raise InstantFTError(f"{where}: {len(lines)} rows, a spectrum has {BINS}")
    out = np.empty(BINS, dtype=np.float32)
    for row, line in enumerate(lines):
        parts = line.split(",")
        if len(parts) != 2:
            raise InstantFTError(f"{where}: row {row + 1}: expected 'k, value', got {line[:40]!r}")
        try:
            k, value = int(parts[0]), float(parts[1])
        except ValueError:
            raise InstantFTError(f"{where}: row {row + 1}: not numbers: {line[:40]!r}") from None
        if k != row:
            raise InstantFTError(f"{where}: row {row + 1}: index {k}, expected {row}")
        if not math.isfinite(value) or abs(value) > 3.4e38:
            raise InstantFTError(f"{where}: row {row + 1}: value {parts[1].strip()!r} is not a finite float32")
        out[row] = value
    return out


def read_spectra(path: str | os.PathLike[str]) -> np.ndarray:
    """Every spectrum of one recording's zip, in member-name (= time) order: float32 (N, 512)."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InstantFTError(f"{path}: not a readable zip file ({exc})") from None
    with zf:
        members = sorted((i for i in zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
        if not members:
            raise InstantFTError(f"{path}: holds no CSV file")
        if len(members) > MAX_MEMBERS:
            raise InstantFTError(f"{path}: {len(members)} members, more than the {MAX_MEMBERS} a recording may hold")
        out = np.empty((len(members), BINS), dtype=np.float32)
        for n, info in enumerate(members):
            where = f"{path}: {info.filename}"
            if not info.filename.endswith(".csv"):
                raise InstantFTError(f"{where}: not a .csv file")
            if info.file_size > MAX_MEMBER_BYTES:
                raise InstantFTError(
                    f"{where}: claims {info.file_size} bytes, more than the {MAX_MEMBER_BYTES} a spectrum takes; "
                    "refused"
                )
            try:
                with zf.open(info) as fh:
                    raw = fh.read(MAX_MEMBER_BYTES + 1)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                raise InstantFTError(f"{where}: cannot read ({exc})") from None
            if len(raw) > MAX_MEMBER_BYTES:
                raise InstantFTError(f"{where}: more than {MAX_MEMBER_BYTES} bytes; refused")
            out[n] = parse_spectrum(raw, where)
    return out


_FILE_NUMBER = {name: i for i, name in enumerate(files.REGISTRY["fan"])}
_READ: dict[tuple[str, int, int], np.ndarray] = {}


def load_recording(name: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One registered zip (found, or fetched, and its SHA-256 checked) -> spectra (N, 512) and
    their global indices (N,)."""
    path = files.locate("fan", [name], data_dir)[name]
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)  # the checksum was verified just now
    if key not in _READ:
        _READ[key] = read_spectra(path)
    x = _READ[key]
    return x, _FILE_NUMBER[name] * 1000 + np.arange(len(x))


def _recordings(label: str, group: str) -> list[tuple[str, str, int]]:
    """(zip name without take, class name, class id) of a label kind in a room (type) or size (speed)."""
    if label == "type":
        return [(f"12cm_hmlo_{t}_{group}", t, c) for c, t in enumerate(TYPES)]
    return [(f"{group}_{s}_normal_silentA", s, c) for c, s in enumerate(SPEEDS)]


def fan_split(label: str, group: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """(take 1, take 2) of a room (fan type) or a fan size (fan speed): for the hmlo files the two
    recordings, for the single-recording speed files each file's first and second half in time."""
    parts: list[list[tuple[np.ndarray, np.ndarray, int]]] = [[], []]
    for stem, _, c in _recordings(label, group):
        if label == "type":
            for take in (1, 2):
                x, idx = load_recording(f"{stem}_{take}.zip", data_dir)
                parts[take - 1].append((x, idx, c))
        else:
            x, idx = load_recording(f"{stem}.zip", data_dir)
            half = len(x) // 2
            parts[0].append((x[:half], idx[:half], c))
            parts[1].append((x[half:], idx[half:], c))
    sets = []
    for take, chunks in enumerate(parts, start=1):
        x = np.concatenate([c[0] for c in chunks])
        idx = np.concatenate([c[1] for c in chunks])
        y = np.concatenate([np.full(len(c[0]), c[2]) for c in chunks])
        sets.append(
            ImageSet(
                f"fan-{group}-take{take}",
                torch.from_numpy(x).view(len(x), 1, 1, BINS),
                torch.from_numpy(y.astype(np.int64)),
                torch.from_numpy(idx.astype(np.int64)),
            )
        )
    return sets[0], sets[1]


def fan_task(
    dataset: str,
    *,
    samples: int | None = None,
    seed: int = 0,
    eval_samples: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> DriftTask:
    """A fan task: fine-tune on the target's take 1 (all of it, or ``samples`` of it drawn with
    ``seed``), evaluate on its take 2 (or its first ``eval_samples``)."""
    if dataset not in FAN_TASKS:
        raise InstantFTError(f"unknown fan task {dataset!r}; valid: {', '.join(FAN_TASKS)}")
    task = FAN_TASKS[dataset]
    ft, ev = fan_split(task.label, task.target_group, data_dir)
    if samples is not None:
        if not 1 <= samples <= len(ft):
            raise InstantFTError(f"--samples must be in 1..{len(ft)} for {dataset} (its take 1), got {samples}")
        rows = torch.randperm(len(ft), generator=torch.Generator().manual_seed(seed))[:samples]
        ft = ft.subset(rows.sort().values, f"{ft.name}-{samples}-seed{seed}")
    if eval_samples is not None:
        if eval_samples < 1:
            raise InstantFTError(f"--eval-samples must be >= 1, got {eval_samples}")
        ev = ev.subset(slice(0, eval_samples))
    return DriftTask(dataset, task.source, 0.0, ft, ev)


def fan_pretraining_set(source: str, data_dir: str | os.PathLike[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, test) of a fan source: its take 1 and its take 2."""
    source = FAN_SOURCE_ALIASES.get(source, source)
    if source not in FAN_SOURCES:
        raise InstantFTError(f"unknown fan source {source!r}; valid: fan, {', '.join(FAN_SOURCES)}")
    label, group = FAN_SOURCES[source]
    return fan_split(label, group, data_dir)
