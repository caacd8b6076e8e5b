"""The cooling-fan tasks: the zip reader's checks on small zips written here (no data needed),
the backbone's frozen standardiser and its C-core chain, and - with the authors' files in the
data directory - the tasks, the bundled backbones and the device run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from instantft.data import fan
from instantft.data.files import REGISTRY
from instantft.errors import InstantFTError

ROOT = Path(__file__).resolve().parents[1]


def _data_dir() -> Path | None:
    d = Path(os.environ.get("INSTANTFT_DATA", "")) / "cooling-fan"
    return d.parent if d.is_dir() and all((d / n).is_file() for n in REGISTRY["fan"]) else None


needs_fan = pytest.mark.skipif(
    _data_dir() is None, reason="the cooling-fan zips are not in INSTANTFT_DATA/cooling-fan (never downloaded in tests)"
)


def csv(values: list[float] | np.ndarray, index: list[int] | None = None) -> str:
    index = list(range(len(values))) if index is None else index
    return "".join(f"{k}, {v:.6f}\n" for k, v in zip(index, values, strict=True))


def write_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{path.stem}/", "")
        for name, text in members.items():
            zf.writestr(f"{path.stem}/{name}", text)
    return path


def spectrum(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).random(fan.BINS)
    x[0] = 0.0
    return x


# --- the reader ---------------------------------------------------------------------------------
def test_reads_members_in_time_order(tmp_path: Path):
    spectra = [spectrum(i) for i in range(3)]
    names = ["2022-02-09-23-15-44.csv", "2022-02-09-23-13-03.csv", "2022-02-09-23-14-33.csv"]
    path = write_zip(tmp_path / "12cm_h_normal_silentA.zip", {n: csv(s) for n, s in zip(names, spectra, strict=True)})
    got = fan.read_spectra(path)
    order = np.argsort(names)
    assert got.shape == (3, fan.BINS) and got.dtype == np.float32
    np.testing.assert_allclose(got, np.stack(spectra)[order], atol=1e-6)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (csv(spectrum(0)[:-1]), "511 rows, a spectrum has 512"),
        (csv(spectrum(0), [0, 1, 3, *range(3, 512)]), "row 3: index 3, expected 2"),
        (csv(spectrum(0)).replace("7, ", "7; ", 1), "row 8: expected 'k, value'"),
        (csv(spectrum(0)).replace("\n10, ", "\n10, x", 1), "row 11: not numbers"),
        ("".join(f"{k}, {'nan' if k == 99 else '0.5'}\n" for k in range(512)), "row 100: value 'nan' is not a finite"),
        ("".join(f"{k}, {'1e39' if k == 5 else '0.5'}\n" for k in range(512)), "row 6: value '1e39'"),
        ("\xff" * 10, "not a text file"),
    ],
)
def test_a_bad_csv_is_one_error_naming_zip_member_and_row(tmp_path: Path, text: str, problem: str):
    good = csv(spectrum(1))
    path = write_zip(tmp_path / "bad.zip", {"a.csv": good, "b.csv": text})
    with pytest.raises(InstantFTError) as info:
        fan.read_spectra(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{path}: bad/b.csv: ") and problem in msg


def test_a_member_claiming_a_huge_size_is_refused_before_it_is_read(tmp_path: Path, monkeypatch):
    path = write_zip(tmp_path / "big.zip", {"a.csv": csv(spectrum(0))})
    raw = bytearray(path.read_bytes())
    # the central directory's uncompressed size of the member: claim 4 GB
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 24 : cd + 28] = (0xFFFFFFF0).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *a, **k: pytest.fail("member opened"))
    with pytest.raises(InstantFTError, match=r"big/a\.csv: claims 4294967280 bytes.*refused"):
        fan.read_spectra(path)


def test_not_a_zip_and_an_empty_zip_are_one_line_errors(tmp_path: Path):
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InstantFTError, match="not a readable zip file"):
        fan.read_spectra(junk)
    with pytest.raises(InstantFTError, match="holds no CSV file"):
        fan.read_spectra(write_zip(tmp_path / "empty.zip", {}))


def test_every_registered_file_has_a_sha256_and_the_authors_url():
    files = REGISTRY["fan"]
    assert len(files) == len({s.known_hash for s in files.values()})
    for name, spec in files.items():
        assert spec.known_hash.startswith("sha256:") and len(spec.known_hash) == 7 + 64
        assert spec.relpath == f"cooling-fan/{name}"
        assert spec.urls == (f"https://github.com/matutani/cooling-fan/raw/main/DATA/{name}",)
    for task in fan.FAN_TASKS.values():  # every file a task reads is registered
        for take_group in (task.source_group, task.target_group):
            for stem, _, _ in fan._recordings(task.label, take_group):
                assert any(n.startswith(stem) for n in files)


def test_a_corrupt_file_in_the_data_dir_is_one_error_line_and_exit_2(tmp_path: Path, capsys):
    from instantft.cli import main

    d = tmp_path / "data" / "cooling-fan"
    d.mkdir(parents=True)
    for name in REGISTRY["fan"]:
        (d / name).write_bytes(b"PK not the authors' file")
    assert main(["finetune", "--dataset", "fan", "--method", "none", "--data-dir", str(d.parent), "--json"]) == 2
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checksum mismatch" in errors[0] and "cooling-fan/" in errors[0]
    assert out.out == ""


# --- the backbone -------------------------------------------------------------------------------
def test_the_standardiser_is_frozen_and_untapped():
    from instantft.backbones import Backbone
    from instantft.models import build

    model = build("mlp-fan")
    x = torch.rand(50, 1, 1, fan.BINS)
    model.standardize.fit(x)  # type: ignore[union-attr, operator]
    z = model.net[:2](x)  # type: ignore[index]
    torch.testing.assert_close(z.mean(0), torch.zeros(fan.BINS), atol=1e-5, rtol=0)
    assert all("net.1." not in n for n, _ in model.named_parameters())  # buffers, not parameters
    bb = Backbone(model, example=x[:2])
    assert [t.name for t in bb.taps] == ["net.2", "net.4", "net.6"]  # fc1 reads standardised spectra


def test_the_c_core_runs_the_standardiser_as_a_diagonal_linear():
    from instantft.backbones import Backbone
    from instantft.engine import cengine
    from instantft.engine.chain import chain_for
    from instantft.models import build

    if not cengine.available():
        pytest.skip("the C core was not built")
    model = build("mlp-fan-speed")
    model.standardize.fit(torch.rand(40, 1, 1, fan.BINS) * 0.2)  # type: ignore[union-attr, operator]
    chain = chain_for(Backbone(model, example=torch.rand(2, 1, 1, fan.BINS)), check=True)
    assert chain is not None  # checked against the torch trace on two inputs


# --- with the authors' files --------------------------------------------------------------------
@needs_fan
def test_tasks_split_the_target_by_recording():
    for name, task in fan.FAN_TASKS.items():
        drift = fan.fan_task(name, data_dir=_data_dir())
        ft, ev = drift.finetune, drift.evaluate
        assert set(ft.indices.tolist()).isdisjoint(ev.indices.tolist())
        per_class = torch.bincount(ft.labels, minlength=len(task.classes))
        assert len(set(per_class.tolist())) == 1 and per_class[0] > 0
        assert ft.images.shape[1:] == (1, 1, fan.BINS) and float(ft.images.min()) >= 0
        if task.label == "type":  # take 1 and take 2 are different zips
            assert {int(i) // 1000 for i in ft.indices}.isdisjoint({int(i) // 1000 for i in ev.indices})


@needs_fan
def test_finetune_fan_with_no_other_option(capsys):
    from instantft.cli import main

    assert main(["finetune", "--dataset", "fan", "--method", "instantft", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"accuracy_before", "accuracy_after", "finetune_seconds"} <= set(record)
    assert record["samples"] == record["eval_samples"] == 3 * 235
    assert record["accuracy_before"] < 0.5 < 0.8 < record["accuracy_after"]


@needs_fan
@pytest.mark.parametrize("build", ["device", "device-aarch64"])
def test_device_reaches_pythons_accuracy_on_a_fan_bundle(build: str, tmp_path: Path):
    from instantft.cli import main
    from instantft.device import ADAPTER_FILE
    from instantft.device.bundle import reference_fit
    from instantft.fileio import load_tensors

    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    argv = [str(ROOT / "build" / "instantft-device")]
    if build == "device-aarch64":
        if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
            pytest.skip("aarch64 cross compiler or qemu-aarch64 not installed (gcc-aarch64-linux-gnu qemu-user)")
        argv = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(ROOT / "build" / "instantft-device-aarch64")]
    subprocess.run(["make", "-s", build], cwd=ROOT, check=True, capture_output=True)
    bundle = tmp_path / "fan"
    assert main(["export", "--dataset", "fan", "--method", "instantft", "--epochs", "3", "--out", str(bundle),
                 "--json"]) == 0  # fmt: skip
    proc = subprocess.run([*argv, str(bundle)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    want, ref = reference_fit(bundle)
    assert out["cache_bytes"] == ref["cache_bytes"] > 0
    assert out["correct_after"] == ref["correct_after"]
    assert out["accuracy_after"] > out["accuracy_before"] + 0.3
    # the C core standardises as w * x + b, torch as (x - mean) * inv_std: the last bit of a cached value
    # differs and may move it across an NF4 code boundary, so a few adapter elements differ by ~1e-4
    got = load_tensors(bundle / ADAPTER_FILE)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-3 * float(want[k].abs().max()))


# --- the stream ---------------------------------------------------------------------------------
def test_fan_schedules_are_rooms():
    from instantft.stream.config import StreamSettings
    from instantft.stream.source import parse_fan_schedule

    assert [(p.label, p.length) for p in parse_fan_schedule("abrupt", 300)] == [
        ("silentA", 300), ("noisy", 300), ("silentA", 300)]  # fmt: skip
    assert [p.length for p in parse_fan_schedule("silentB:2L, noisy:50", 10)] == [20, 50]
    assert StreamSettings(dataset="fan", schedule="rooms").schedule == "rooms"
    with pytest.raises(InstantFTError, match="unknown room 'rot\\(90\\)'"):
        StreamSettings(dataset="fan", schedule="rot(90):100")


@needs_fan
def test_the_fan_stream_moves_between_rooms():
    from instantft.settings import FineTuneConfig
    from instantft.stream.config import StreamConfig
    from instantft.stream.loop import run_stream

    config = StreamConfig(dataset="fan", schedule="silentA:60,noisy:60", method="instantft", phase_length=60,
                          cache_capacity="60", adapt_every=30, heldout=50, window=20,
                          adaptation=FineTuneConfig(epochs=1, lr=0.03))  # fmt: skip
    report = run_stream(config)
    assert [p["label"] for p in report["phases"]] == ["silentA", "noisy"]
    assert report["stream"]["samples"] == 120 and report["adaptations"] >= 3 and report["cache_bytes"] > 0


@needs_fan
def test_pretrain_fan_reproduces_the_bundled_backbone(tmp_path: Path):
    from instantft.cli import main
    from instantft.models import bundled_checkpoint, read_metadata

    out = tmp_path / "b.safetensors"
    assert main(["pretrain", "--dataset", "fan", "--out", str(out), "--json"]) == 0
    got, bundled = read_metadata(out), read_metadata(bundled_checkpoint("fan-silentA", "mlp"))
    assert got["architecture"] == "mlp-fan" and got["test_accuracy"] == pytest.approx(bundled["test_accuracy"])


@needs_fan
def test_fixed_point_instantft_runs_on_the_fan_mlp(capsys):
    """The fan MLP's first tap is cached (the standardised spectrum), not read from the data."""
    from instantft.cli import main

    argv = ["finetune", "--dataset", "fan", "--method", "instantft", "--numerics", "fixed", "--samples", "100",
            "--eval-samples", "100", "--epochs", "2", "--json"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["numerics"] == "fixed" and record["accuracy_after"] > record["accuracy_before"]


def test_a_fan_stream_beyond_the_memory_budget_is_refused_before_any_data_is_read(tmp_path: Path):
    from instantft.stream.source import build_fan_stream

    with pytest.raises(InstantFTError, match="memory budget"):
        build_fan_stream("silentA:9000000", data_dir=tmp_path)  # tmp_path holds no data: never reached


def test_pretrain_fan_refuses_samples(capsys, tmp_path: Path):
    from instantft.cli import main

    out = tmp_path / "never.safetensors"
    assert main(["pretrain", "--dataset", "fan", "--samples", "100", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--samples does not apply to a fan source" in err
    assert not out.exists()
