"""Where dataset files come from: a registry of the official files and their checksums.

Files are looked for, in order, in ``--data-dir``, ``$INSTANTFT_DATA``, the user cache directory
and the copies bundled in this package (the MNIST and Fashion-MNIST test splits). A file found
is verified against its checksum every time it is used (hashing is cheaper than parsing, and a
file can change in place with its size and mtime restored). A missing file is downloaded with
pooch from each of the dataset's official mirrors in turn into the cache directory (pooch
downloads to a temporary name, verifies, then renames, so no half-written file is ever left),
with a rich progress bar on a terminal; with ``INSTANTFT_OFFLINE=1`` or no network the error
names the missing files, what failed at each mirror, and where to put the files.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from instantft.errors import InstantFTError
from instantft.fileio import sha256_file

BUNDLED_DIR = Path(__file__).parent / "bundled"


@dataclass(frozen=True)
class DataFile:
    """One official file: its path relative to a data directory, checksum and download URLs."""

    relpath: str
    known_hash: str  # "sha256:..." or, where only an MD5 is published (SVHN), "md5:..."
    urls: tuple[str, ...]


_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FMNIST_MIRRORS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
_SVHN_MIRRORS = ("http://ufldl.stanford.edu/housenumbers/",)


def _files(folder: str, mirrors: tuple[str, ...], hashes: dict[str, str]) -> dict[str, DataFile]:
    return {name: DataFile(f"{folder}/{name}", h, tuple(m + name for m in mirrors)) for name, h in hashes.items()}


REGISTRY: dict[str, dict[str, DataFile]] = {
    "mnist": _files(
        "mnist",
        _MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "sha256:440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "train-labels-idx1-ubyte.gz": "sha256:3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "t10k-images-idx3-ubyte.gz": "sha256:8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "t10k-labels-idx1-ubyte.gz": "sha256:f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        },
    ),
    "fmnist": _files(
        "fashion-mnist",
        _FMNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "sha256:3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "train-labels-idx1-ubyte.gz": "sha256:a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "t10k-images-idx3-ubyte.gz": "sha256:346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "t10k-labels-idx1-ubyte.gz": "sha256:67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        },
    ),
    # SVHN publishes no SHA-256; these MD5s are the ones torchvision and the SVHN mirrors use.
    "svhn": _files(
        "svhn",
        _SVHN_MIRRORS,
        {
            "train_32x32.mat": "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "md5:eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "md5:a93ce644f1a588dc4d68dda5feec44a7",
        },
    ),
}


def cache_dir() -> Path:
    """The per-user cache directory that downloads go to."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("instantft")) / "data"


def search_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The directories searched, in order."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir))
    env = os.environ.get("INSTANTFT_DATA")
    if env:
        dirs.append(Path(env))
    dirs.append(cache_dir())
    dirs.append(BUNDLED_DIR)
    return dirs


def existing_files(dataset: str, data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Every file of ``dataset`` present in the search directories: a run's inputs, which its
    outputs must never replace (``fileio.ensure_writable(..., inputs=...)``)."""
    out = []
    for d in search_dirs(data_dir):
        for name, spec in REGISTRY.get(dataset, {}).items():
            out += [p for p in (d / spec.relpath, d / name) if p.is_file()]
    return out


def _check_readable_dir(d: Path) -> None:
    if d.exists() and not os.access(d, os.R_OK | os.X_OK):
        raise InstantFTError(f"{d}: data directory is not readable (check its permissions)")


def _digest(path: Path, algo: str) -> str:
    if algo == "sha256":
        return sha256_file(path)
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, known_hash: str) -> None:
    """Raise a one-line error when ``path`` does not match its published checksum."""
    algo, expected = known_hash.split(":", 1)
    try:
        got = _digest(path, algo)  # every time: no cache keyed on what a tamperer can restore
    except OSError as exc:
        raise InstantFTError(f"{path}: cannot read file ({exc.strerror})") from None
    if got != expected:
        raise InstantFTError(
            f"{path}: checksum mismatch (expected {known_hash}, got {algo}:{got}); "
            "the file is corrupt or not the official one: delete it and fetch it again"
        )


def locate(
    dataset: str, names: list[str], data_dir: str | os.PathLike[str] | None = None, download: bool = True
) -> dict[str, Path]:
    """Find (or, with ``download``, fetch) and verify each named file of ``dataset``; return name -> path."""
    if dataset not in REGISTRY:
        raise InstantFTError(f"unknown dataset {dataset!r}; valid: {', '.join(REGISTRY)}")
    dirs = search_dirs(data_dir)
    for d in dirs[:-1]:
        _check_readable_dir(d)
    found: dict[str, Path] = {}
    missing: list[DataFile] = []
    for name in names:
        spec = REGISTRY[dataset][name]
        for d in dirs:
            if (d / spec.relpath).is_file():
                verify(d / spec.relpath, spec.known_hash)
                found[name] = d / spec.relpath
            elif (d / name).is_file():
                # a flat directory: MNIST and Fashion-MNIST share file names, so a file that does not
                # match is another dataset's, not a corrupt one - keep looking
                try:
                    verify(d / name, spec.known_hash)
                    found[name] = d / name
                except InstantFTError:
                    continue
            if name in found:
                break
        else:
            missing.append(spec)
    if missing and not download:
        names_missing = ", ".join(spec.relpath for spec in missing)
        raise InstantFTError(f"missing data files {names_missing} (looked in {', '.join(map(str, dirs[:-1]))})")
    for spec in missing:
        found[Path(spec.relpath).name] = _download(spec, dirs)
    return found


class _RichBar:
    """The progress-bar object pooch accepts (``total``, ``update``, ``reset``, ``close``),
    drawn with rich: pooch's own bar needs tqdm, which is not a dependency."""

    def __init__(self, label: str) -> None:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self._progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                                  transient=True)
        self._task = self._progress.add_task(label, total=None)
        self._progress.start()

    @property
    def total(self) -> float | None:
        return self._progress.tasks[0].total

    @total.setter
    def total(self, value: float | None) -> None:
        self._progress.update(self._task, total=value or None)

    def update(self, n: int) -> None:
        self._progress.advance(self._task, n)

    def reset(self) -> None:
        self._progress.reset(self._task)

    def close(self) -> None:
        self._progress.stop()


#: a pooch temp file (``tmpXXXXXXXX`` in the download directory) older than this belongs to a
#: download that was killed: removed before the next download there
STALE_DOWNLOAD_SECONDS = 3600


def clean_stale_downloads(target: Path) -> list[Path]:
    """Remove what killed downloads left in ``target`` (pooch cleans up on errors, not on SIGKILL)."""
    import re
    import time

    removed: list[Path] = []
    if not target.is_dir():
        return removed
    for p in target.iterdir():
        try:
            old = time.time() - p.stat().st_mtime > STALE_DOWNLOAD_SECONDS
            if re.fullmatch(r"tmp[a-z0-9_]{8}", p.name) and p.is_file() and old:
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def _download(spec: DataFile, dirs: list[Path]) -> Path:
    """Fetch ``spec`` from each mirror in turn; the error lists what failed at every one."""
    where = ", ".join(str(d / spec.relpath) for d in dirs[:-1])

    def fail(why: str) -> InstantFTError:
        return InstantFTError(
            f"missing data file {spec.relpath} and it could not be downloaded ({why}); "
            f"put it at one of: {where} (or pass --data-dir)"
        )

    if os.environ.get("INSTANTFT_OFFLINE", "") not in ("", "0"):
        raise fail("INSTANTFT_OFFLINE is set")
    import pooch

    target = cache_dir() / Path(spec.relpath).parent
    clean_stale_downloads(target)
    failures: list[str] = []
    for url in spec.urls:
        bar: _RichBar | bool = _RichBar(Path(spec.relpath).name) if sys.stderr.isatty() else False
        try:
            path = pooch.retrieve(
                url, known_hash=spec.known_hash, fname=Path(spec.relpath).name, path=target, progressbar=bar
            )
            return Path(path)
        except Exception as exc:  # hash mismatch (ValueError), network or disk errors: next mirror
            first = str(exc).splitlines()[0] if str(exc) else ""
            mismatch = isinstance(exc, ValueError) and "hash" in first.lower()
            kind = "checksum mismatch" if mismatch else type(exc).__name__
            failures.append(f"{url}: {kind}: {first[:200]}")
        finally:
            if isinstance(bar, _RichBar):
                bar.close()
    raise fail("; ".join(failures) or "no download URL known")
