"""Issue 12's examples, one test each: nothing non-finite saved, adapters hashed, output paths
that are devices or the run's own inputs refused, killed writers' temp files cleaned, records
validated before use and sized against the file before allocating, downloads that try every
mirror, fingerprints and checksums that see in-place changes."""

from __future__ import annotations

import errno
import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from instantft import fileio
from instantft.errors import InstantFTError

from . import studies_path  # noqa: F401  (the results reader lives in studies/)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from instantft.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def adapter_method(mnist_backbone):
    """A skip2-lora method on the bundled MNIST backbone, not trained (B = 0): enough to save."""
    from instantft.methods import FineTuneConfig, create

    return create("skip2-lora", mnist_backbone[0], FineTuneConfig())


def saved_adapter(tmp_path: Path, method) -> Path:
    from instantft.methods.adapter_io import save_adapter

    task = {"dataset": "rotmnist", "angle": 45.0, "seed": 0, "samples": 160, "eval_samples": 200}
    return save_adapter(tmp_path / "a.safetensors", method, {"task": task, "numerics": "float"})


def rewrite(path: Path, record: dict | None = None, state: dict | None = None, key: str = "instantft_adapter") -> None:
    """Write ``path`` again with a changed record or tensors (as a tamperer would, no checks)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata()
    save_file(state if state is not None else load_file(str(path)), str(path),
              metadata={key: json.dumps(record) if record is not None else meta[key]})


# --- §1/§2: nothing non-finite is written; adapters carry a hash ------------------------------
def test_non_finite_tensor_is_never_written(tmp_path: Path):
    target = tmp_path / "x.safetensors"
    with pytest.raises(InstantFTError, match=r"refusing to save non-finite tensors \(w\)"):
        fileio.save_with_record(target, {"w": torch.tensor([1.0, float("nan")]), "ok": torch.ones(2)}, "k", {})
    with pytest.raises(InstantFTError, match="non-finite"):
        fileio.save_with_record(target, {"w": torch.tensor([float("inf")])}, "k", {})
    with pytest.raises(InstantFTError, match=r"\$.loss\[1\] = nan"):
        fileio.atomic_write_json(tmp_path / "r.json", {"loss": [0.5, float("nan")]})
    assert list(tmp_path.iterdir()) == []


def test_adapter_records_the_sha256_of_its_tensors(tmp_path: Path, adapter_method, mnist_backbone):
    from instantft.methods.adapter_io import load_adapter, read_adapter_record

    path = saved_adapter(tmp_path, adapter_method)
    record = read_adapter_record(path)
    assert record["tensors_sha256"] == fileio.tensors_sha256(adapter_method.trainable())
    method, _ = load_adapter(path, mnist_backbone[0])
    for k, v in adapter_method.trainable().items():
        assert torch.equal(method.trainable()[k], v)


def test_adapter_with_a_flipped_weight_byte_is_refused(tmp_path: Path, adapter_method, mnist_backbone, capsys):
    from instantft.methods.adapter_io import load_adapter

    path = saved_adapter(tmp_path, adapter_method)
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside skip5's tensor bytes: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(InstantFTError, match="do not match their recorded sha256"):
        load_adapter(path, mnist_backbone[0])
    code, _, err = run(capsys, "evaluate", "--adapter", str(path))
    assert code == 2 and one_line(err) and "sha256" in err


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_adapter_or_checkpoint_with_non_finite_tensors_is_refused(tmp_path: Path, adapter_method, mnist_backbone,
                                                                  bad: float):
    from instantft.methods.adapter_io import load_adapter, read_adapter_record
    from instantft.models import load_checkpoint, read_metadata, save_checkpoint

    path = saved_adapter(tmp_path, adapter_method)
    state = {k: v.clone() for k, v in adapter_method.trainable().items()}
    state["skip1.B"][0, 0] = bad
    record = read_adapter_record(path) | {"tensors_sha256": fileio.tensors_sha256(state)}  # a consistent hash
    rewrite(path, record, state)
    with pytest.raises(InstantFTError, match=r"non-finite values \(NaN or inf\) in skip1.B"):
        load_adapter(path, mnist_backbone[0])

    ckpt = save_checkpoint(tmp_path / "c.safetensors", mnist_backbone[0], {"dataset": "mnist"})
    weights = {k: v.clone() for k, v in mnist_backbone[0].state_dict().items()}
    weights["fc3.bias"][3] = bad
    rewrite(ckpt, read_metadata(ckpt) | {"weights_sha256": fileio.tensors_sha256(weights)}, weights, key="instantft")
    with pytest.raises(InstantFTError, match=r"non-finite values \(NaN or inf\) in fc3.bias"):
        load_checkpoint(ckpt)


def test_adapter_without_a_hash_is_refused(tmp_path: Path, adapter_method, mnist_backbone):
    from instantft.methods.adapter_io import load_adapter, read_adapter_record

    path = saved_adapter(tmp_path, adapter_method)
    record = read_adapter_record(path)
    del record["tensors_sha256"]
    rewrite(path, record)
    with pytest.raises(InstantFTError, match="field tensors_sha256: Field required"):
        load_adapter(path, mnist_backbone[0])


# --- §4: sizes checked against the tensors present before anything is allocated ---------------
def test_small_adapter_claiming_rank_400000_is_refused_before_allocating(tmp_path: Path, adapter_method,
                                                                        mnist_backbone, monkeypatch, capsys):
    from instantft.methods import adapter_io

    path = saved_adapter(tmp_path, adapter_method)
    record = adapter_io.read_adapter_record(path)
    record["config"]["rank"] = 400_000
    rewrite(path, record)
    assert path.stat().st_size < 50_000
    built = []
    monkeypatch.setattr(adapter_io, "create", lambda *a, **k: built.append(a))
    with pytest.raises(InstantFTError, match=r"field config\.rank: Input should be less than or equal to 4096"):
        adapter_io.load_adapter(path, mnist_backbone[0])
    assert built == []  # refused before the method (what allocates rank x d) was built
    monkeypatch.undo()
    code, _, err = run(capsys, "evaluate", "--adapter", str(path))
    assert code == 2 and one_line(err)  # refused before allocating (was 4.3 GB); speed is the bench's


def test_adapter_rank_must_match_its_tensors(tmp_path: Path, adapter_method, mnist_backbone):
    """A rank no larger than the file's tensors, but not theirs: refused before building too."""
    from instantft.methods import adapter_io

    path = saved_adapter(tmp_path, adapter_method)
    record = adapter_io.read_adapter_record(path)
    record["config"]["rank"] = 700
    rewrite(path, record)
    with pytest.raises(InstantFTError, match=r"skip\d.[AB] has shape \[\d+, \d+\], not rank 700"):
        adapter_io.load_adapter(path, mnist_backbone[0])


def test_adapter_record_shapes_must_match_the_file(tmp_path: Path, adapter_method, mnist_backbone):
    from instantft.methods.adapter_io import load_adapter, read_adapter_record

    path = saved_adapter(tmp_path, adapter_method)
    record = read_adapter_record(path)
    record["shapes"]["skip1.A"] = [4, 785]
    rewrite(path, record)
    with pytest.raises(InstantFTError, match="record's shapes do not match the tensors in the file"):
        load_adapter(path, mnist_backbone[0])


# --- §4: malformed records are one line -------------------------------------------------------
CHECKPOINT_CASES = {
    "not an object": ([1, 2], "expected a JSON object, got list"),
    "list for a string": ({"architecture": ["lenet5-mnist"]}, "field architecture: Input should be a valid string"),
    "float for an int": ({"samples": 6000.0}, "field samples: Input should be a valid integer"),
    "bool for an int": ({"seed": True}, "field seed: Input should be a valid integer"),
    "seed beyond 64 bits": ({"seed": 2**70}, "field seed: Input should be less than"),
    "accuracy above 1": ({"test_accuracy": 7.5}, "field test_accuracy"),
    "NaN literal": ("NaN", "not valid JSON"),
    "deeply nested": ("[" * 100_000 + "]" * 100_000, "nested more than 16 levels deep"),
    "nested below the limit's reach": ({"x": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}, "nested more than 16 levels"),
    "huge": ("\"" + "a" * (2 << 20) + "\"", "larger than the"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_malformed_checkpoint_record_is_one_line(tmp_path: Path, mnist_backbone, capsys, case: str):
    from instantft.models import load_checkpoint, read_metadata, save_checkpoint

    change, message = CHECKPOINT_CASES[case]
    path = save_checkpoint(tmp_path / "c.safetensors", mnist_backbone[0], {"dataset": "mnist", "seed": 0})
    if isinstance(change, dict):
        text = json.dumps(read_metadata(path) | change)
    elif isinstance(change, list):
        text = json.dumps(change)
    else:
        text = change
    save_file(mnist_backbone[0].state_dict(), str(path), metadata={"instantft": text})
    with pytest.raises(InstantFTError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "none", "--samples", "20",
                       "--eval-samples", "20", "--checkpoint", str(path))
    assert code == 2 and one_line(err)


def test_old_and_bundled_records_still_validate():
    from _common import load_results
    from instantft.models import bundled_checkpoint, read_metadata

    root = Path(__file__).resolve().parents[1]
    for dataset in ("mnist", "fmnist"):
        assert read_metadata(bundled_checkpoint(dataset))["test_accuracy"] > 0.8
    shipped = sorted(bundled_checkpoint("mnist").parent.glob("*.safetensors"))
    assert len(shipped) >= 2 and all(read_metadata(p)["weights_sha256"] for p in shipped)
    results = root / "results" / "reproduce" / "results.json"
    if results.is_file():
        assert len(load_results(results)) > 0


@pytest.mark.parametrize(
    "content, message",
    [
        (b"{\"a\": 1}", "expected a JSON list of runs, got dict"),
        (b"[1]", "entry 0: expected a JSON object, got int"),
        (b"[{\"study\": \"fig7\"}]", "entry 0: field dataset: Field required"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[" * 50_000, "nested more than 16 levels deep"),
    ],
)
def test_results_file_of_the_wrong_shape_is_one_line(tmp_path: Path, content: bytes, message: str):
    from _common import load_results

    (tmp_path / "results.json").write_bytes(content)
    with pytest.raises(InstantFTError, match=message) as info:
        load_results(tmp_path / "results.json")
    assert "\n" not in str(info.value)


def test_results_run_with_string_accuracy_is_refused(tmp_path: Path):
    from _common import load_results

    run_ = {"study": "fig7", "dataset": "rotmnist", "angle": 90.0, "method": "none", "seed": 0, "samples": 10,
            "eval_samples": 10, "accuracy_before": 0.5, "accuracy_after": "0.9", "finetune_seconds": 0.0,
            "cache_bytes": 0}
    (tmp_path / "results.json").write_text(json.dumps([run_]))
    with pytest.raises(InstantFTError, match="entry 0: field accuracy_after: Input should be a valid number"):
        load_results(tmp_path / "results.json")


# --- §3: output paths -----------------------------------------------------------------------
def test_output_that_is_a_device_or_fifo_is_refused(tmp_path: Path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for target in ("/dev/null", str(fifo)):
        with pytest.raises(InstantFTError, match="is not a regular file"):
            fileio.ensure_writable(target)
        with pytest.raises(InstantFTError, match="is not a regular file"):
            fileio.atomic_write_text(target, "x")
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()
    code, _, err = run(capsys, "pretrain", "--dataset", "mnist", "--samples", "20", "--epochs", "1",
                       "--out", "/dev/null")
    assert code == 2 and one_line(err) and "not a regular file" in err
    assert Path("/dev/null").is_char_device()  # as root this used to become a regular file


def test_output_that_is_an_input_is_refused(tmp_path: Path, mnist_backbone, capsys):
    from instantft.models import save_checkpoint

    ckpt = save_checkpoint(tmp_path / "c.safetensors", mnist_backbone[0], {"dataset": "mnist"})
    before = ckpt.read_bytes()
    link = tmp_path / "link.safetensors"
    os.link(ckpt, link)  # the same file under another name
    for out in (ckpt, link):
        code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "none", "--samples", "20",
                           "--eval-samples", "20", "--checkpoint", str(ckpt), "--save-adapter", str(out))
        assert code == 2 and one_line(err) and "is also an input of this run" in err
    assert ckpt.read_bytes() == before


def test_pretrain_output_onto_its_own_data_is_refused(tmp_path: Path, capsys):
    import shutil

    from instantft.data.files import BUNDLED_DIR

    (tmp_path / "mnist").mkdir()
    for f in (BUNDLED_DIR / "mnist").iterdir():
        shutil.copy(f, tmp_path / "mnist" / f.name)
    victim = tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"
    before = victim.read_bytes()
    code, _, err = run(capsys, "pretrain", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(victim))
    assert code == 2 and one_line(err) and "is also an input of this run" in err
    assert victim.read_bytes() == before


def test_temp_files_of_a_killed_writer_are_cleaned(tmp_path: Path):
    target = tmp_path / "out.json"
    code = (
        "import sys, time; from instantft import fileio\n"
        "def slow(tmp):\n"
        "    tmp.write_text('partial'); print('writing', flush=True); time.sleep(60)\n"
        f"fileio.atomic_write({str(target)!r}, slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".out.json.{proc.pid}.") and left[0].endswith(".tmp")
    mine = tmp_path / f".out.json.{os.getpid()}.live.tmp"  # a live writer's temp file stays
    mine.write_text("in progress")
    fileio.atomic_write_json(target, {"ok": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, "out.json"])


def test_disk_full_while_saving_is_one_line_and_keeps_the_previous_file(tmp_path: Path, monkeypatch):
    target = fileio.atomic_write_text(tmp_path / "r.txt", "previous")

    def full(self, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(InstantFTError, match="write failed \\(No space left on device\\); previous file kept"):
        fileio.atomic_write_text(target, "new")
    monkeypatch.undo()
    assert target.read_text() == "previous" and [p.name for p in tmp_path.iterdir()] == ["r.txt"]


# --- §6: downloads --------------------------------------------------------------------------
def test_download_tries_every_mirror_and_names_each_failure(tmp_path: Path, monkeypatch):
    import pooch

    from instantft.data import files

    monkeypatch.delenv("INSTANTFT_OFFLINE", raising=False)
    monkeypatch.setattr(files, "cache_dir", lambda: tmp_path / "cache")  # not the session's shared cache
    spec = files.REGISTRY["mnist"]["t10k-labels-idx1-ubyte.gz"]
    calls = []

    def fake(url, known_hash, fname, path, progressbar):
        calls.append((url, progressbar))
        if url == spec.urls[0]:
            raise ConnectionError("mirror down")
        out = Path(path) / fname
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"ok")
        return str(out)

    monkeypatch.setattr(pooch, "retrieve", fake)
    target = tmp_path / "cache" / "mnist"
    target.mkdir(parents=True)
    killed, running = target / "tmpab12cd34", target / "tmpzz99yy88"  # pooch temp names
    killed.write_bytes(b"half a download")
    running.write_bytes(b"a download in progress")
    os.utime(killed, (time.time() - 7200, time.time() - 7200))
    got = files._download(spec, [tmp_path])
    assert not killed.exists() and running.exists()
    assert got.read_bytes() == b"ok" and [u for u, _ in calls] == list(spec.urls)
    assert all(bar is not True for _, bar in calls)  # never pooch's own bar: it needs tqdm

    def always_fails(url, **kwargs):
        raise ValueError("SHA256 hash of downloaded file (abc) does not match the known hash")

    monkeypatch.setattr(pooch, "retrieve", lambda url, **kw: always_fails(url))
    with pytest.raises(InstantFTError) as info:
        files._download(spec, [tmp_path])
    msg = str(info.value)
    assert all(f"{u}: checksum mismatch" in msg for u in spec.urls) and "\n" not in msg


# --- §7: fingerprints and checksums see in-place changes --------------------------------------
def test_imageset_fingerprint_sees_in_place_changes():
    from instantft.data import ImageSet

    s = ImageSet("x", torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64), torch.arange(4))
    before = s.fingerprint
    s.images[0, 0, 0, 0] = 1.0
    assert s.fingerprint != before
    s.images.numpy()[0, 0, 0, 0] = 0.0  # a write torch does not see
    assert s.fingerprint == before


def test_same_size_tampered_file_with_mtime_restored_is_refused(tmp_path: Path):
    import hashlib

    from instantft.data import files

    path = tmp_path / "f.gz"
    path.write_bytes(b"official content")
    known = "sha256:" + hashlib.sha256(b"official content").hexdigest()
    files.verify(path, known)
    st = path.stat()
    path.write_bytes(b"tampered content")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.raises(InstantFTError, match="checksum mismatch"):
        files.verify(path, known)


# --- readers: the sizes a header claims are bounded before decompressing ----------------------
def test_idx_header_claiming_gigabytes_is_refused_before_reading(tmp_path: Path):
    from instantft.data.readers import IDX_IMAGES_MAGIC, read_idx

    path = tmp_path / "i.gz"
    path.write_bytes(gzip.compress(struct.pack(">iIII", IDX_IMAGES_MAGIC, 60000, 4096, 4096)))
    with pytest.raises(InstantFTError, match="claims 1006632960000 bytes"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(gzip.compress(struct.pack(">iIII", IDX_IMAGES_MAGIC, 2**32 - 1, 2**32 - 1, 1)))
    with pytest.raises(InstantFTError, match="claims"):  # was a negative count with signed sizes
        read_idx(path, IDX_IMAGES_MAGIC)


# --- §4: the device bundle's records -----------------------------------------------------------
def test_device_bundle_records_validate_and_are_checked_against_the_file(tmp_path: Path):
    from safetensors import safe_open

    from instantft.cli import main
    from instantft.device import BUNDLE_FILE, MANIFEST_FILE
    from instantft.records import check_bundle

    out = tmp_path / "b"
    assert main(["export", "--dataset", "rotmnist", "--method", "instantft", "--out", str(out),
                 "--samples", "20", "--eval-samples", "20", "--epochs", "1", "--json"]) == 0  # fmt: skip

    with safe_open(str(out / BUNDLE_FILE), "np") as fh:
        metadata = dict(fh.metadata())
    shapes = fileio.tensor_shapes(out / BUNDLE_FILE)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    check_bundle(metadata, shapes, manifest, str(out))  # what export writes is valid
    bad = json.loads(json.dumps(manifest))
    name = next(iter(bad["tensors"]))
    bad["tensors"][name]["shape"] = [1, 2, 3]
    with pytest.raises(InstantFTError, match=f"tensor {name} has shape"):
        check_bundle(metadata, shapes, bad, str(out))
    with pytest.raises(InstantFTError, match="manifest: field steps: Input should be a valid integer"):
        check_bundle(metadata, shapes, {**manifest, "steps": 3.0}, str(out))
    with pytest.raises(InstantFTError, match="bundle metadata lr must be a finite number > 0"):
        check_bundle({**metadata, "lr": "inf"}, shapes, manifest, str(out))
    with pytest.raises(InstantFTError, match=r"adapter_record: field config\.rank"):
        record = json.loads(metadata["adapter_record"])
        record["config"]["rank"] = True
        check_bundle({**metadata, "adapter_record": json.dumps(record)}, shapes, manifest, str(out))


def test_idx_file_claiming_less_than_the_limit_allocates_what_it_holds(tmp_path: Path):
    """A 30-byte labels file claiming 200 MB (under the limit): the reader allocates what is there."""
    import tracemalloc

    from instantft.data.readers import IDX_LABELS_MAGIC, read_idx

    path = tmp_path / "l.gz"
    path.write_bytes(gzip.compress(struct.pack(">iI", IDX_LABELS_MAGIC, 200_000_000)))
    tracemalloc.start()
    try:
        with pytest.raises(InstantFTError, match="IDX payload has 0 bytes, header \\(200000000,\\) needs 200000000"):
            read_idx(path, IDX_LABELS_MAGIC)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # was 200 MB: gzip's read(n) allocates n bytes up front


def test_the_bundled_checkpoint_is_an_input_too(capsys):
    """Without --checkpoint the bundled weights are read: an output path onto them is refused."""
    from instantft.models import bundled_checkpoint

    target = bundled_checkpoint("mnist")
    before = target.read_bytes()
    code, _, err = run(capsys, "finetune", "--dataset", "rotmnist", "--method", "none", "--samples", "20",
                       "--eval-samples", "20", "--save-adapter", str(target))  # fmt: skip
    assert code == 2 and one_line(err) and "is also an input of this run" in err
    assert target.read_bytes() == before
