"""Hostile inputs, by class: each class of failure a red team found is closed in one place, and
each gets a test of its examples and, where inputs can be generated, a property test that would
have found them (run with ``--hypothesis-show-statistics`` to see how many cases each draws).

1. a run never writes onto or into its own inputs (``fileio.ensure_writable`` + ``run_scope``);
2. an adapter is evaluated only on the data it was fine-tuned on (``data_sha256``);
3. the user's code cannot end instantft with success (``usercode.user_code``, ``cli.main``);
4. error lines escape control characters (``cli.error_line``);
5. readers open regular files only and check sizes before allocating (``fileio.open_regular``,
   the ``.npz`` and image-folder readers);
6. memory and steps are checked before they are spent (the image budget, the API's checks);
7. one line, never a traceback (stream bounds, tap regexes, symlink loops, a failing forward);
8. the API raises ``InstantFTError`` for bad input;
9. a failed run leaves no directory behind.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import sys
import tempfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from instantft.cli import main
from instantft.errors import InstantFTError

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                    HealthCheck.function_scoped_fixture], derandomize=True, database=None)  # fmt: skip
NUMPY_BUDGET = 64 << 20
RSS_BUDGET_KB = 512 << 10

MODELS = '''
import sys
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 3))


def exit_zero():
    sys.exit(0)


def exit_message():
    sys.exit("msg")


class Tired(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(36, 3)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls > 3:
            raise RuntimeError("tired")
        return self.fc(x.flatten(1))


class NoGrad(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        torch.set_grad_enabled(False)
        return self.fc(x.flatten(1))


class Quits(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(36, 3)

    def forward(self, x):
        sys.exit(0)


def tired():
    return Tired()


def no_grad():
    return NoGrad()


def quits():
    return Quits()


def tanh():
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 3))
'''


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def one_error_line(code: int, err: str) -> bool:
    return code == 2 and err.startswith("error: ") and err.count("\n") == 1


def write_png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def image_folder(root: Path, n: int = 12, seed: int = 0) -> Path:
    """A 3-class folder of 6x6 grey images, ``n`` per class."""
    rng = np.random.default_rng(seed)
    for c in range(3):
        for i in range(n):
            px = rng.integers(0, 80, (6, 6), dtype=np.uint8)
            px[2 * c : 2 * c + 2] += 150
            write_png(root / f"class{c}" / f"{i:03d}.png", px)
    return root


@pytest.fixture
def user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A factory module (importable) beside a .npz and an image folder."""
    (tmp_path / "hostile_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("hostile_models", None)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.3, (60, 6, 6)).astype(np.float32)
    y = np.arange(60) % 3
    np.savez(tmp_path / "data.npz", x=x, y=y)
    image_folder(tmp_path / "folder")
    return tmp_path


def finetune(user: Path, *extra: str, data: str = "data.npz", model: str = "build", method: str = "skip2-lora"
             ) -> list[str]:  # fmt: skip
    return ["finetune", "--data", str(user / data), "--model", f"hostile_models:{model}", "--method", method,
            "--epochs", "1", "--batch-size", "8", *extra]  # fmt: skip


@contextmanager
def bounded_numpy() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
        assert peak < NUMPY_BUDGET, f"reader allocated {peak} bytes"
    finally:
        tracemalloc.stop()


@contextmanager
def bounded_rss() -> Iterator[None]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < RSS_BUDGET_KB, f"peak RSS grew by {grown} kB"


def reads_or_one_line(read) -> None:  # type: ignore[no-untyped-def]
    try:
        read()
        event("read")
    except InstantFTError as exc:
        assert "\n" not in str(exc) and str(exc)
        event(str(exc).split(": ", 1)[-1][:40])


_SCRATCH = tempfile.TemporaryDirectory(prefix="instantft-hostile-")


def scratch() -> Path:
    return Path(_SCRATCH.name)


# --- 1. an input destroyed by its own run -------------------------------------------------------
def test_save_adapter_onto_an_image_of_the_data_folder_is_refused(user: Path, capsys: pytest.CaptureFixture[str]):
    image = user / "folder" / "class1" / "003.png"
    before = image.read_bytes()
    for target in (image, user / "folder" / "adapter.safetensors", user / "folder" / "class0" / "new" / "a.st"):
        code, _, err = run(capsys, *finetune(user, "--save-adapter", str(target), data="folder"))
        assert one_error_line(code, err) and "input of this run" in err, err
    assert image.read_bytes() == before
    assert sorted(p.name for p in (user / "folder").iterdir()) == ["class0", "class1", "class2"]
    assert not (user / "folder" / "class0" / "new").exists()


def test_save_adapter_onto_the_model_source_or_weights_is_refused(user: Path, capsys: pytest.CaptureFixture[str]):
    source = user / "hostile_models.py"
    before = source.read_text()
    code, _, err = run(capsys, *finetune(user, "--save-adapter", str(source)))
    assert one_error_line(code, err) and "input of this run" in err, err
    link = user / "link.py"
    link.symlink_to(source)
    code, _, err = run(capsys, *finetune(user, "--save-adapter", str(link)))
    assert one_error_line(code, err), err
    assert source.read_text() == before and link.is_symlink()


@SETTINGS
@given(parts=st.lists(st.sampled_from(["class0", "class1", "new", "..", ".", "000.png", "x.safetensors"]),
                      min_size=1, max_size=4))  # fmt: skip
def test_nothing_is_written_into_an_input_folder(parts: list[str]):
    """Any path that resolves inside an input folder is refused, and nothing is created."""
    from instantft.fileio import declare_input, ensure_writable, run_scope

    root = scratch() / "writes"
    folder = root / "data"
    if not folder.exists():
        image_folder(folder, n=1)
    target = folder.joinpath(*parts)
    listing = sorted(str(p) for p in root.rglob("*"))
    inside = target.resolve().is_relative_to(folder.resolve())
    with run_scope():
        declare_input(folder)
        try:
            ensure_writable(target)
            event("allowed")
            assert not inside
        except InstantFTError as exc:
            event(str(exc).split(": ", 1)[-1][:30])
            assert "\n" not in str(exc)
    assert sorted(str(p) for p in root.rglob("*")) == listing


# --- 2. a run that reports on other data than it claims -------------------------------------------
def test_evaluate_refuses_data_changed_in_place(user: Path, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch):
    adapter = user / "a.safetensors"
    code, _, err = run(capsys, *finetune(user, "--save-adapter", str(adapter), data="folder"))
    assert code == 0, err
    evaluate = ["evaluate", "--adapter", str(adapter), "--model", "hostile_models:build", "--json"]
    code, out, err = run(capsys, *evaluate)
    assert code == 0, err
    record = json.loads(out)
    image = user / "folder" / "class2" / "000.png"
    write_png(image, np.zeros((6, 6), np.uint8))  # same name, same size, other pixels
    code, _, err = run(capsys, *evaluate)
    assert one_error_line(code, err) and "is not the data" in err, err
    # the recorded path is absolute: from another directory the same files are found
    image_folder(user / "folder")  # restored
    monkeypatch.chdir(user.parent)
    code, out, err = run(capsys, *evaluate)
    assert code == 0, err
    assert json.loads(out)["accuracy"] == record["accuracy"]


def test_old_record_with_a_relative_data_path_is_refused(user: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from instantft.methods.adapter_io import META_KEY

    adapter = user / "a.safetensors"
    code, _, err = run(capsys, *finetune(user, "--save-adapter", str(adapter)))
    assert code == 0, err
    with safe_open(str(adapter), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    record = json.loads(meta[META_KEY])
    assert record["data_sha256"] and Path(record["task"]["data"]).is_absolute()
    del record["data_sha256"]  # as the previous version wrote it
    record["task"]["data"] = "data.npz"
    old = user / "old.safetensors"
    save_file(tensors, str(old), metadata={**meta, META_KEY: json.dumps(record)})
    (user / "elsewhere").mkdir()
    np.savez(user / "elsewhere" / "data.npz", x=np.ones((60, 6, 6), np.float32), y=np.arange(60) % 3)
    monkeypatch.chdir(user / "elsewhere")
    code, _, err = run(capsys, "evaluate", "--adapter", str(old), "--model", "hostile_models:build")
    assert one_error_line(code, err) and "relative data path" in err, err
    code, _, err = run(capsys, "evaluate", "--adapter", str(old), "--model", "hostile_models:build",
                       "--data", str(user / "data.npz"))  # fmt: skip
    assert code == 0, err


@SETTINGS
@given(change=st.sampled_from(["pixel", "rename", "swap-class", "add", "remove", "same"]), seed=st.integers(0, 99))
def test_the_data_hash_sees_every_change_of_the_images(change: str, seed: int):
    from instantft.data.userdata import load_image_folder

    base = scratch() / "hash"
    ref = base / "ref"
    if not ref.exists():
        image_folder(ref, n=2)
    want = load_image_folder(ref).sha256
    other = base / f"copy-{change}"
    import shutil

    shutil.rmtree(other, ignore_errors=True)
    shutil.copytree(ref, other)
    rng = np.random.default_rng(seed)
    c, i = int(rng.integers(0, 3)), int(rng.integers(0, 2))
    image = other / f"class{c}" / f"{i:03d}.png"
    if change == "pixel":
        px = np.asarray(__import__("PIL.Image").Image.open(image)).copy()
        px[int(rng.integers(0, 6)), int(rng.integers(0, 6))] ^= 1
        write_png(image, px)
    elif change == "rename":
        image.rename(image.with_name(f"9{i:02d}.png"))
    elif change == "swap-class":
        image.rename(other / f"class{(c + 1) % 3}" / f"x{i:02d}.png")
    elif change == "add":
        write_png(other / f"class{c}" / "extra.png", np.zeros((6, 6), np.uint8))
    elif change == "remove":
        image.unlink()
    got = load_image_folder(other).sha256
    assert (got == want) == (change == "same")


# --- 3. a --model factory ends the process with success -------------------------------------------
@pytest.mark.parametrize("factory", ["exit_zero", "exit_message", "quits"])
def test_a_factory_or_forward_calling_sys_exit_is_an_error(factory: str, user: Path,
                                                           capsys: pytest.CaptureFixture[str]):
    adapter = user / "new" / "a.safetensors"
    code, out, err = run(capsys, *finetune(user, "--save-adapter", str(adapter), model=factory))
    assert one_error_line(code, err) and "SystemExit" in err, err
    assert not (user / "new").exists() and out == ""


def test_sys_exit_mid_command_is_an_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):
    import instantft.cli as cli

    def table1_rows(*_: object) -> None:
        sys.exit("msg")

    monkeypatch.setattr("instantft.analysis.table1.table1_rows", table1_rows)
    code, _, err = run(capsys, "table1")
    assert one_error_line(code, err) and "SystemExit('msg')" in err, err
    assert cli.main(["--help"]) == 0


@SETTINGS
@given(kind=st.sampled_from([SystemExit, ValueError, RuntimeError, MemoryError, RecursionError, GeneratorExit,
                             StopIteration, BaseException, ArithmeticError]),
       arg=st.none() | st.integers() | st.text())  # fmt: skip
def test_anything_the_users_code_raises_is_one_line(kind: type[BaseException], arg: object):
    from instantft.cli import error_line
    from instantft.usercode import user_code

    with pytest.raises(InstantFTError) as info, user_code("--model m:f: f()"):
        raise kind() if arg is None else kind(arg)
    line = error_line(str(info.value))
    assert "\n" not in line and all(c.isprintable() for c in line)
    event(kind.__name__)


def test_ctrl_c_in_the_users_code_is_the_users():
    from instantft.usercode import user_code

    with pytest.raises(KeyboardInterrupt), user_code("f()"):
        raise KeyboardInterrupt


# --- 4. terminal escape injection -----------------------------------------------------------------
def test_a_class_folder_named_with_escape_sequences_is_escaped(user: Path, capsys: pytest.CaptureFixture[str]):
    evil = user / "folder" / "class1\x1b]0;owned\x07\x1b[2J"
    evil.mkdir()
    (evil / "bad.png").write_bytes(b"not a png")
    code, _, err = run(capsys, *finetune(user, data="folder"))
    assert one_error_line(code, err) and "\\x1b]0;owned\\x07\\x1b[2J" in err, err
    assert "\x1b" not in err and "\x07" not in err


@SETTINGS
@given(text=st.text())
def test_every_error_line_is_one_printable_line(text: str, capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch):  # fmt: skip
    def table1_rows(*_: object) -> None:
        raise InstantFTError(text)

    monkeypatch.setattr("instantft.analysis.table1.table1_rows", table1_rows)
    code, _, err = run(capsys, "table1")
    assert code == 2 and err.endswith("\n") and err.count("\n") == 1
    assert all(c.isprintable() for c in err[:-1])


# --- 5. no bound, no answer -----------------------------------------------------------------------
def test_a_fifo_or_a_device_is_refused_without_waiting(tmp_path: Path, user: Path,
                                                       capsys: pytest.CaptureFixture[str]):  # fmt: skip
    from instantft.data.userdata import load_user_data

    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.npz"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(InstantFTError, match="not a regular file"):
            load_user_data(path)
    os.mkfifo(user / "folder" / "class0" / "fifo.png")
    code, _, err = run(capsys, *finetune(user, data="folder"))
    assert one_error_line(code, err) and "not a regular file" in err, err
    # a recorded data path that became a FIFO
    adapter = user / "a.safetensors"
    assert run(capsys, *finetune(user, "--save-adapter", str(adapter)))[0] == 0
    (user / "data.npz").unlink()
    os.mkfifo(user / "data.npz")
    code, _, err = run(capsys, "evaluate", "--adapter", str(adapter), "--model", "hostile_models:build")
    assert one_error_line(code, err) and "not a regular file" in err, err


def _npy(shape: tuple[int, ...], dtype: str, payload: int | None = None) -> bytes:
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    n = __import__("math").prod(shape) * np.dtype(dtype).itemsize if payload is None else payload
    return buf.getvalue() + bytes(min(n, 4096))


members = st.tuples(
    st.sampled_from(["x.npy", "y.npy", "x.npy", "z.npy", "x.npy/"]),
    st.tuples(st.lists(st.sampled_from([0, 1, 3, 6, 2**20, 2**31 - 1, 2**40]), min_size=0, max_size=4),
              st.sampled_from(["f4", "u1", "i8", "f8", "c8", "U3"]), st.sampled_from([None, 0, 7])),
)


def _zip(entries: list[tuple[str, tuple[list[int], str, int | None]]], compress: bool) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as zf:
        for name, (shape, dtype, payload) in entries:
            with __import__("warnings").catch_warnings():
                __import__("warnings").simplefilter("ignore")  # duplicate names are what is tested
                zf.writestr(name, _npy(tuple(shape), dtype, payload))
    return buf.getvalue()


@SETTINGS
@given(entries=st.lists(members, min_size=0, max_size=5), compress=st.booleans(),
       cut=st.sampled_from([0, 0, 0, 1, 30]))  # fmt: skip
def test_npz_reader_on_hostile_archives(entries: list, compress: bool, cut: int):
    """Duplicate members, headers claiming terabytes, sizes that disagree with the member, other
    dtypes, truncation: the reader reads or refuses in one line, allocating little."""
    from instantft.data.userdata import load_npz

    data = _zip(entries, compress)
    path = scratch() / "f.npz"
    path.write_bytes(data[: len(data) - cut])
    with bounded_numpy():
        reads_or_one_line(lambda: load_npz(path))


def test_npz_duplicate_members_and_many_members_are_refused(tmp_path: Path):
    from instantft.data.userdata import load_npz

    path = tmp_path / "dup.npz"
    path.write_bytes(_zip([("x.npy", ([2, 3], "f4", None)), ("y.npy", ([2], "i8", None)),
                           ("x.npy", ([10**6, 10**3], "f4", 0))], False))  # fmt: skip
    with pytest.raises(InstantFTError, match="more than once"):
        load_npz(path)
    path.write_bytes(_zip([(f"m{i}.npy", ([1], "u1", None)) for i in range(100)], False))
    with pytest.raises(InstantFTError, match="100 members"):
        load_npz(path)


# --- 6. memory checked after it is spent ----------------------------------------------------------
def _png_header(width: int, height: int, color: int, tail: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(tail)) + chunk(b"IEND", b"")


@SETTINGS
@given(width=st.integers(1, 2**31 - 1) | st.integers(1, 64), height=st.integers(1, 2**31 - 1) | st.integers(1, 64),
       color=st.sampled_from([0, 2, 3, 4, 6]), tail=st.binary(max_size=64))  # fmt: skip
def test_image_headers_are_checked_before_decoding(width: int, height: int, color: int, tail: bytes):
    """A PNG whose header claims any size: read, or refused in one line, before its pixels are
    allocated (peak RSS stays low: the budget check counts the decoded image too)."""
    from instantft.data.userdata import load_image_folder

    root = scratch() / "bomb"
    (root / "a").mkdir(parents=True, exist_ok=True)
    (root / "a" / "x.png").write_bytes(_png_header(width, height, color, tail))
    with bounded_rss():
        reads_or_one_line(lambda: load_image_folder(root))


def test_a_png_within_pillows_limit_is_checked_with_its_decoding_memory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    from instantft.data import userdata

    write_png(tmp_path / "a" / "x.png", np.zeros((64, 64, 3), np.uint8))
    # the float32 tensor (64*64*3*4 = 48 KiB) fits; with decoding on the way (32 KiB more) it does not
    monkeypatch.setattr(userdata, "DATA_BUDGET_BYTES", 64 * 64 * 3 * 4 + 1024)
    with pytest.raises(InstantFTError, match="data budget"):
        userdata.load_image_folder(tmp_path)


def test_api_refuses_sizes_before_allocating():
    from instantft import FineTuner
    from instantft.settings import SettingsError

    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
    with pytest.raises(SettingsError, match="rank"):
        FineTuner(net, rank=10**6)
    with pytest.raises(SettingsError, match="epochs"):
        FineTuner(net, epochs=10**9)
    x, y = torch.rand(5000, 8), torch.randint(0, 4, (5000,))
    with pytest.raises(SettingsError, match="steps"):
        FineTuner(net, epochs=10**7, batch_size=1).fit((x, y))
    # a tap 2M wide: 4,000 samples would need 30 GB of Forward Cache
    wide = nn.Sequential(nn.Linear(8, 2_000_000), nn.ReLU(), nn.Linear(2_000_000, 3))
    x, y = torch.rand(4000, 8), torch.randint(0, 3, (4000,))
    with bounded_rss(), pytest.raises(SettingsError, match="memory budget"):
        FineTuner(wide, method="skip2-lora", epochs=1).fit((x, y))


# --- 7. tracebacks where one line is promised -----------------------------------------------------
@pytest.mark.parametrize("args", [
    ["--seed", "-1"], ["--cache-capacity", "100000000"], ["--phase-length", "2500000"], ["--threads", "100000"],
    ["--cache-capacity", "9" * 400], ["--plot", "x.gif"],
])  # fmt: skip
def test_stream_extremes_are_one_line(args: list[str], capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, "stream", *args)
    assert one_error_line(code, err), err


@SETTINGS
@given(seed=st.integers(0, 2**63 - 1), round_=st.integers(0, 10**6),
       capacity=st.integers(0, 10**30).map(str) | st.sampled_from(["4MB", "1e9", "99999999999TB", "-1"]),
       arrival=st.floats(min_value=5e-324, max_value=1e300), phase=st.integers(1, 10**9))  # fmt: skip
def test_stream_settings_are_checked_in_one_line(seed: int, round_: int, capacity: str, arrival: float, phase: int):
    from instantft.settings import FineTuneConfig
    from instantft.stream.config import StreamConfig

    try:
        config = StreamConfig(cache_capacity=capacity, arrival_ms=arrival, phase_length=phase,
                              adaptation=FineTuneConfig(seed=seed))  # fmt: skip
    except InstantFTError as exc:
        assert "\n" not in str(exc)
        event(str(exc)[:30])
        return
    event("valid")
    config.finetune_config(round_)  # a derived seed is always a valid one


def test_a_denormal_arrival_time_does_not_overflow():
    from instantft.run import load_backbone
    from instantft.stream.loop import run_stream
    from tests.test_stream import small

    report = run_stream(small(arrival_ms=5e-324), backbone=load_backbone("rotmnist")[0])
    assert report["adaptations"] == 1


def test_bad_tap_regex_symlink_loops_and_failing_forwards_are_one_line(user: Path,
                                                                       capsys: pytest.CaptureFixture[str]):
    code, _, err = run(capsys, *finetune(user, "--taps", "re:("))
    assert one_error_line(code, err) and "regular expression" in err, err
    for model, message in (("tired", "RuntimeError: tired"), ("no_grad", "turned autograd off")):
        code, _, err = run(capsys, *finetune(user, model=model, method="lora-all"))
        assert one_error_line(code, err) and message in err, err
    loop = user / "folder" / "class0" / "loop.png"
    loop.symlink_to(loop)
    code, _, err = run(capsys, *finetune(user, data="folder"))
    assert one_error_line(code, err), err
    loop.unlink()
    (user / "folder" / "cycle").symlink_to(user / "folder" / "cycle")
    code, _, err = run(capsys, *finetune(user, data="folder"))
    assert one_error_line(code, err), err


# --- 8. the API raises raw exceptions -------------------------------------------------------------
class DictDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        return {"x": torch.rand(8), "y": 0}


xs = st.just(((6, 8), torch.float32, 0.5)) | st.tuples(  # a valid batch, or anything
    st.sampled_from([(), (0,), (6,), (6, 8), (6, 2, 4), (3, 8)]),
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool,
                     torch.complex64]),
    st.sampled_from([0.0, 1.0, float("nan"), float("inf"), 1e39]),
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(x=xs, y_shape=st.just((6,)) | st.sampled_from([(), (6,), (3,), (6, 1)]),
       y_dtype=st.just(torch.int64) | st.sampled_from([torch.int64, torch.float32, torch.bool]),
       call=st.sampled_from(["fit", "predict", "dataset", "dicts"]))  # fmt: skip
def test_api_on_hostile_inputs(x: tuple, y_shape: tuple, y_dtype: torch.dtype, call: str):
    from instantft import FineTuner

    shape, dtype, fill = x
    xt = torch.full(shape, fill, dtype=torch.float64).to(dtype) if dtype != torch.bool else torch.zeros(shape).bool()
    yt = torch.zeros(y_shape, dtype=y_dtype)
    ft = FineTuner(nn.Sequential(nn.Flatten(), nn.Linear(8, 4)), epochs=1, batch_size=2)

    def act() -> None:
        if call == "fit":
            ft.fit((xt, yt))
        elif call == "predict":
            ft.predict(xt)
        elif call == "dataset":
            ft.fit(torch.utils.data.TensorDataset(xt, yt) if xt.ndim and yt.ndim and len(xt) == len(yt) else [xt])
        else:
            ft.fit(DictDataset())

    reads_or_one_line(act)


def test_api_save_and_load_refuse_hostile_paths_in_one_line(tmp_path: Path):
    from instantft import FineTuner

    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 4))
    ft = FineTuner(net, epochs=1, batch_size=2)
    ft.fit((torch.rand(6, 8), torch.randint(0, 4, (6,))))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for bad in (tmp_path, fifo, tmp_path / "file" / "x.safetensors"):
        (tmp_path / "file").touch()
        with pytest.raises(InstantFTError):
            ft.save(bad)
    for bad in (fifo, tmp_path, tmp_path / "missing.safetensors"):
        with pytest.raises(InstantFTError):
            FineTuner.load(bad, net)
    saved = ft.save(tmp_path / "new" / "a.safetensors")
    assert torch.equal(FineTuner.load(saved, net).predict(torch.ones(2, 8)), ft.predict(torch.ones(2, 8)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64, torch.bfloat16])
def test_api_refuses_other_than_float32_models_in_one_line(dtype: torch.dtype):
    from instantft import FineTuner

    with pytest.raises(InstantFTError, match=r"float32 models: pass model.float\(\)"):
        FineTuner(nn.Sequential(nn.Linear(8, 4)).to(dtype))


# --- 9. failed runs leave directories -------------------------------------------------------------
def test_failed_runs_create_no_directory(user: Path, capsys: pytest.CaptureFixture[str]):
    new = user / "new"
    cases = [
        ["export", "--method", "instantft", "--dataset", "rotmnist", "--samples", "10", "--batch-size", "20",
         "--out", str(new / "bundle")],
        ["export", "--method", "instantft", "--data", str(user / "data.npz"), "--model", "hostile_models:tanh",
         "--out", str(new / "bundle"), "--epochs", "1"],
        ["stream", "--plot", str(new / "deep" / "x.gif")],
        ["stream", "--plot", str(new / "deep" / "x.png"), "--cache-capacity", "1"],
        finetune(user, "--save-adapter", str(new / "x.safetensors"), model="tired"),
    ]  # fmt: skip
    for argv in cases:
        code, _, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert not new.exists(), argv


@SETTINGS
@given(parts=st.lists(st.sampled_from(["a", "b", "new", "x.safetensors"]), min_size=1, max_size=5))
def test_checking_a_target_creates_nothing(parts: list[str]):
    from instantft.fileio import ensure_writable

    root = scratch() / "targets"
    root.mkdir(exist_ok=True)
    try:
        ensure_writable(root.joinpath(*parts))
        event("writable")
    except InstantFTError as exc:
        event(str(exc).split(": ", 1)[-1][:30])
    assert list(root.iterdir()) == []
