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

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, Method, create
from instantft.models import arch_for, bundled_checkpoint, load_checkpoint
from instantft.settings import MEMORY_BUDGET_BYTES, Runtime, human_bytes
from instantft.stream.config import StreamConfig, parse_capacity
from instantft.stream.retention import BoundedCache, Retention, make_retention, row_bytes
from instantft.stream.source import Stream, StreamSet, build_stream
from instantft.stream.trigger import Trigger


def capacity_samples(config: StreamConfig, method: Method) -> tuple[int, int]:
    """(samples held, bytes per held sample in the bound). A byte capacity counts Forward Cache
    rows for cached methods, fp32 images for the others."""
    value, is_bytes = parse_capacity(config.cache_capacity)
    storage = method.cache_storage
    if storage is not None:
        per = row_bytes(method.backbone.cache_sizes, storage)
    else:
        shape = method.backbone.input_shape
        per = 4 * int(np.prod(shape))  # an fp32 image
    n = value // per if is_bytes else value
    if n * per > MEMORY_BUDGET_BYTES:  # checked before the bounded memory is allocated
        raise InstantFTError(
            f"--cache-capacity {config.cache_capacity} needs {human_bytes(n * per)} ({n:,} samples of {per:,} B), "
            f"more than the {human_bytes(MEMORY_BUDGET_BYTES)} memory budget"
        )
    if n < config.batch_size:
        what = f"{value} B holds {n} samples" if is_bytes else f"{n} samples"
        raise InstantFTError(f"--cache-capacity must hold at least one batch ({config.batch_size} samples); {what}")
    return n, per


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

    def __init__(self, config: StreamConfig, backbone: Any, stream: Stream, runtime: Runtime | None = None) -> None:
        self.config = config
        self.runtime = runtime or Runtime()
        self.backbone = backbone
        self.stream = stream
        self.method = self._create(config.finetune_config())
        self.capacity, self.bytes_per_sample = capacity_samples(config, self.method)
        self.retention: Retention = make_retention(
            config.retention, self.capacity, tuple(stream.images.shape[1:]), config.seed
        )
        storage = self.method.cache_storage
        self.cache: BoundedCache | None = None
        if storage is not None:
            self.cache = BoundedCache(self.method.backbone.cache_sizes, self.capacity, storage)
            self.method.cache = self.cache
        self.trigger = Trigger(config.period, config.detector)

    def _create(self, config: FineTuneConfig) -> Method:
        return create(self.config.method, self.backbone, config, runtime=self.runtime)

    def warm_up(self) -> None:
        """One untimed fit on a few pool images, so compilation and first-call costs are not
        charged to the first adaptation."""
        s = self.stream
        n = min(max(self.config.batch_size * 2, 40), len(s.heldout_labels))
        if n < self.config.batch_size:
            return  # too few held-out images for one batch: nothing to warm up with
        warm = self._create(self.config.finetune_config().replace(epochs=1))
        warm.fit(StreamSet("warm-up", s.heldout_images[:n], s.heldout_labels[:n], torch.arange(n), "warm-up"))

    def _reset(self) -> None:
        fresh = self._create(self.config.finetune_config())
        if self.cache is not None:
            fresh.cache = self.cache
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
                    ratio = entry["seconds"] * 1000.0 / cfg.arrival_ms  # inf for a denormal arrival time
                    covered = n - j + 1 if not ratio < n - j + 1 else math.ceil(ratio)  # past the end: busy to the end
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
                "storage": self.method.cache_storage,
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
    if dataset == "fan":  # the fan stream's backbone: the MLP pre-trained in the quiet room silentA
        base, family = "fan-silentA", "mlp"
    model, _ = load_checkpoint(bundled_checkpoint(base, family), expect_arch=arch_for(family, base))
    return model


def run_stream(
    config: StreamConfig,
    on_progress: Callable[[Progress], None] | None = None,
    backbone: Any = None,
    stream: Stream | None = None,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Build the stream (unless given) and run ``config``; the Python entry point."""
    runtime = runtime or Runtime()
    if backbone is None:
        backbone = load_stream_backbone(config.dataset, config.backbone)
    # capacity and every other input are checked before the stream is drawn
    capacity_samples(config, create(config.method, backbone, config.finetune_config(), runtime=runtime))
    if stream is None:
        stream = build_stream(
            config.dataset, config.schedule, phase_length=config.phase_length, seed=config.seed,
            heldout=config.heldout, data_dir=runtime.data_dir,
        )  # fmt: skip
    run = StreamRun(config, backbone, stream, runtime)
    run.warm_up()
    return run.run(on_progress)
