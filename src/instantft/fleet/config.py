"""The settings of a fleet run and the data each device holds.

A fleet is non-IID by rotation: device i holds ``samples`` images of the MNIST / Fashion-MNIST test
split rotated by one angle, ``angles[i % len(angles)]``, disjoint from every other device's, and is
scored on ``eval_samples`` held-out images at its own angle (a pool no device trains on).
"""

from __future__ import annotations

import functools
import json
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from typing_extensions import Self

from instantft.data import ImageSet, load_split, rotate
from instantft.errors import InstantFTError
from instantft.fleet.aggregate import Aggregation
from instantft.settings import FineTuneConfig, Settings, SettingsError

#: images of the test split no device trains on: every device's held-out set is drawn from them
HELD_OUT = 2000


class Fleet(Settings):
    """One federated run: the data each device holds, the method and how the server aggregates."""

    dataset: Literal["rotmnist", "rotfmnist"] = "rotmnist"
    """Built-in drift task the devices hold (the bundled LeNet-5 pre-trained on its unrotated base)."""
    angles: str = "30,60,90,120,150,180"
    """Rotation angles in degrees, comma-separated: device i holds angle i mod their count."""
    samples: Annotated[int, Field(ge=1, le=8000)] = 64
    """Fine-tuning samples on each device."""
    eval_samples: Annotated[int, Field(ge=1, le=HELD_OUT)] = 1000
    """Held-out samples each device is scored on (at its own angle)."""
    method: str = "instantft"
    """Fine-tuning method each device runs (any of instantft's)."""
    aggregation: Aggregation = "b-only"
    """How the server merges adapters: fedavg (of A and B), svd (exact mean of B·A, rank r again) or
    b-only (B trained on a shared frozen A: exact)."""
    rounds: Annotated[int, Field(ge=1, le=10_000)] = 40
    """Federated rounds."""
    clip: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 5.0
    """Clip an update farther from the global adapters than this × the round's median distance (0: off)."""
    timeout: Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)] = 600.0
    """Seconds the server waits for a round's replies; a device slower than that is left out."""
    split_seed: Annotated[int, Field(ge=0, lt=2**31)] = 0
    """Seed of the split of the test images between the devices and the held-out pool."""

    @model_validator(mode="after")
    def _angles(self) -> Self:
        try:
            self.angle_list()
        except ValueError:
            raise SettingsError("angles", f"must be comma-separated numbers, got {self.angles!r}") from None
        return self

    def angle_list(self) -> list[float]:
        out = [float(a) for a in self.angles.split(",") if a.strip()]
        if not out:
            raise ValueError("no angle")
        return out

    def angle(self, device: int) -> float:
        angles = self.angle_list()
        return angles[device % len(angles)]

    @property
    def base_dataset(self) -> str:
        return self.dataset.removeprefix("rot")

    def finetune_config(self, finetune: FineTuneConfig) -> FineTuneConfig:
        """The method's settings as every device uses them: one shared adapter init, A frozen for b-only."""
        changes: dict[str, Any] = {"init_seed": finetune.adapter_seed}
        if self.aggregation == "b-only":
            changes["train_a"] = False
        return finetune.replace(**changes)


def encode(fleet: Fleet, finetune: FineTuneConfig) -> dict[str, Any]:
    """The settings as ConfigRecord values (JSON strings) for the devices."""
    return {"fleet": json.dumps(fleet.to_dict()), "finetune": json.dumps(finetune.to_dict())}


def decode(config: Any) -> tuple[Fleet, FineTuneConfig]:
    try:
        return Fleet.load(json.loads(str(config["fleet"])), "fleet"), FineTuneConfig.load_record(
            json.loads(str(config["finetune"])), "finetune"
        )
    except (KeyError, json.JSONDecodeError) as exc:
        raise InstantFTError(f"the server sent no readable fleet settings ({exc})") from None


def _split(fleet: Fleet, devices: int) -> tuple[ImageSet, torch.Tensor, torch.Tensor]:
    test = load_split(fleet.base_dataset, "test")
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(fleet.split_seed))
    held_out, train_rows = perm[:HELD_OUT], perm[HELD_OUT:]
    if devices * fleet.samples > len(train_rows):
        raise InstantFTError(
            f"{devices} devices × {fleet.samples} samples exceed the {len(train_rows)} images of the "
            f"{fleet.base_dataset} test split left for training; lower samples"
        )
    return test, held_out, train_rows


def device_data(fleet: Fleet, device: int, devices: int) -> tuple[ImageSet, ImageSet]:
    """(fine-tuning set, held-out set) of device ``device`` out of ``devices``, rotated by its angle.
    Computed once per process for the same arguments (a simulation worker serves many devices, every
    round); the sets are read-only."""
    return _device_data(fleet.dataset, fleet.angle(device), fleet.samples, fleet.eval_samples, fleet.split_seed,
                        device, devices)  # fmt: skip


@functools.lru_cache(maxsize=32)
def _device_data(dataset: str, angle: float, samples: int, eval_samples: int, split_seed: int, device: int,
                 devices: int) -> tuple[ImageSet, ImageSet]:  # fmt: skip
    fleet = Fleet(dataset=dataset, angles=str(angle), samples=samples, eval_samples=eval_samples,  # type: ignore[arg-type]
                  split_seed=split_seed)  # fmt: skip
    if not 0 <= device < devices:
        raise InstantFTError(f"device {device} is not in 0..{devices - 1}")
    test, held_out, train_rows = _split(fleet, devices)
    rows = train_rows[device * fleet.samples : (device + 1) * fleet.samples]
    ev = held_out[: fleet.eval_samples]
    tag = f"{fleet.dataset}-{angle:g}deg-device{device}"
    return (
        ImageSet(f"{tag}-finetune", rotate(test.images[rows], angle), test.labels[rows], test.indices[rows]),
        ImageSet(f"{tag}-eval", rotate(test.images[ev], angle), test.labels[ev], test.indices[ev]),
    )


def pooled_data(fleet: Fleet, devices: int) -> ImageSet:
    """Every device's fine-tuning set in one (the centralised run's data), keys made unique."""
    sets = [device_data(fleet, i, devices)[0] for i in range(devices)]
    images = torch.cat([s.images for s in sets])
    labels = torch.cat([s.labels for s in sets])
    return ImageSet(f"{fleet.dataset}-pooled", images, labels, torch.arange(len(images)))
