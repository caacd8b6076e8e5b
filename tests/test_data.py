"""Dataset files: real MNIST/Fashion-MNIST, SVHN .mat in the real layout, and every bad input."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from instantft.data import files, load_split, make_task, rotate
from instantft.data.readers import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx, read_idx_pair, read_svhn_mat
from instantft.errors import InstantFTError

from .conftest import write_svhn_mat


def write_idx(path: Path, magic: int, array: np.ndarray, compress: bool = True) -> Path:
    raw = struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def test_real_mnist_and_fmnist_test_splits_load():
    for name in ("mnist", "fmnist"):
        s = load_split(name, "test")
        assert s.images.shape == (10000, 1, 28, 28)
        assert float(s.images.min()) >= 0.0 and float(s.images.max()) <= 1.0
        assert s.labels.bincount().tolist() == (
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009] if name == "mnist" else [1000] * 10
        )
        assert torch.equal(s.indices, torch.arange(10000))


def test_rotmnist_protocol_split_and_indices():
    t = make_task("rotmnist", angle=30, samples=1024, seed=3)
    assert len(t.finetune) == 1024 and len(t.evaluate) == 8976
    ft, ev = set(t.finetune.indices.tolist()), set(t.evaluate.indices.tolist())
    assert not ft & ev and len(ft | ev) == 10000
    upright = load_split("mnist", "test")
    rows = t.finetune.indices
    assert torch.equal(t.finetune.labels, upright.labels[rows])
    assert torch.allclose(t.finetune.images, rotate(upright.images[rows], 30))
    assert make_task("rotmnist", angle=30, seed=4).finetune.fingerprint != t.finetune.fingerprint


def test_rotation_is_about_the_centre_and_counter_clockwise():
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(rotate(x, 90), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)
    assert torch.allclose(rotate(x, 0), x)


def test_checksum_mismatch_names_the_file(tmp_path: Path):
    d = tmp_path / "mnist"
    d.mkdir()
    write_idx(d / "t10k-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC, np.zeros(10))
    with pytest.raises(InstantFTError, match=r"t10k-labels-idx1-ubyte.gz: checksum mismatch"):
        files.locate("mnist", ["t10k-labels-idx1-ubyte.gz"], tmp_path)


def test_missing_file_offline_names_file_and_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("INSTANTFT_DATA")
    with pytest.raises(InstantFTError, match=r"missing data file mnist/train-images-idx3-ubyte.gz.*put it at"):
        files.locate("mnist", ["train-images-idx3-ubyte.gz"], tmp_path)


def test_truncated_gzip(tmp_path: Path):
    p = write_idx(tmp_path / "x.gz", IDX_IMAGES_MAGIC, np.zeros((4, 28, 28)))
    p.write_bytes(p.read_bytes()[:-30])
    with pytest.raises(InstantFTError, match=r"x.gz: .*(truncated|gzip)"):
        read_idx(p, IDX_IMAGES_MAGIC)


def test_not_gzip(tmp_path: Path):
    p = write_idx(tmp_path / "plain.gz", IDX_IMAGES_MAGIC, np.zeros((4, 28, 28)), compress=False)
    with pytest.raises(InstantFTError, match=r"plain.gz: not a valid gzip file"):
        read_idx(p, IDX_IMAGES_MAGIC)


def test_wrong_magic(tmp_path: Path):
    p = write_idx(tmp_path / "labels.gz", IDX_LABELS_MAGIC, np.zeros(5))
    with pytest.raises(InstantFTError, match=r"labels.gz: wrong IDX magic number 2049 \(expected 2051\)"):
        read_idx(p, IDX_IMAGES_MAGIC)


def test_payload_shorter_than_header_says(tmp_path: Path):
    p = tmp_path / "short.gz"
    p.write_bytes(gzip.compress(struct.pack(">4i", IDX_IMAGES_MAGIC, 5, 28, 28) + bytes(100)))
    with pytest.raises(InstantFTError, match=r"short.gz: IDX payload has 100 bytes"):
        read_idx(p, IDX_IMAGES_MAGIC)


def test_image_label_count_mismatch(tmp_path: Path):
    im = write_idx(tmp_path / "im.gz", IDX_IMAGES_MAGIC, np.zeros((5, 28, 28)))
    lb = write_idx(tmp_path / "lb.gz", IDX_LABELS_MAGIC, np.zeros(4))
    with pytest.raises(InstantFTError, match=r"lb.gz: 4 labels but im.gz has 5 images"):
        read_idx_pair(im, lb)


def test_labels_outside_range(tmp_path: Path):
    im = write_idx(tmp_path / "im.gz", IDX_IMAGES_MAGIC, np.zeros((3, 28, 28)))
    lb = write_idx(tmp_path / "lb.gz", IDX_LABELS_MAGIC, np.array([1, 12, 3]))
    with pytest.raises(InstantFTError, match=r"lb.gz: label 12 outside 0-9"):
        read_idx_pair(im, lb)


def test_svhn_mat_layout_and_labels(tmp_path: Path):
    p = write_svhn_mat(tmp_path / "train_32x32.mat", 7)
    raw = scipy.io.loadmat(p)
    images, labels = read_svhn_mat(p)
    assert images.shape == (7, 3, 32, 32)
    assert np.array_equal(images[2, 1], raw["X"][:, :, 1, 2])
    assert np.array_equal(labels, raw["y"].reshape(-1) % 10)
    assert labels.max() <= 9


@pytest.mark.parametrize("missing", ["X", "y"])
def test_svhn_mat_without_variable(tmp_path: Path, missing: str):
    p = write_svhn_mat(tmp_path / "test_32x32.mat", 3, drop=(missing,))
    with pytest.raises(InstantFTError, match=rf"test_32x32.mat: .mat file has no '{missing}' variable"):
        read_svhn_mat(p)


def test_svhn_task_from_real_format_files(svhn_dir: Path):
    """The SVHN protocol end to end on small files in the real layout, verified by checksum."""
    task = make_task("svhn", samples=40, data_dir=svhn_dir)
    assert task.finetune.images.shape == (40, 3, 32, 32) and len(task.evaluate) == 30
    assert torch.equal(task.finetune.indices, torch.arange(40))


def test_data_dir_that_is_a_file_or_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == locked else real_access(p, m))
    with pytest.raises(InstantFTError, match=r"locked: data directory is not readable"):
        files.locate("mnist", ["t10k-labels-idx1-ubyte.gz"], locked)


def test_cli_prints_one_line_and_no_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from instantft.cli import main

    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC, np.zeros((2, 28, 28)))
    code = main(["finetune", "--dataset", "rotmnist", "--method", "none", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "checksum mismatch" in err
    assert "Traceback" not in err


def test_flat_directory_of_another_dataset_is_passed_over(tmp_path: Path):
    """MNIST and Fashion-MNIST share file names: a flat directory holding MNIST's is not 'corrupt'
    Fashion-MNIST, so the search goes on (here to the bundled copy)."""
    import shutil

    name = "t10k-labels-idx1-ubyte.gz"
    shutil.copy(files.BUNDLED_DIR / "mnist" / name, tmp_path / name)
    assert files.locate("mnist", [name], tmp_path)[name] == tmp_path / name
    assert files.locate("fmnist", [name], tmp_path)[name] != tmp_path / name
