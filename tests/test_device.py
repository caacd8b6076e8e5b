"""The device path: ``instantft export`` -> ``instantft-device`` (csrc/device, built by make) ->
``instantft evaluate --adapter``. Same seed, same bundle: the device trains the adapters Python's
reference loop trains (1e-5 relative), on x86 and, cross-compiled, under qemu-aarch64. Every bad
input is one ``error:`` line, exit 2, and the previous adapter untouched; the bundle reader is
fuzzed through the program built with AddressSanitizer + UBSan."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from instantft.device import ADAPTER_FILE, BUNDLE_FILE, MANIFEST_FILE
from instantft.device.bundle import read_bundle, reference_fit, schedule_arrays
from instantft.fileio import load_tensors, tensors_sha256

ROOT = Path(__file__).resolve().parents[1]
QEMU_HINT = "apt-get install gcc-aarch64-linux-gnu qemu-user (.ci/run does this as root)"


def make(target: str) -> Path:
    """Build a device target with the repository's Makefile (what `make test` users get)."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.fail("no C compiler: the device program cannot be built")
    subprocess.run(["make", "-s", target], cwd=ROOT, check=True, capture_output=True)
    return ROOT / target if target.startswith("build/") else ROOT / "build" / f"instantft-{target}"


@pytest.fixture(scope="session")
def device() -> Path:
    return make("device")


@pytest.fixture(scope="session")
def device_asan() -> Path:
    return make("build/instantft-device-asan")


@pytest.fixture(scope="session")
def device_aarch64() -> list[str]:
    """How to run the aarch64 build here: qemu-aarch64 with the cross sysroot."""
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip(f"aarch64 cross compiler or qemu-aarch64 not installed: {QEMU_HINT}")
    binary = make("build/instantft-device-aarch64")
    return ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", str(binary)]


def export(out: Path, method: str, *options: str) -> Path:
    from instantft.cli import main

    assert main(["export", "--dataset", "rotmnist", "--method", method, "--out", str(out), "--json", *options]) == 0
    return out


def run(cmd: list[str], env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, **kw)


def run_device(cmd: list[str] | Path, bundle: Path, *extra: str) -> dict:
    argv = [str(cmd)] if isinstance(cmd, Path) else list(cmd)
    proc = run([*argv, str(bundle), *extra])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


SMALL = ("--angle", "90", "--samples", "200", "--eval-samples", "300", "--epochs", "2")


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small RotMNIST 90° bundle per method (200 + 300 images, 2 epochs)."""
    base = tmp_path_factory.mktemp("bundles")
    return {m: export(base / m, m, *SMALL) for m in ("skip2-lora", "instantft")}


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle (20 + 20 images, 1 epoch of 2 steps) for the bad-input and fuzz runs."""
    return export(tmp_path_factory.mktemp("tiny") / "b", "instantft", "--samples", "20", "--eval-samples", "20",
                  "--epochs", "1", "--batch-size", "10")  # fmt: skip


def assert_adapters_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rtol: float = 1e-5) -> None:
    """Floats to ``rtol`` relative, measured against each tensor's scale (an element that is
    near zero after 500 steps of float sums has no meaningful relative error of its own)."""
    assert set(got) == set(want)
    for k in want:
        scale = float(want[k].abs().max())
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=rtol * scale, msg=lambda m, k=k: f"{k}: {m}")


# --- the bundle ---------------------------------------------------------------------------------
def test_bundle_holds_what_the_device_needs(small: dict[str, Path]):
    from instantft.methods import FineTuneConfig

    b = read_bundle(small["instantft"])
    t, meta, manifest = b.tensors, b.metadata, b.manifest
    assert meta["method"] == "instantft" and meta["storage"] == "nf4" and float(meta["lr"]) == 0.1
    assert t["finetune.images"].dtype == np.uint8 and t["finetune.images"].shape == (200, 1, 28, 28)
    assert t["eval.images"].shape == (300, 1, 28, 28) and t["eval.labels"].dtype == np.uint8
    assert manifest["pixels"]["lossless"], "90° is a pixel permutation: uint8 must hold Python's images exactly"
    record = json.loads(meta["adapter_record"])
    initial = {k: torch.from_numpy(v) for k, v in t.items() if k.startswith("skip")}
    assert list(record)[-1] == "tensors_sha256" and record["tensors_sha256"] == tensors_sha256(initial)
    expected = schedule_arrays(200, FineTuneConfig(**record["config"]))
    for k, v in expected.items():
        np.testing.assert_array_equal(t[k], v)
    assert len(t["schedule.epoch"]) == manifest["steps"] == 2 * (200 // 20)
    assert [op["kind"] for op in manifest["chain"]] == [1, 2, 3, 1, 2, 3, 4, 5, 2, 5, 2, 5]
    assert manifest["tap_sizes"] == [784, 1176, 400, 120, 84]
    assert (small["instantft"] / MANIFEST_FILE).is_file()


def test_rotated_pixels_are_rounded_and_say_so(tmp_path: Path):
    """45°: bilinear rotation gives fractions of 1/255; the bundle stores the nearest uint8 and
    reports the rounding; the device then trains what Python trains on those pixels."""
    b = read_bundle(export(tmp_path / "b", "skip2-lora", "--angle", "45", "--samples", "40", "--eval-samples", "40",
                           "--epochs", "1"))  # fmt: skip
    assert not b.manifest["pixels"]["lossless"]
    assert 0.01 < b.manifest["pixels"]["max_rounding_error_255ths"]["finetune"] <= 0.5


# --- the device trains Python's adapters ------------------------------------------------------------
@pytest.mark.parametrize("method", ["skip2-lora", "instantft"])
def test_device_trains_the_reference_adapters(method: str, small: dict[str, Path], device: Path, tmp_path: Path):
    bundle = tmp_path / method
    shutil.copytree(small[method], bundle)
    out = run_device(device, bundle)
    want, ref = reference_fit(bundle)
    trained = load_tensors(bundle / ADAPTER_FILE)
    assert_adapters_close(trained, want)
    from instantft.methods.adapter_io import read_adapter_record

    assert read_adapter_record(bundle / ADAPTER_FILE)["tensors_sha256"] == tensors_sha256(trained)  # hashed in C
    assert out["steps"] == ref["steps"] == 20
    assert out["cache_bytes"] == ref["cache_bytes"] > 0
    assert out["correct_after"] == ref["correct_after"]
    assert out["accuracy_before"] == pytest.approx(ref["accuracy_before"], abs=1e-6)
    assert out["epoch_losses"] == pytest.approx(ref["epoch_losses"], rel=1e-5)
    assert math.isfinite(out["finetune_seconds"]) and out["samples"] == 200 and out["eval_samples"] == 300

    # `instantft evaluate --adapter` takes the device's file with no other option and scores it the same
    proc = run([sys.executable, "-m", "instantft", "evaluate", "--adapter", str(bundle / ADAPTER_FILE), "--json"])
    assert proc.returncode == 0, proc.stderr
    scored = json.loads(proc.stdout)
    assert scored["method"] == method and scored["eval_samples"] == 300
    assert scored["accuracy"] == pytest.approx(out["accuracy_after"], abs=1e-6)


@pytest.mark.parametrize("method", ["skip2-lora", "instantft"])
def test_device_trains_what_python_on_the_c_core_trains(method: str, small: dict[str, Path], device: Path,
                                                        tmp_path: Path):  # fmt: skip
    """The third of the issue's trio: Python's own run on the C core (``--engine c``), same bundle."""
    from instantft.engine import ENGINES

    if "c" not in ENGINES:
        pytest.skip("no 'c' engine registered in instantft.engine.ENGINES yet")
    bundle = tmp_path / method
    shutil.copytree(small[method], bundle)
    run_device(device, bundle)
    on_c, _ = reference_fit(bundle, engine="c")
    assert_adapters_close(load_tensors(bundle / ADAPTER_FILE), on_c)


def test_tensor_hash_format_2_is_the_documented_byte_stream():
    """fileio.tensors_sha256 format 2 is exactly the stream csrc/device/tensor_hash.h documents
    (names in byte order, NUL, dtype tag, NUL, ndim and dims as little-endian u64, raw data)."""
    import hashlib

    state = {"b": torch.arange(6, dtype=torch.float32).view(2, 3), "a": torch.tensor([1, -2], dtype=torch.int64)}
    stream = b"a\0I64\0" + struct.pack("<QQ", 1, 2) + np.array([1, -2], "<i8").tobytes()
    stream += b"b\0F32\0" + struct.pack("<QQQ", 2, 2, 3) + np.arange(6, dtype="<f4").tobytes()
    assert tensors_sha256(state) == hashlib.sha256(stream).hexdigest()
    legacy = b"a:(2,):torch.int64" + state["a"].numpy().tobytes()
    legacy += b"b:(2, 3):torch.float32" + state["b"].numpy().tobytes()
    assert tensors_sha256(state, 1) == hashlib.sha256(legacy).hexdigest()


def test_old_bundle_gets_a_format_1_hash_that_verifies(device: Path, tmp_path: Path):
    """A 0.1.0 bundle (no tensors_sha256_format) makes the device hash in format 1 and say
    nothing, so the adapter it writes loads with its hash checked."""
    from instantft.methods.adapter_io import load_adapter, read_adapter_record
    from instantft.run import load_backbone

    bundle = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "fixtures" / "v0.1.0" / "bundle-instantft", bundle)
    run_device(device, bundle)
    record = read_adapter_record(bundle / ADAPTER_FILE)
    assert "tensors_sha256_format" not in record
    assert record["tensors_sha256"] == tensors_sha256(load_tensors(bundle / ADAPTER_FILE), 1)
    load_adapter(bundle / ADAPTER_FILE, load_backbone("rotmnist")[0])


def test_new_bundle_says_its_hash_format(small: dict[str, Path], device: Path, tmp_path: Path):
    bundle = tmp_path / "new"
    shutil.copytree(small["instantft"], bundle)
    assert read_bundle(bundle).metadata["tensors_sha256_format"] == "2"
    run_device(device, bundle)
    from instantft.methods.adapter_io import read_adapter_record

    assert read_adapter_record(bundle / ADAPTER_FILE)["tensors_sha256_format"] == 2


def test_rotmnist_90_full_size_matches_python(device: Path, tmp_path: Path):
    """The issue's case: RotMNIST 90°, 1,024 fine-tuning images, all 8,976 others evaluated,
    10 epochs: the device reaches Python's accuracy (the real `finetune` on float images) and
    trains the reference loop's adapters."""
    from instantft.run import Run, finetune
    from instantft.settings import Task

    bundle = export(tmp_path / "full", "instantft", "--angle", "90")
    out = run_device(device, bundle)
    python = finetune(Run(method="instantft", task=Task(dataset="rotmnist", angle=90))).record
    assert out["eval_samples"] == python["eval_samples"] == 8976
    assert out["accuracy_after"] == pytest.approx(python["accuracy_after"], abs=0.0005)  # within 0.05 pt
    assert out["accuracy_after"] > out["accuracy_before"] + 0.5
    want, ref = reference_fit(bundle)
    assert out["correct_after"] == ref["correct_after"]
    assert_adapters_close(load_tensors(bundle / ADAPTER_FILE), want)


def test_stripped_binary_is_small(device: Path):
    assert device.stat().st_size <= 256 * 1024


# --- aarch64 under qemu ---------------------------------------------------------------------
def test_aarch64_build_trains_the_same_adapters(device_aarch64: list[str], device: Path, small: dict[str, Path],
                                                tmp_path: Path):  # fmt: skip
    """Cross-compiled for Cortex-A53 (NEON kernels), run under qemu: the same NF4 cache bytes
    and the same adapters as the x86 build and as Python's reference loop."""
    runs = {}
    for name, cmd in (("x86", [str(device)]), ("aarch64", device_aarch64)):
        bundle = tmp_path / name
        shutil.copytree(small["instantft"], bundle)
        out = run_device(cmd, bundle, "--dump-cache", str(tmp_path / f"{name}.cache"))
        runs[name] = (out, load_tensors(bundle / ADAPTER_FILE), load_file(str(tmp_path / f"{name}.cache")))
    (x, x_ad, x_cache), (a, a_ad, a_cache) = runs["x86"], runs["aarch64"]
    assert "neon" in a["kernels"]
    np.testing.assert_array_equal(a_cache["codes"], x_cache["codes"])
    np.testing.assert_allclose(a_cache["absmax"], x_cache["absmax"], rtol=1e-6)
    assert a["correct_after"] == x["correct_after"] and a["correct_before"] == x["correct_before"]
    assert_adapters_close(a_ad, x_ad)
    want, _ = reference_fit(tmp_path / "aarch64")
    assert_adapters_close(a_ad, want)


# --- bad input: one line, exit 2, nothing written ---------------------------------------------
def with_header(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture
def bad(tiny: Path, tmp_path: Path, device_asan: Path):
    """A copy of the tiny bundle with a previous adapter in place; ``check(bytes)`` writes the
    bundle, runs the sanitised program and checks the contract."""
    d = tmp_path / "bundle"
    shutil.copytree(tiny, d)
    previous = b"previous adapter, must survive"
    (d / ADAPTER_FILE).write_bytes(previous)

    def check(content: bytes | None = None, expect: str = "", **kw) -> str:
        if content is not None:
            (d / BUNDLE_FILE).write_bytes(content)
        proc = run([str(device_asan), str(d)], env={"ASAN_OPTIONS": "detect_leaks=0"}, **kw)
        lines = proc.stderr.splitlines()
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert expect in lines[0]
        assert proc.stdout == ""
        assert (d / ADAPTER_FILE).read_bytes() == previous
        assert sorted(p.name for p in d.iterdir()) == sorted([ADAPTER_FILE, BUNDLE_FILE, MANIFEST_FILE])
        return lines[0]

    good = (d / BUNDLE_FILE).read_bytes()
    return d, good, check


def test_missing_bundle(bad):
    d, _, check = bad
    (d / BUNDLE_FILE).unlink()
    (d / BUNDLE_FILE).write_bytes(b"")
    check(expect="truncated")


@pytest.mark.parametrize("cut", [0, 4, 8, 20, -1, -100])
def test_truncated_bundle(bad, cut: int):
    _, good, check = bad
    n = struct.unpack("<Q", good[:8])[0]
    at = {-1: len(good) - 1, -100: 8 + n + 5}.get(cut, cut)
    check(good[:at])


def test_header_length_past_the_end(bad):
    _, good, check = bad
    check(struct.pack("<Q", 1 << 62) + good[8:], expect="does not fit")


def test_corrupt_header_json(bad):
    _, good, check = bad
    check(good[:8] + b"{" + good[9:].replace(b'"dtype"', b'"dtype', 1), expect="bad header")


def test_header_lies_about_offsets(bad):
    _, good, check = bad
    header, data = header_of_bytes(good)
    header["finetune.labels"]["data_offsets"] = [len(data) - 4, len(data) + 16]
    check(with_header(header, data))


def test_header_lies_about_size(bad):
    _, good, check = bad
    header, data = header_of_bytes(good)
    header["eval.images"]["shape"][0] += 1000  # more images than the bytes hold
    check(with_header(header, data), expect="do not hold")


def test_overlapping_tensors(bad):
    _, good, check = bad
    header, data = header_of_bytes(good)
    begin, end = header["eval.labels"]["data_offsets"]
    header["finetune.labels"]["data_offsets"] = [begin, end]  # same size (20 labels each)
    check(with_header(header, data), expect="hole or overlap")


def test_header_lies_about_dtype(bad):
    _, good, check = bad
    header, data = header_of_bytes(good)
    header["finetune.labels"]["dtype"] = "I8"  # same size, wrong type
    check(with_header(header, data), expect="expected U8")
    header["finetune.labels"]["dtype"] = "F64"
    check(with_header(header, data), expect="do not hold")


def test_weight_shape_that_does_not_fit_the_chain(bad):
    _, good, check = bad
    header, data = header_of_bytes(good)
    header["chain.0.weight"]["shape"] = [6, 1, 25, 1]  # same bytes, not a 5x5 kernel
    check(with_header(header, data), expect="chain.0.weight")


def rebuilt(d: Path, **changes: np.ndarray | None) -> bytes:
    """The bundle re-written with some tensors replaced (None: removed)."""
    from safetensors import safe_open

    with safe_open(str(d / BUNDLE_FILE), framework="numpy") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    for k, v in changes.items():
        name = k.replace("__", ".")
        if v is None:
            tensors.pop(name)
        else:
            tensors[name] = v
    tmp = d / "rebuilt.tmp"
    save_file(tensors, str(tmp), metadata=meta)
    content = tmp.read_bytes()
    tmp.unlink()
    return content


def test_data_label_count_mismatch(bad):
    d, _, check = bad
    labels = load_file(str(d / BUNDLE_FILE))["finetune.labels"]
    check(rebuilt(d, finetune__labels=labels[:-1]), expect="20 fine-tuning images but 19 labels")


def test_label_out_of_range(bad):
    d, _, check = bad
    labels = load_file(str(d / BUNDLE_FILE))["eval.labels"].copy()
    labels[3] = 10
    check(rebuilt(d, eval__labels=labels), expect="10 classes")


def test_schedule_row_out_of_range(bad):
    d, _, check = bad
    order = load_file(str(d / BUNDLE_FILE))["schedule.order"].copy()
    order[5] = 20
    check(rebuilt(d, schedule__order=order), expect="not a fine-tuning row")


def test_adapter_record_without_its_hash(bad):
    from safetensors import safe_open

    d, good, check = bad
    with safe_open(str(d / BUNDLE_FILE), framework="numpy") as fh:
        meta = dict(fh.metadata())
    record = json.loads(meta["adapter_record"])
    record.pop("tensors_sha256")
    header, data = header_of_bytes(good)
    header["__metadata__"]["adapter_record"] = json.dumps(record)
    check(with_header(header, data), expect="adapter_record")


def test_missing_tensor_and_non_finite_weight(bad):
    d, _, check = bad
    check(rebuilt(d, skip3__B=None), expect="no tensor skip3.B")
    w = load_file(str(d / BUNDLE_FILE))["chain.7.weight"].copy()
    w[0, 0] = np.nan
    check(rebuilt(d, chain__7__weight=w), expect="non-finite")


def test_output_is_a_directory(bad):
    d, _, _ = bad
    (d / ADAPTER_FILE).unlink()
    (d / ADAPTER_FILE).mkdir()
    proc = run([str(ROOT / "build" / "instantft-device"), str(d)])
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "directory" in proc.stderr
    assert (d / ADAPTER_FILE).is_dir()


def test_unwritable_output_keeps_the_previous_adapter(tiny: Path, tmp_path: Path, device: Path):
    """The disk fills up while the adapter is written (a file size limit): exit 2, the previous
    adapter byte for byte, no temp file left."""
    d = tmp_path / "b"
    shutil.copytree(tiny, d)
    run_device(device, d)
    previous = (d / ADAPTER_FILE).read_bytes()
    limit = len(previous) // 2

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = run([str(device), str(d)], preexec_fn=small_files)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "write failed" in proc.stderr
    assert (d / ADAPTER_FILE).read_bytes() == previous
    assert sorted(p.name for p in d.iterdir()) == sorted([ADAPTER_FILE, BUNDLE_FILE, MANIFEST_FILE])


def test_sanitised_build_runs_clean(tiny: Path, tmp_path: Path, device_asan: Path):
    """The good path under ASan + UBSan (leaks included): no report, the normal result."""
    d = tmp_path / "b"
    shutil.copytree(tiny, d)
    out = run_device(device_asan, d)
    assert out["steps"] == 2 and 0 <= out["accuracy_after"] <= 1


def header_of_bytes(content: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", content[:8])
    return json.loads(content[8 : 8 + n]), content[8 + n :]


# --- fuzz: corrupt bundles through the sanitised program ----------------------------------------
@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_fuzz_bundle_reader(data, tiny: Path, device_asan: Path, tmp_path_factory: pytest.TempPathFactory):
    """Random damage - flipped/inserted/deleted bytes in the header, truncation, JSON edits of
    sizes, offsets and dtypes - never crashes the reader or trips a sanitizer: the program
    either runs (the damage was harmless) or says one `error:` line and exits 2."""
    good = (tiny / BUNDLE_FILE).read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    kind = data.draw(st.sampled_from(["bytes", "truncate", "json", "length"]))
    content = bytearray(good)
    if kind == "bytes":
        for _ in range(data.draw(st.integers(1, 8))):
            at = data.draw(st.integers(0, 8 + n - 1))
            op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
            if op == "flip":
                content[at] = data.draw(st.integers(0, 255))
            elif op == "insert":
                content[at:at] = bytes([data.draw(st.integers(0, 255))])
            else:
                del content[at]
    elif kind == "truncate":
        content = content[: data.draw(st.integers(0, len(good) - 1))]
    elif kind == "length":
        content[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    else:
        header, rest = header_of_bytes(good)
        name = data.draw(st.sampled_from(sorted(k for k in header if k != "__metadata__")))
        field = data.draw(st.sampled_from(["shape", "data_offsets", "dtype", "drop", "metadata"]))
        big = st.integers(0, 2**64 + 5)
        if field == "dtype":
            header[name]["dtype"] = data.draw(st.sampled_from(["U8", "I8", "I32", "F32", "F64", "BOOL", "X", ""]))
        elif field == "drop":
            del header[name]
        elif field == "metadata":
            key = data.draw(st.sampled_from(sorted(header["__metadata__"])))
            header["__metadata__"][key] = data.draw(st.text(max_size=12))
        else:
            header[name][field] = data.draw(st.lists(big, max_size=5))
        content = bytearray(with_header(header, rest))
    d = tmp_path_factory.mktemp("fuzz")
    for f in (MANIFEST_FILE,):
        shutil.copy(tiny / f, d / f)
    (d / BUNDLE_FILE).write_bytes(bytes(content))
    proc = run([str(device_asan), str(d)], env={"ASAN_OPTIONS": "detect_leaks=0"}, timeout=120)
    assert "Sanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        json.loads(proc.stdout)
    else:
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert not (d / ADAPTER_FILE).exists()
    shutil.rmtree(d)
