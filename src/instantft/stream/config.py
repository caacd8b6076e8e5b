"""The settings of ``instantft stream`` (torch-free: the command line imports them)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator
from typing_extensions import Self

from instantft.settings import FineTuneConfig, Settings, SettingsError

_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3}


def parse_capacity(text: str | int) -> tuple[int, bool]:
    """``"4096"`` → (4096, False) samples; ``"4MB"``, ``"512KiB"``, ``"1000B"`` → (bytes, True)."""
    if isinstance(text, int):
        return text, False
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise SettingsError("cache_capacity", f"must be a number of samples or bytes like 4MB/512KiB, got {text!r}")
    value, unit = float(m.group(1)), m.group(2).lower()
    if not unit:
        if value != int(value):
            raise SettingsError("cache_capacity", f"in samples must be whole, got {text!r}")
        return int(value), False
    return int(value * _UNITS[unit]), True


STREAM_METHODS = ("none", "ft-last", "lora-all", "skip-lora", "skip2-lora", "instantft")

#: epochs of one adaptation over what the memory holds (a short refit, many times over a stream)
ADAPT_EPOCHS = 3
#: adapt every this many samples when neither a period nor a detector is given
ADAPT_EVERY = 200


class StreamSettings(Settings):
    """What a prequential run on a drifting stream does besides its fits (``adapt_every`` None with a
    detector: adapt on its signals only)."""

    dataset: Literal["rotmnist", "rotfmnist", "fan"] = "rotmnist"
    """The stream's base images: rotmnist or rotfmnist; or fan: a 12 cm fan's spectra as it moves between rooms."""
    schedule: str = "abrupt"
    """gradual | abrupt | recurring | corrupt, or a spec such as 'rot(0):500,(rot(90):500,shot_noise:500)*2';
    fan: abrupt (silentA, noisy, silentA) | recurring | rooms, or 'silentA:300,noisy:300'."""
    method: str = "instantft"
    """none, ft-last, lora-all, skip-lora, skip2-lora or instantft."""
    cache_capacity: str = "1024"
    """Bounded memory: samples (1024) or bytes (4MB, 512KiB)."""
    retention: Literal["window", "reservoir"] = "window"
    """What the bounded memory keeps: window (sliding) or reservoir."""
    adapt_every: Annotated[int, Field(ge=1)] | None = None
    """Adapt every M samples (default 200 without a detector)."""
    detector: str | None = None
    """adwin or page-hinkley (river): adapt on a drift signal."""
    detect_on: Literal["error", "loss"] = "error"
    """What the detector watches."""
    on_shift: Literal["keep", "reset"] = "keep"
    """Keep or reset the adapters at a detected rise of the error."""
    arrival_ms: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    """Fixed-speed stream: one arrival every this many ms."""
    phase_length: Annotated[int, Field(ge=1)] = 1000
    """Samples per phase of the named schedules (L)."""
    arrival_batch: Annotated[int, Field(ge=1)] = 10
    """Arrivals predicted together."""
    heldout: Annotated[int, Field(ge=1)] = 500
    """Held-out images for the per-adaptation accuracy."""
    window: Annotated[int, Field(ge=1)] = 200
    """Window of the running accuracy."""
    backbone: Literal["lenet5", "mlp", "resnet8"] = "lenet5"
    """Bundled pre-trained backbone family: lenet5 (the paper's), mlp or resnet8 (fan: always its mlp)."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        from instantft.stream.schedule import parse_schedule
        from instantft.stream.trigger import make_detector

        if self.method not in STREAM_METHODS:
            raise SettingsError("method", f"{self.method!r} is unknown; valid: {', '.join(STREAM_METHODS)}")
        if self.on_shift == "reset" and self.detector is None:
            raise SettingsError("on_shift", "reset needs a detector")
        if self.detector is not None:
            make_detector(self.detector)  # unknown name or missing package: fail now
        if self.dataset == "fan":
            from instantft.stream.source import parse_fan_schedule

            parse_fan_schedule(self.schedule, self.phase_length)
        else:
            parse_schedule(self.schedule, self.phase_length)
        try:
            parse_capacity(self.cache_capacity)
        except (OverflowError, ValueError):  # "9" * 400 samples: beyond any number
            raise SettingsError("cache_capacity", f"is out of range, got {self.cache_capacity[:40]!r}") from None
        return self

    @property
    def period(self) -> int | None:
        """Samples between scheduled adaptations (None: the detector's signals only)."""
        return ADAPT_EVERY if self.adapt_every is None and self.detector is None else self.adapt_every



class StreamConfig(StreamSettings):
    """One stream run: the stream's settings and each adaptation's fit (whose seed also draws the stream)."""

    adaptation: FineTuneConfig = FineTuneConfig(epochs=ADAPT_EPOCHS)
    """Each adaptation's training and adapter settings."""

    @property
    def seed(self) -> int:
        return self.adaptation.seed

    @property
    def batch_size(self) -> int:
        return self.adaptation.batch_size

    def finetune_config(self, round_: int = 0) -> FineTuneConfig:
        """The fit of adaptation ``round_``: a new batch order each round, the same adapter init."""
        # modulo 2**63: any seed the settings accept derives a valid one (unchanged below 2**63 / 100_003)
        seed = (self.seed * 100_003 + round_) % 2**63
        return self.adaptation.replace(seed=seed, init_seed=self.adaptation.adapter_seed)
