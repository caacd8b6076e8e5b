"""The user's own data: image folders and .npz files read into ImageSets, and every bad input
one InstantFTError line. All files are written by the tests themselves."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from instantft.data import userdata
from instantft.data.userdata import check_against_model, load_image_folder, load_npz, load_user_data, user_task
from instantft.errors import InstantFTError


def write_folder(root: Path, counts: dict[str, int], size: tuple[int, int] = (8, 6), mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / name / f"{i:03d}.png")
    return root


def one_line(exc: pytest.ExceptionInfo[InstantFTError]) -> str:
    message = str(exc.value)
    assert "\n" not in message and message
    return message


def test_image_folder_follows_the_imagefolder_convention(tmp_path: Path):
    root = write_folder(tmp_path / "digits", {"b": 2, "a": 3, "c": 1})
    (root / "a" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    got = load_image_folder(root)
    assert got.classes == ["a", "b", "c"]  # sorted by name: class i is the i-th name
    assert got.data.labels.tolist() == [0, 0, 0, 1, 1, 2]
    assert got.data.images.shape == (6, 1, 6, 8) and got.data.images.dtype == torch.float32
    assert got.data.indices.tolist() == list(range(6))
    first = np.asarray(Image.open(root / "a" / "000.png"), dtype=np.float32) / 255.0
    assert torch.equal(got.data.images[0, 0], torch.from_numpy(first))
    assert float(got.data.images.min()) >= 0.0 and float(got.data.images.max()) <= 1.0


def test_rgb_and_jpeg_images(tmp_path: Path):
    root = write_folder(tmp_path / "rgb", {"x": 2, "y": 2}, mode="RGB")
    Image.new("RGB", (8, 6), (255, 0, 0)).save(root / "y" / "red.jpg", quality=95)
    got = load_image_folder(root)
    assert got.data.images.shape == (5, 3, 6, 8)
    red = got.data.images[got.data.labels == 1][-1]
    assert float(red[0].mean()) > 0.9 and float(red[1:].mean()) < 0.1


def test_npz_round_trip(tmp_path: Path):
    x = np.random.default_rng(1).integers(0, 256, (10, 5, 5), dtype=np.uint8)
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    got = load_user_data(tmp_path / "d.npz")
    assert got.classes is None
    assert got.data.images.shape == (10, 1, 5, 5)
    assert torch.allclose(got.data.images[:, 0], torch.from_numpy(x / 255.0).float())
    assert got.data.labels.dtype == torch.int64 and got.data.labels.tolist() == y.tolist()
    flat = np.linspace(-2, 2, 40, dtype=np.float64).reshape(10, 4)  # floats are kept as they are
    np.savez(tmp_path / "f.npz", x=flat, y=y)
    assert torch.equal(load_npz(tmp_path / "f.npz").data.images, torch.from_numpy(flat).float())


def test_split_is_seeded_disjoint_and_covers_the_data(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 4), np.float32), y=np.arange(50) % 2)
    data = load_npz(tmp_path / "d.npz").data
    task = user_task(data, seed=3)
    assert len(task.finetune) == 40 and len(task.evaluate) == 10  # default 80 % / 20 %
    ids = task.finetune.indices.tolist() + task.evaluate.indices.tolist()
    assert sorted(ids) == list(range(50))
    assert torch.equal(user_task(data, seed=3).finetune.indices, task.finetune.indices)
    assert not torch.equal(user_task(data, seed=4).finetune.indices, task.finetune.indices)
    small = user_task(data, samples=5, eval_samples=7)
    assert len(small.finetune) == 5 and len(small.evaluate) == 7
    with pytest.raises(InstantFTError, match=r"--samples must be in 1\.\.49"):
        user_task(data, samples=50)


# --- bad image folders -----------------------------------------------------------------------
def test_mixed_sizes(tmp_path: Path):
    root = write_folder(tmp_path / "d", {"a": 2, "b": 1})
    Image.new("L", (9, 6)).save(root / "b" / "big.png")
    with pytest.raises(InstantFTError, match=r"is 9x6 but .* is 8x6; all images must be one size") as exc:
        load_image_folder(root)
    one_line(exc)


def test_mixed_modes(tmp_path: Path):
    root = write_folder(tmp_path / "d", {"a": 2, "b": 1})
    Image.new("RGB", (8, 6)).save(root / "b" / "colour.png")
    with pytest.raises(InstantFTError, match=r"mode RGB differs from .*L; all images must be") as exc:
        load_image_folder(root)
    one_line(exc)


def test_unsupported_mode(tmp_path: Path):
    root = write_folder(tmp_path / "d", {"a": 1})
    Image.new("RGBA", (8, 6)).save(root / "a" / "alpha.png")
    with pytest.raises(InstantFTError, match=r"image mode RGBA is not supported") as exc:
        load_image_folder(root)
    one_line(exc)


def test_empty_class_folder(tmp_path: Path):
    root = write_folder(tmp_path / "d", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "readme.txt").write_text("no images")
    with pytest.raises(InstantFTError, match=r"class folder holds no PNG or JPEG image") as exc:
        load_image_folder(root)
    one_line(exc)


def test_no_class_folders(tmp_path: Path):
    (tmp_path / "flat").mkdir()
    Image.new("L", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(InstantFTError, match=r"no class folders"):
        load_image_folder(tmp_path / "flat")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong-format"])
def test_corrupt_image(tmp_path: Path, damage: str):
    root = write_folder(tmp_path / "d", {"a": 2, "b": 2})
    bad = root / "b" / "001.png"
    if damage == "garbage":
        bad.write_bytes(b"\x89PNG not really an image")
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:60])
    else:
        Image.new("L", (8, 6)).save(bad, format="GIF")
    with pytest.raises(InstantFTError, match=r"001\.png: (not a readable|corrupt image|is a GIF)") as exc:
        load_image_folder(root)
    one_line(exc)


def test_data_budget_is_checked_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_folder(tmp_path / "d", {"a": 2})
    monkeypatch.setattr(userdata, "DATA_BUDGET_BYTES", 100)
    with pytest.raises(InstantFTError, match=r"more than the .* GiB data budget"):
        load_image_folder(root)


# --- bad .npz files ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 3)), "y": np.zeros(5, int)}, "x has 4 samples but y has 5 labels"),
        ({"x": np.zeros((4, 3))}, "no array 'y'"),
        ({"y": np.zeros(4, int)}, "no array 'x'"),
        ({"x": np.zeros((4, 3)), "y": np.zeros(4)}, "y must hold integer class labels"),
        ({"x": np.zeros((4, 3), np.int32), "y": np.zeros(4, int)}, "x must be uint8"),
        ({"x": np.zeros(4), "y": np.zeros(4, int)}, r"x must be \(N, \.\.\.\)"),
        ({"x": np.zeros((4, 3)), "y": np.zeros((4, 1), int)}, r"x must be \(N, \.\.\.\) and y \(N,\)"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0, int)}, "holds no samples"),
        ({"x": np.array([[0.0, np.nan]] * 2), "y": np.zeros(2, int)}, "non-finite value .* sample 0"),
        ({"x": np.array([[0.0, 1.0], [np.inf, 0]]), "y": np.zeros(2, int)}, "non-finite value .* sample 1"),
        ({"x": np.array([[0.0, 1e300]] * 2), "y": np.zeros(2, int)}, "beyond float32"),
        ({"x": np.zeros((2, 3)), "y": np.array([0, -1])}, "y holds the label -1"),
        ({"x": np.zeros((2, 3)), "y": np.array([0, 2**40])}, "y holds the label 1099511627776"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], message: str):
    np.savez(tmp_path / "d.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(InstantFTError, match=message) as exc:
        load_npz(tmp_path / "d.npz")
    one_line(exc)


def test_npz_with_objects_is_refused_without_unpickling(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2, int))
    with pytest.raises(InstantFTError, match=r"not objects"):
        load_npz(tmp_path / "d.npz")


def test_not_an_npz(tmp_path: Path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(InstantFTError, match=r"not a readable .npz file") as exc:
        load_npz(tmp_path / "d.npz")
    one_line(exc)
    with zipfile.ZipFile(tmp_path / "e.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY bad header")
        z.writestr("y.npy", b"")
    with pytest.raises(InstantFTError, match=r"array 'x' is not a valid .npy entry"):
        load_npz(tmp_path / "e.npz")


def test_npz_budget_is_checked_from_the_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 10), np.float32), y=np.zeros(10, int))
    monkeypatch.setattr(userdata, "DATA_BUDGET_BYTES", 399)
    with pytest.raises(InstantFTError, match=r"data budget"):
        load_npz(tmp_path / "d.npz")


def test_data_path_kinds(tmp_path: Path):
    with pytest.raises(InstantFTError, match=r"no such file or folder"):
        load_user_data(tmp_path / "missing")
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(InstantFTError, match=r"image folder or a .npz file"):
        load_user_data(tmp_path / "d.csv")


# --- against the model ------------------------------------------------------------------------
def small_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_model_accepts_data_and_reports_classes(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 4), np.float32), y=np.array([0, 1, 2, 1]))
    data = load_npz(tmp_path / "d.npz").data
    assert check_against_model(data, small_model(), "d.npz") == 3


def test_labels_outside_the_models_classes(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 12), np.float32), y=np.array([0, 1, 2, 3]))
    with pytest.raises(InstantFTError, match=r"label 3 is outside the model's 3 classes \(0\.\.2\)") as exc:
        check_against_model(load_npz(tmp_path / "d.npz").data, small_model(), "d.npz")
    one_line(exc)


def test_input_shape_the_model_rejects(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 5, 5), np.float32), y=np.zeros(4, int))
    with pytest.raises(InstantFTError, match=r"the model rejects inputs of shape \(1, 5, 5\)") as exc:
        check_against_model(load_npz(tmp_path / "d.npz").data, small_model(), "d.npz")
    one_line(exc)


def test_model_that_returns_no_logits(tmp_path: Path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 12), np.float32), y=np.zeros(4, int))
    with pytest.raises(InstantFTError, match=r"must return \(batch, classes\) logits"):
        check_against_model(load_npz(tmp_path / "d.npz").data, nn.Flatten(0), "d.npz")
