"""The prequential (test-then-train) loop over a drifting stream.

Arrivals come in small batches (``arrival_batch``). For each batch: the deployed model predicts
it, *then* its labels are revealed, scored, offered to the retention policy and fed to the
drift detector; then the trigger may start an adaptation, which fine-tunes on what the bounded
memory holds (the Forward Cache, synchronised with the retention policy first, for the cached
methods; the held images for the others). No label is read before its sample's prediction.

Fixed-speed arrivals (``arrival_ms`` = Δ): sample i arrives at time i·Δ. An adaptation started
after arrival j really runs here, and its measured wall time d decides how many later arrivals
it covers: the next ⌈d/Δ⌉ arrivals are predicted by the adapters from before it, and no other
adaptation starts meanwhile (one core: the adaptation is the job in progress). Prediction time
is not charged (only adaptation time), and held-out evaluations are not timed. Without Δ an
adaptation takes no stream time.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, Method, create, method_names
from instantft.models import FAMILIES, arch_for, bundled_checkpoint, load_checkpoint
from instantft.stream.retention import POLICIES, BoundedCache, Retention, make_retention, parse_capacity, row_bytes
from instantft.stream.schedule import parse_schedule
from instantft.stream.source import STREAM_DATASETS, Stream, StreamSet, build_stream
from instantft.stream.trigger import Trigger, make_detector

STREAM_METHODS = ("none", "ft-last", "lora-all", "skip-lora", "skip2-lora", "instantft")


@dataclass(frozen=True)
class StreamConfig:
    """One stream run. ``adapt_every`` None with a detector: adapt on its signals only."""

    dataset: str = "rotmnist"
    schedule: str = "gradual"
    method: str = "instantft"
    cache_capacity: str = "1024"  # samples, or bytes with a unit (4MB, 512KiB)
    retention: str = "window"
    adapt_every: int | None = 200
    detector: str | None = None
    detect_on: Literal["error", "loss"] = "error"
    on_shift: Literal["keep", "reset"] = "keep"
    arrival_ms: float | None = None
    seed: int = 0
    phase_length: int = 1000
    epochs: int = 3
    batch_size: int = 20
    lr: float = 0.1
    rank: int = 4
    arrival_batch: int = 10
    heldout: int = 500
    window: int = 200
    engine: Literal["auto", "c", "reference"] = "auto"
    backbone: str = "lenet5"  # family of the bundled pre-trained backbone (lenet5, mlp, ...)
    data_dir: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (
                self.dataset in STREAM_DATASETS,
                f"--dataset must be one of {', '.join(STREAM_DATASETS)}, got {self.dataset!r}",
            ),
            (self.method in method_names(), f"unknown method {self.method!r}; valid: {', '.join(method_names())}"),
            (self.retention in POLICIES, f"--retention must be one of {', '.join(POLICIES)}, got {self.retention!r}"),
            (self.adapt_every is None or self.adapt_every >= 1, f"--adapt-every must be >= 1, got {self.adapt_every}"),
            (self.adapt_every is not None or self.detector is not None, "give --adapt-every, --detector or both"),
            (self.detect_on in ("error", "loss"), f"--detect-on must be error or loss, got {self.detect_on!r}"),
            (self.on_shift in ("keep", "reset"), f"--on-shift must be keep or reset, got {self.on_shift!r}"),
            (self.on_shift == "keep" or self.detector is not None, "--on-shift reset needs a --detector"),
            (
                self.arrival_ms is None or (self.arrival_ms > 0 and math.isfinite(self.arrival_ms)),
                f"--arrival-ms must be a finite number > 0, got {self.arrival_ms}",
            ),
            (self.arrival_batch >= 1, f"--arrival-batch must be >= 1, got {self.arrival_batch}"),
            (self.window >= 1, f"--window must be >= 1, got {self.window}"),
            (self.backbone in FAMILIES, f"--backbone must be one of {', '.join(FAMILIES)}, got {self.backbone!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InstantFTError(message)
        if self.detector is not None:
            make_detector(self.detector)  # unknown name or missing package: fail now
        parse_schedule(self.schedule, self.phase_length)
        parse_capacity(self.cache_capacity)
        self.finetune_config()

    def finetune_config(self, round_: int = 0) -> FineTuneConfig:
        """The fit of adaptation ``round_``: a new batch order each round, the same adapter init."""
        return FineTuneConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            rank=self.rank,
            seed=self.seed * 100_003 + round_,
            init_seed=self.seed,
            engine=self.engine,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cache_storage(method: Method) -> str | None:
    return getattr(method, "cache_storage", None)


def capacity_samples(config: StreamConfig, method: Method) -> tuple[int, int]:
    """(samples held, bytes per held sample in the bound). A byte capacity counts Forward Cache
    rows for cached methods, fp32 images for the others."""
    value, is_bytes = parse_capacity(config.cache_capacity)
    storage = cache_storage(method)
    if storage is not None:
        per = row_bytes(_cache_sizes(method), storage)  # type: ignore[arg-type]
    else:
        backbone = getattr(method, "backbone", None)
        shape = getattr(backbone, "input_shape", (1, 28, 28))
        per = 4 * int(np.prod(shape))  # an fp32 image
    n = value // per if is_bytes else value
    if n < config.batch_size:
        what = f"{value} B holds {n} samples" if is_bytes else f"{n} samples"
        raise InstantFTError(f"--cache-capacity must hold at least one batch ({config.batch_size} samples); {what}")
    return n, per


def _cache_sizes(method: Method) -> list[int]:
    """The Forward Cache row layout of a cached method (its backbone's cached taps + logits)."""
    backbone = getattr(method, "backbone", None)
    if backbone is not None and hasattr(backbone, "cache_sizes"):
        return list(backbone.cache_sizes)
    in_sizes: list[int] = method.in_sizes  # type: ignore[attr-defined]
    return [*in_sizes[1:], method.num_classes]  # type: ignore[attr-defined]


def _state(method: Method) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in method.trainable().items()}


def _accuracy(method: Method, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((method.logits(images).argmax(1) == labels).float().mean())


@dataclass
class Progress:
    """What the live display shows."""

    done: int
    total: int
    phase: str
    running_accuracy: float
    accuracy: float
    adaptations: int
    last_latency_ms: float | None
    stale: int


def percentile(values: list[float], q: float) -> float | None:
    """None without values (JSON has no NaN)."""
    return float(np.percentile(values, q)) if values else None


class StreamRun:
    """One prequential run; :meth:`run` returns the report (a JSON-able dict)."""

    def __init__(self, config: StreamConfig, backbone: Any, stream: Stream) -> None:
        self.config = config
        self.backbone = backbone
        self.stream = stream
        self.method = create(config.method, backbone, config.finetune_config())
        self.capacity, self.bytes_per_sample = capacity_samples(config, self.method)
        self.retention: Retention = make_retention(
            config.retention, self.capacity, tuple(stream.images.shape[1:]), config.seed
        )
        storage = cache_storage(self.method)
        self.cache: BoundedCache | None = None
        if storage is not None:
            self.cache = BoundedCache(_cache_sizes(self.method), self.capacity, storage)  # type: ignore[arg-type]
            self.method.cache = self.cache  # type: ignore[attr-defined]
        self.trigger = Trigger(config.adapt_every, config.detector)

    def warm_up(self) -> None:
        """One untimed fit on a few pool images, so compilation and first-call costs are not
        charged to the first adaptation."""
        n = max(self.config.batch_size * 2, 40)
        warm = create(self.config.method, self.backbone, dataclasses.replace(self.config.finetune_config(), epochs=1))
        s = self.stream
        warm.fit(StreamSet("warm-up", s.heldout_images[:n], s.heldout_labels[:n], torch.arange(n), "warm-up"))

    def _reset(self) -> None:
        fresh = create(self.config.method, self.backbone, self.config.finetune_config())
        if self.cache is not None:
            fresh.cache = self.cache  # type: ignore[attr-defined]
        self.method = fresh

    def adapt(self, at: int, rise: bool, round_: int) -> dict[str, Any]:
        reset = rise and self.config.on_shift == "reset"
        if reset:
            self._reset()
        ids, images, labels = self.retention.held()
        data = StreamSet(f"stream-{self.stream.identity[:8]}", images, labels, ids, self.stream.identity)
        computed0 = self.cache.computed if self.cache is not None else 0
        recomputed0 = self.cache.recomputed if self.cache is not None else 0
        self.method.config = self.config.finetune_config(round_)
        start = time.perf_counter()
        if self.cache is not None:
            self.cache.follow(ids)
        self.method.fit(data)
        seconds = time.perf_counter() - start
        key = self.stream.keys[at - 1]
        h_img, h_lab = self.stream.heldout(key)
        c_img, c_lab = self.stream.heldout("clean")
        return {
            "at": at,
            "seconds": seconds,
            "samples": len(data),
            "computed": (self.cache.computed - computed0) if self.cache is not None else 0,
            "recomputed": (self.cache.recomputed - recomputed0) if self.cache is not None else 0,
            "reset": reset,
            "distribution": key,
            "heldout_accuracy": _accuracy(self.method, h_img, h_lab),
            "clean_accuracy": _accuracy(self.method, c_img, c_lab),
        }

    def run(self, on_progress: Callable[[Progress], None] | None = None) -> dict[str, Any]:
        cfg, s = self.config, self.stream
        n = len(s)
        correct = np.zeros(n, dtype=bool)
        c_img, c_lab = s.heldout("clean")
        clean_before = _accuracy(self.method, c_img, c_lab)
        self.rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        wall0 = time.perf_counter()
        log: list[dict[str, Any]] = []
        stale_total = 0
        # while an adaptation "runs" (fixed-speed stream): who serves arrivals < switch_at
        old: tuple[Method, dict[str, torch.Tensor] | None] | None = None
        switch_at = 0
        i = 0
        while i < n:
            j = min(i + cfg.arrival_batch, n)
            images = s.images[i:j]
            if old is not None and switch_at <= i:
                old = None
            if old is None:
                logits = self.method.logits(images)
            else:
                k = min(j, switch_at) - i
                serving, state = old
                if state is not None:  # same object: swap the old adapters in for the stale part
                    new_state = _state(self.method)
                    self.method.load_trainable(state)
                    stale_logits = self.method.logits(images[:k])
                    self.method.load_trainable(new_state)
                else:
                    stale_logits = serving.logits(images[:k])
                logits = torch.cat([stale_logits, self.method.logits(images[k:])]) if k < len(images) else stale_logits
                stale_total += k
            labels = s.reveal(i, j)  # only now: every prediction of this batch is made
            hit = logits.argmax(1) == labels
            correct[i:j] = hit.numpy()
            self.retention.add(s.ids[i:j], images, labels)
            if cfg.detect_on == "error":
                values = (~hit).float().tolist()
            else:
                values = F.cross_entropy(logits, labels, reduction="none").tolist()
            self.trigger.observe(values, i)
            due, rise = self.trigger.due()
            busy = old is not None and switch_at > j
            if due and not busy and len(self.retention) >= cfg.batch_size:
                before = self.method
                state = _state(self.method) if cfg.arrival_ms is not None else None
                entry = self.adapt(j, rise, len(log) + 1)
                self.trigger.adapted()
                if cfg.arrival_ms is not None:
                    covered = math.ceil(entry["seconds"] * 1000.0 / cfg.arrival_ms)
                    entry["stale_arrivals"] = min(covered, n - j)
                    switch_at = j + covered
                    old = (before, state if before is self.method else None)
                log.append(entry)
            if on_progress is not None:
                lo = max(0, j - cfg.window)
                on_progress(
                    Progress(
                        j, n, s.phases[int(s.phase_of[j - 1])].label, float(correct[lo:j].mean()),
                        float(correct[:j].mean()), len(log), 1000 * log[-1]["seconds"] if log else None, stale_total,
                    )
                )  # fmt: skip
            i = j
        wall = time.perf_counter() - wall0
        return self.report(correct, log, clean_before, stale_total, wall)

    def report(
        self, correct: np.ndarray, log: list[dict[str, Any]], clean_before: float, stale: int, wall: float
    ) -> dict[str, Any]:
        cfg, s = self.config, self.stream
        c_img, c_lab = s.heldout("clean")
        clean_after = _accuracy(self.method, c_img, c_lab)
        bounds = s.phase_bounds()
        phases = [
            {"label": p.label, "start": a, "end": b, "online_accuracy": float(correct[a:b].mean())}
            for p, (a, b) in zip(s.phases, bounds, strict=True)
        ]
        seconds = [e["seconds"] for e in log]
        lat = [1000 * x for x in seconds]
        win = windowed(correct, cfg.window)
        step = max(1, len(correct) // 400)
        return {
            "config": cfg.to_dict(),
            "stream": {"identity": s.identity, "samples": len(s), "distinct_ids": int(s.ids.max()) + 1},
            "online_accuracy": float(correct.mean()),
            "correct_bits": np.packbits(correct).tobytes().hex(),  # arrival i: bit 7 - i % 8 of byte i // 8
            "phases": phases,
            "windowed": {"window": cfg.window, "at": list(range(step, len(win) + 1, step)),
                         "accuracy": [float(win[k - 1]) for k in range(step, len(win) + 1, step)]},
            "adaptations": len(log),
            "adaptation_log": log,
            "latency_ms": {"median": percentile(lat, 50), "p95": percentile(lat, 95)},
            "adaptation_seconds_total": float(sum(seconds)),
            "stale_arrivals": stale,
            "cache_capacity_samples": self.capacity,
            "cache_bytes": self.cache.peak_bytes if self.cache is not None else 0,
            "cache_capacity_bytes": self.capacity * self.bytes_per_sample if self.cache is not None else 0,
            "retained_image_bytes": self.retention.nbytes,
            "cache": {
                "storage": cache_storage(self.method),
                "computed": self.cache.computed if self.cache is not None else 0,
                "recomputed": self.cache.recomputed if self.cache is not None else 0,
                "evicted": self.cache.evicted if self.cache is not None else 0,
            },
            "forgetting": {"clean_before": clean_before, "clean_after": clean_after,
                           "forgetting": clean_before - clean_after},
            "recovery": recovery(correct, bounds, s, cfg),
            "detector_signals": len(self.trigger.signals),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_run_mb": self.rss_before_mb,
            "wall_seconds": wall,
        }  # fmt: skip


def windowed(correct: np.ndarray, window: int) -> np.ndarray:
    """Trailing-window accuracy after each arrival (shorter windows at the start)."""
    c = np.concatenate([[0], np.cumsum(correct)])
    idx = np.arange(1, len(correct) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def recovery(correct: np.ndarray, bounds: list[tuple[int, int]], s: Stream, cfg: StreamConfig) -> list[dict[str, Any]]:
    """For each switch into a fixed (not ramped) phase: its steady state (accuracy over the
    phase's second half) and how many samples after the switch the trailing-window accuracy,
    over post-switch samples only, first comes within 2 points of it."""
    out = []
    for n in range(1, len(bounds)):
        a, b = bounds[n]
        if s.phases[n].ramp or s.phases[n - 1].ramp or b - a < 2 * cfg.window:
            continue
        steady = float(correct[(a + b) // 2 : b].mean())
        post = windowed(correct[a:b], cfg.window)
        ok = np.flatnonzero(post[cfg.window - 1 :] >= steady - 0.02)
        samples = int(ok[0]) + cfg.window if len(ok) else None
        out.append({"switch_at": a, "from": s.phases[n - 1].label, "to": s.phases[n].label,
                    "steady": steady, "samples": samples})  # fmt: skip
    return out


def load_stream_backbone(dataset: str, family: str = "lenet5") -> Any:
    """The bundled backbone of ``family`` pre-trained on the stream dataset's base dataset."""
    base = dataset.removeprefix("rot")
    model, _ = load_checkpoint(bundled_checkpoint(base, family), expect_arch=arch_for(family, base))
    return model


def run_stream(
    config: StreamConfig,
    on_progress: Callable[[Progress], None] | None = None,
    backbone: Any = None,
    stream: Stream | None = None,
) -> dict[str, Any]:
    """Build the stream (unless given) and run ``config``; the Python entry point."""
    if backbone is None:
        backbone = load_stream_backbone(config.dataset, config.backbone)
    # capacity and every other input are checked before the stream is drawn
    capacity_samples(config, create(config.method, backbone, config.finetune_config()))
    if stream is None:
        stream = build_stream(
            config.dataset, config.schedule, phase_length=config.phase_length, seed=config.seed,
            heldout=config.heldout, data_dir=config.data_dir,
        )  # fmt: skip
    run = StreamRun(config, backbone, stream)
    run.warm_up()
    return run.run(on_progress)
