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
_FAN_MIRRORS = ("https://github.com/matutani/cooling-fan/raw/main/DATA/",)


_FAN_SHA256 = {
    "12cm_h_normal_noisy.zip": "sha256:27a7a76beb1f421fe424b37ab61fcd997e2f01af6d3599695166fd2dba937b79",
    "12cm_h_normal_silentA.zip": "sha256:37126a469ccd94d497070dd4446a78dd031ff2337252d4281cb6ae52930b7505",
    "12cm_h_normal_silentB.zip": "sha256:be46b1e94ad0bd325da1b1de900ed646b24f234537526edf07fc11a84f826939",
    "12cm_hmlo_damage1_noisy_1.zip": "sha256:7795fd2741062d5c51ffb4b01927ca7ea4d5352eb6b6f1efc65c1c2f8007be0d",
    "12cm_hmlo_damage1_noisy_2.zip": "sha256:b268d5b8cc2b742f60a01ee765267b0084d50a29ccc358adf30d379cb2acfd55",
    "12cm_hmlo_damage1_silentA_1.zip": "sha256:eb41e3d247dccf1ba26eea1717f35ce142d0f704817eb30233bb0d58d701715d",
    "12cm_hmlo_damage1_silentA_2.zip": "sha256:3c00a833387b05ccf2558d37fa564e747dcfa0bf0719a9ca3747e487ec2b0eb1",
    "12cm_hmlo_damage1_silentB_1.zip": "sha256:9c6d20cb1362d176b897b4067a3914b10a364e8e0dffbbd9207384f7957cf9b9",
    "12cm_hmlo_damage1_silentB_2.zip": "sha256:2784a5e76710e906bc74b02cf0cde28de2047ff63d93342fe61c540cc28501eb",
    "12cm_hmlo_damage2_noisy_1.zip": "sha256:9cce3d67746930fbc31cb332ff70ced1a43f23aefbc36da924c4e12650ba4983",
    "12cm_hmlo_damage2_noisy_2.zip": "sha256:9fee65602474a321328ba4103135bf42de47b5f14eac150a7ab4b451679d37c1",
    "12cm_hmlo_damage2_silentA_1.zip": "sha256:84f31ef22fa241fae8cd96dcb251ac9b5be4297739288bcdf1feca1b8f8fb03d",
    "12cm_hmlo_damage2_silentA_2.zip": "sha256:01ef93c3e1e7473b218011c2ecfd89b16908732b7dae281aa8581b76c00bff2c",
    "12cm_hmlo_damage2_silentB_1.zip": "sha256:756bbcb86107d747ef530e4fd1cf92f084f832779e8d90d4918938180f94eece",
    "12cm_hmlo_damage2_silentB_2.zip": "sha256:49d5b6bba0ed63c9f2bb06012ef505568db809dca47b23cffddf1661526b0a4b",
    "12cm_hmlo_normal_noisy_1.zip": "sha256:8266c411194f6aa71b814d1c1c43c141425c0a825c7600e0e943864eaa17a285",
    "12cm_hmlo_normal_noisy_2.zip": "sha256:3ea395d09681c054de21bd6c94161bc92be268df5e1f1630de2dce76d788b7e8",
    "12cm_hmlo_normal_silentA_1.zip": "sha256:5a2b0281bf97e0849001c4cea456b2bb670a463ce1acacc22288d55cdf817f0f",
    "12cm_hmlo_normal_silentA_2.zip": "sha256:c70961379f2020b76ad48d575703278f238b6f6b4a11cf6cc28f5e447fe002ad",
    "12cm_hmlo_normal_silentB_1.zip": "sha256:a7ef8a52e9b80ff32550d5491b1594166a484fc5dfc7a614f5a757964ce62217",
    "12cm_hmlo_normal_silentB_2.zip": "sha256:801f826ae209a15fa4a4f2bceb851455a101604c7626f4dc853e0c7717ef6fbb",
    "12cm_l_normal_noisy.zip": "sha256:957d3186a3492244ae0856a90febcae095f534f5f1f0a42b9a7a158ee5f70c70",
    "12cm_l_normal_silentA.zip": "sha256:c07ab515e3844e247cd966100ab5d3f62f473a5a899f6f67adc4a7ac158b23ac",
    "12cm_l_normal_silentB.zip": "sha256:c2c9723614d1eb3359c65181530b2c6766725d4b6fdd3025cc493ca40f73a330",
    "12cm_m_normal_noisy.zip": "sha256:4a42f093de248a8e25e3b36fb1fe042b88098bed7ec3ed0946ce644e9156854a",
    "12cm_m_normal_silentA.zip": "sha256:f0a6ca35b2cf72c4da5b5a6e13d25e2b430554031f09427eedbd552ac7900b0f",
    "12cm_m_normal_silentB.zip": "sha256:e2c3570975eeef8a834e3a7de02f863624007394bf5626677578f5def15519ab",
    "12cm_o_normal_noisy.zip": "sha256:f8fcacdd99238d57224298ea009b7d3a1e6bf1aedd60779b0b34fa853df19539",
    "12cm_o_normal_silentA.zip": "sha256:7202a8ee1c30cd791c68aec4339d9d3bd7232b6228eba87ffd24435682ea6117",
    "12cm_o_normal_silentB.zip": "sha256:5493d2643f258002029f46819d39ef210b971704094e6865daf66ccd6f6a1870",
    "14cm_h_normal_silentA.zip": "sha256:0faee6e21937ae70e3a98f66e6f9cb7691c890f00365fa0e6955cd63345e6bbd",
    "14cm_hmlo_normal_silentA_1.zip": "sha256:1324e46f80444fd4b577947bbe4e45c2fa082fa869f083bd1ac0ae00a518bedb",
    "14cm_hmlo_normal_silentA_2.zip": "sha256:e3c7194cf7bf56b5c417ae9adfe2d60f91ff6713b9faf55760c46101f2db3b04",
    "14cm_l_normal_silentA.zip": "sha256:3e349e9f4e3aff5e7e3a405a27861ef3855cc480686441cdac7ab788d10e9b25",
    "14cm_m_normal_silentA.zip": "sha256:3ced1ecbb7212e39e4c82dbc5360022205193ffd8871a7d6d65b0b974f01dfd3",
    "14cm_o_normal_silentA.zip": "sha256:001741bc24aa22d2e1903549922aa3e1232fc511653f5cdb52b04b2ae892be5a",
    "8cm_h_normal_silentA.zip": "sha256:e2839be6c97051f2a51e0c188e413ecd5a5fdadae49eeaa7059f9a3a91c3562e",
    "8cm_hmlo_normal_silentA_1.zip": "sha256:662b9ace503fd01e2a50ba7420509aadaae568caddea9842b2d907d3bb300d9a",
    "8cm_hmlo_normal_silentA_2.zip": "sha256:43335af03dc8386533d52ec3902344b03d4d4a8a105ac858a1a6fd4398599590",
    "8cm_l_normal_silentA.zip": "sha256:4cb877c2dbd8068d6ed55e1f625f5a216d0f68cb3cdfbaa5116ff35279355cbc",
    "8cm_m_normal_silentA.zip": "sha256:a4decefd8cf4cca2e902e334e48ef8dec48cf363bd3a98a290785b738f3ee6b7",
    "8cm_o_normal_silentA.zip": "sha256:3b32200c687af27e7a1ec4a3c5d24da72ef278d7550368073ea0ae77db163b20",
}


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
    # the Skip2-LoRA authors' cooling-fan vibration spectra (matutani/cooling-fan, no licence stated:
    # fetched from GitHub, never bundled); names <size>_<speed>_<type>_<room>[_<take>].zip
    "fan": _files("cooling-fan", _FAN_MIRRORS, _FAN_SHA256),
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
