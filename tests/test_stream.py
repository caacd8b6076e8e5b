"""instantft.stream: schedules, corruptions, stable ids, retention and the bounded Forward
Cache (what is kept, what is recomputed), the prequential order, fixed-speed arrivals and bad
inputs. Small streams over the bundled MNIST test split: seconds."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from instantft.cache import ForwardCache
from instantft.cli import main as cli_main
from instantft.errors import InstantFTError
from instantft.methods import FineTuneConfig, create
from instantft.run import load_backbone
from instantft.stream import loop as stream_loop
from instantft.stream.config import StreamConfig, parse_capacity
from instantft.stream.corruptions import CORRUPTIONS
from instantft.stream.loop import StreamRun, run_stream
from instantft.stream.retention import BoundedCache, Reservoir, SlidingWindow
from instantft.stream.schedule import parse_schedule
from instantft.stream.source import StreamSet, apply_transform, build_stream

from . import studies_path  # noqa: F401  (the stream study lives in studies/)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("rotmnist")[0]


def stream_main(args: list[str]) -> int:
    return cli_main(["stream", *args])


def small(epochs: int = 1, **kw):
    base = dict(schedule="rot(0):60,rot(90):60", phase_length=60, heldout=50, cache_capacity="40",
                adapt_every=40, arrival_batch=10, window=20)  # fmt: skip
    seed = kw.pop("seed", 0)
    return StreamConfig(**{**base, **kw}, adaptation=FineTuneConfig(epochs=epochs, seed=seed))


# --- schedules, corruptions, ids ---------------------------------------------------------------
def test_presets_and_spec_compose():
    assert [p.label for p in parse_schedule("gradual", 100)] == ["rot(0)", "rot(0->90)", "rot(90)"]
    assert [p.length for p in parse_schedule("gradual", 100)] == [100, 200, 100]
    phases = parse_schedule("clean:5, (rot(30)+shot_noise:2L, fog)*2", 7)
    assert [(p.label, p.length) for p in phases] == [
        ("clean", 5), ("rot(30)+shot_noise", 14), ("fog", 7), ("rot(30)+shot_noise", 14), ("fog", 7),
    ]  # fmt: skip
    ramp = parse_schedule("rot(0->90):91", 1)[0]
    assert ramp.key(0) == "rot(0)" and ramp.key(45) == "rot(45)" and ramp.key(90) == "rot(90)"


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corruptions_seeded_and_in_range(name):
    x = build_stream(schedule="clean:4", phase_length=4, heldout=10).images
    src = torch.arange(4)
    a, b = apply_transform(name, x, src, 0), apply_transform(name, x, src, 0)
    assert a.shape == x.shape and torch.equal(a, b)  # same sample, same pixels
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert not torch.equal(a, x)


def test_stable_ids_same_pixels():
    s = build_stream(schedule="shot_noise:200,rot(90):100,shot_noise:200", phase_length=1, heldout=10, pool=50)
    pairs: dict[int, tuple[int, str]] = {}
    for i, sid in enumerate(s.ids.tolist()):
        key = (int(s.sources[i]), s.keys[i])
        assert pairs.setdefault(sid, key) == key  # one id, one (image, transform)
    first = {}
    for i, sid in enumerate(s.ids.tolist()):
        if sid in first:
            assert torch.equal(s.images[i], s.images[first[sid]])
        first.setdefault(sid, i)
    assert len(first) < len(s)  # ids do come back (pool of 50)
    again = build_stream(schedule="shot_noise:200,rot(90):100,shot_noise:200", phase_length=1, heldout=10, pool=50)
    assert torch.equal(again.ids, s.ids) and again.identity == s.identity


# --- retention policies --------------------------------------------------------------------------
def _offer(policy, ids):
    for i in ids:
        policy.offer(i, torch.full((1, 2, 2), float(i)), i % 10)


def test_sliding_window_keeps_last_distinct():
    w = SlidingWindow(4, (1, 2, 2))
    _offer(w, [0, 1, 2, 3, 4, 5])
    assert sorted(w.held()[0].tolist()) == [2, 3, 4, 5]
    _offer(w, [2, 6])  # 2 seen again: refreshed, so 3 goes
    ids, images, labels = w.held()
    assert sorted(ids.tolist()) == [2, 4, 5, 6]
    assert all(float(images[k, 0, 0, 0]) == i and int(labels[k]) == i % 10 for k, i in enumerate(ids.tolist()))


def test_reservoir_uniform_and_seeded():
    counts = np.zeros(200)
    for seed in range(300):
        r = Reservoir(20, (1, 2, 2), seed)
        _offer(r, range(200))
        held = r.held()[0].tolist()
        assert len(held) == 20 == len(set(held))
        counts[held] += 1
    # each of 200 arrivals is kept with probability 20/200: early and late equally
    assert abs(counts[:100].sum() - counts[100:].sum()) < 0.15 * counts.sum()
    a, b = Reservoir(20, (1, 2, 2), 3), Reservoir(20, (1, 2, 2), 3)
    _offer(a, range(200))
    _offer(b, range(200))
    assert a.held()[0].tolist() == b.held()[0].tolist()


@pytest.mark.parametrize("storage", ["fp32", "nf4"])
def test_evict_compacts_and_reuses_slots(storage):
    cache = ForwardCache([64, 64], 8, storage)
    rows = torch.randn(8, 128)
    keys = torch.tensor([3, 9, 4, 1, 7, 0, 5, 2])
    cache.put(keys, rows)
    before = cache.get(keys)
    assert cache.evict(torch.tensor([9, 1, 1, 42])) == 2  # duplicates and absent keys ignored
    assert len(cache) == 6 and not bool(cache.contains(torch.tensor([9, 1])).any())
    left = torch.tensor([3, 4, 7, 0, 5, 2])
    assert torch.equal(cache.get(left), before[[0, 2, 4, 5, 6, 7]])
    assert sorted(cache.slots(left).tolist()) == list(range(6))  # dense
    cache.put(torch.tensor([11, 12]), rows[:2])  # freed room reused
    assert len(cache) == 8 and sorted(cache.keys().tolist()) == [0, 2, 3, 4, 5, 7, 11, 12]


@pytest.mark.parametrize("method", ["instantft", "skip2-lora"])
def test_bounded_cache_keeps_and_recomputes(backbone, method):
    s = build_stream(schedule="clean:80", phase_length=80, heldout=10)
    m = create(method, backbone, FineTuneConfig(epochs=1))
    cache = BoundedCache(m.backbone.cache_sizes, 40, m.cache_storage)
    m.cache = cache

    def window(ids):
        rows = torch.tensor(ids)
        return StreamSet("w", s.images[rows], s.labels[rows], rows, s.identity)

    m.fit(window(list(range(40))))
    assert cache.computed == 40 and cache.recomputed == 0
    cache.follow(torch.arange(10, 50))  # the policy dropped 0..9
    m.fit(window(list(range(10, 50))))
    assert cache.log[-1] == list(range(40, 50))  # cached ids 10..39 never recomputed
    cache.follow(torch.tensor([*range(0, 10), *range(20, 50)]))
    m.fit(window([*range(0, 10), *range(20, 50)]))
    assert sorted(cache.log[-1]) == list(range(10)) and cache.recomputed == 10  # evicted ids came back
    assert len(cache) == 40 and cache.nbytes <= 40 * cache.row_bytes


def test_stream_run_cache_follows_retention(backbone):
    report = run_stream(small(schedule="clean:120,rot(90):120,clean:120", retention="window",
                              cache_capacity="40", adapt_every=40), backbone=backbone)  # fmt: skip
    c = report["cache"]
    assert report["adaptations"] == 9 and c["storage"] == "nf4"
    assert c["computed"] >= 40 and c["evicted"] == c["computed"] - 40
    assert report["cache_bytes"] <= 40 * 1008


def test_nf4_cache_of_4096_lenet_samples_is_small(backbone):
    m = create("instantft", backbone, FineTuneConfig())
    cache = BoundedCache(m.backbone.cache_sizes, 4096, "nf4")
    assert cache.row_bytes * 4096 <= 4.2e6


# --- the prequential protocol ------------------------------------------------------------------
def test_no_label_used_before_its_prediction(backbone, monkeypatch):
    config = small(method="skip2-lora", adapt_every=30, arrival_batch=7)
    s = build_stream(schedule=config.schedule, phase_length=60, heldout=50)
    run = StreamRun(config, backbone, s)
    events: list[tuple[str, tuple[int, int]]] = []
    predicted = [0]
    orig_reveal = s.reveal

    def reveal(a, b):
        assert predicted[0] >= b, f"labels {a}..{b} read after only {predicted[0]} predictions"
        events.append(("label", (a, b)))
        return orig_reveal(a, b)

    monkeypatch.setattr(s, "reveal", reveal)
    inner = run.method
    orig_logits, orig_fit = inner.logits, inner.fit

    def logits(images):
        if len(images) <= config.arrival_batch:  # stream predictions (held-out sets are larger)
            predicted[0] += len(images)
        return orig_logits(images)

    def fit(data):
        revealed = {i for kind, span in events if kind == "label" for i in s.ids[span[0] : span[1]].tolist()}
        assert set(data.indices.tolist()) <= revealed
        events.append(("fit", (0, len(data))))
        return orig_fit(data)

    monkeypatch.setattr(inner, "logits", logits)
    monkeypatch.setattr(inner, "fit", fit)
    report = run.run()
    assert predicted[0] == len(s) and report["adaptations"] == 3  # at arrivals 35, 70, 105
    assert [e[0] for e in events].count("fit") == 3


def test_fixed_speed_stream_serves_stale_adapters(backbone):
    fast = run_stream(small(arrival_ms=1e-9), backbone=backbone)
    # every adaptation takes longer than the rest of the stream at this speed
    assert fast["adaptations"] == 1 and fast["stale_arrivals"] == 120 - 40
    slow = run_stream(small(arrival_ms=1e6), backbone=backbone)
    # 1000 s between arrivals: an adaptation covers one arrival (the last one, none)
    assert slow["adaptations"] == 3 and slow["stale_arrivals"] == 2
    instant = run_stream(small(), backbone=backbone)
    assert instant["adaptations"] == 3 and instant["stale_arrivals"] == 0


def test_detector_triggers_and_reset(backbone):
    report = run_stream(small(schedule="rot(0):200,rot(90):200", adapt_every=None, detector="page-hinkley",
                              on_shift="reset"), backbone=backbone)  # fmt: skip
    assert report["detector_signals"] >= 1 and report["adaptations"] >= 1
    assert all(e["at"] > 200 for e in report["adaptation_log"])  # no rise of the error before the switch
    assert report["adaptation_log"][0]["reset"]


# --- the CLI and bad inputs ----------------------------------------------------------------------
def test_cli_json(capsys, tmp_path):
    plot = tmp_path / "s.png"
    args = ["--schedule", "rot(0):60,rot(90):60", "--cache-capacity", "40", "--adapt-every", "40",
            "--epochs", "1", "--heldout", "50", "--json", "--plot", str(plot)]  # fmt: skip
    assert stream_main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("online_accuracy", "phases", "adaptations", "latency_ms", "cache_bytes", "forgetting"):
        assert key in out
    assert [p["label"] for p in out["phases"]] == ["rot(0)", "rot(90)"]
    assert set(out["latency_ms"]) == {"median", "p95"} and plot.stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cache-capacity", "0"], "at least one batch"),
        (["--cache-capacity", "19"], "at least one batch"),
        (["--cache-capacity", "5KB"], "at least one batch"),
        (["--cache-capacity", "lots"], "--cache-capacity"),
        (["--schedule", "rot(0):100,rot(9"], "unbalanced"),
        (["--schedule", "rot(0):-5"], "phase length"),
        (["--schedule", "spatter"], "unknown transform 'spatter'"),
        (["--detector", "kswin"], "unknown detector"),
        (["--arrival-ms", "0"], "--arrival-ms"),
        (["--arrival-ms", "-1"], "--arrival-ms"),
        (["--arrival-ms", "nan"], "--arrival-ms"),
        (["--on-shift", "reset"], "needs a detector"),
        (["--method", "magic"], "--method 'magic' is unknown"),
        (["--retention", "lru"], "--retention"),
        (["--plot", "x.txt"], "--plot"),
        (["--backbone", "vit"], "--backbone"),
    ],
)
def test_bad_inputs_fail_before_anything_runs(args, message, capsys, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the stream was built before the input was checked")

    monkeypatch.setattr(stream_loop, "build_stream", boom)
    assert stream_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_missing_detector_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "river", None)  # import river -> ImportError
    assert stream_main(["--detector", "adwin"]) == 2
    assert "needs the 'stream' extra: pip install 'instantft[stream]'" in capsys.readouterr().err


def test_capacity_units():
    assert parse_capacity("4096") == (4096, False)
    assert parse_capacity("4MB") == (4_000_000, True)
    assert parse_capacity("1KiB") == (1024, True)
    with pytest.raises(InstantFTError):
        parse_capacity("1.5")


def test_study_summary_from_runs(backbone, tmp_path):
    import stream as study  # studies/stream.py (on sys.path through tests/studies_path.py)

    runs = []
    for method in ("instantft", "lora-all"):
        for seed in (0, 1):
            r = run_stream(small(method=method, seed=seed), backbone=backbone)
            entry = {"key": str((method, seed)), "group": "main", "schedule": "abrupt", "method": method,
                     "overrides": {}, "seed": seed}  # fmt: skip
            entry.update(study.compact(r, keep_curve=True))
            runs.append(entry)
    rows = study.aggregate(runs)
    assert {r["method"] for r in rows} == {"instantft", "lora-all"} and all(r["seeds"] == 2 for r in rows)
    tg = study.targets(rows, runs)
    assert tg[0]["target"].startswith("abrupt: InstantFT") and isinstance(tg[0]["met"], bool)
    text = study.markdown(rows, tg, {"command": "x", "seeds": 2}, [])
    assert "| instantft |" in text and "| lora-all |" in text
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(runs[0]["correct_bits"]), dtype=np.uint8))[:120]
    assert abs(bits.mean() - runs[0]["online_accuracy"]) < 1e-9


@pytest.mark.parametrize("name", ["mlp-mnist", "resnet8-mnist"])
def test_stream_runs_on_other_backbones(name):
    from instantft.backbones import create_backbone

    bb = create_backbone(name)  # fresh weights: the mechanics, not the accuracy
    report = run_stream(small(cache_capacity="30", adapt_every=30), backbone=bb.model)
    row = sum(bb.cache_sizes)
    assert report["adaptations"] == 4 and report["cache"]["computed"] == 120
    assert report["cache_bytes"] == 30 * ((row + 63) // 64 * 36)  # NF4: 32 code + 4 scale bytes a block


def test_registered_as_instantft_stream(capsys):
    from instantft.cli import main

    assert main(["stream", "--arrival-ms", "-2"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --arrival-ms")


def test_cli_adaptation_epochs_default_to_three_whatever_else_is_given(capsys):
    args = ["--schedule", "rot(0):40,rot(90):40", "--cache-capacity", "40", "--adapt-every", "40",
            "--heldout", "20", "--json", "--lr", "0.05"]  # fmt: skip
    assert stream_main(args) == 0
    adaptation = json.loads(capsys.readouterr().out)["config"]["adaptation"]
    assert adaptation["epochs"] == 3 and adaptation["lr"] == 0.05
