"""Read the CIFAR-10 "python version" tarball safely: checked members, no code run by pickles.

Every member is checked before anything is used (no absolute paths, no ``..``, no links or
device files), and the batches are read straight from the tarball into memory, so nothing is
ever written outside -- or even inside -- the working tree. The pickles are loaded by an
unpickler that knows only the three numpy globals a batch needs, so a tampered archive cannot
make ``pickle`` call a function.
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tasks.core.errors import ArchiveError

ROOT = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"
IMAGE_SHAPE = (32, 32, 3)

#: The only globals a CIFAR batch pickle references (numpy 1 and numpy 2 spellings), plus the
#: bytes constructor Python 3 writes into protocol-2 pickles (``_codecs.encode``: pure, no side effects).
_ALLOWED_GLOBALS = frozenset(
    {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


@dataclass(frozen=True)
class Cifar10:
    """The archive's contents as NHWC uint8 arrays and int labels, in the official order."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, member: str) -> None:
        super().__init__(file, encoding="bytes")
        self.member = member

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise ArchiveError(
            f"{self.member}: the pickle asks for {module}.{name}, which a CIFAR-10 batch never needs; "
            "refusing to load it (the archive may have been tampered with)"
        )


def load_pickle(data: bytes, member: str) -> Any:
    """Unpickle ``data`` allowing only numpy array reconstruction; errors name ``member``."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), member).load()
    except ArchiveError:
        raise
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise ArchiveError(f"{member}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a member that could write outside the target folder or is not a plain file or folder."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ArchiveError(f"{archive}: member '{member.name}' escapes the target folder; refusing the archive")
    if member.issym() or member.islnk():
        raise ArchiveError(f"{archive}: member '{member.name}' is a link; refusing the archive")
    if not (member.isfile() or member.isdir()):
        raise ArchiveError(f"{archive}: member '{member.name}' is a device or special file; refusing the archive")


def read_archive(path: str | Path) -> Cifar10:
    """Read and check the whole archive; raise :class:`ArchiveError` naming the first problem."""
    path = Path(path)
    if not path.is_file():
        raise ArchiveError(f"{path}: archive not found (run the download stage first)")
    wanted = {f"{ROOT}/{name}" for name in (*TRAIN_BATCHES, TEST_BATCH, META)}
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                check_member(member, path)
                if member.name in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None  # a regular file always has one
                    raw[member.name] = handle.read()
    except (tarfile.ReadError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise ArchiveError(f"{path}: not a readable .tar.gz (truncated or corrupt?): {exc}") from None
    missing = sorted(wanted - raw.keys())
    if missing:
        raise ArchiveError(f"{path}: missing member(s) {', '.join(missing)}")

    train = [_batch(raw[f"{ROOT}/{name}"], f"{ROOT}/{name}") for name in TRAIN_BATCHES]
    x_test, y_test = _batch(raw[f"{ROOT}/{TEST_BATCH}"], f"{ROOT}/{TEST_BATCH}")
    return Cifar10(
        x_train=np.concatenate([x for x, _ in train]),
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        class_names=_class_names(raw[f"{ROOT}/{META}"], f"{ROOT}/{META}"),
    )


def _batch(data: bytes, member: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch pickle -> (N, 32, 32, 3) uint8 images and (N,) uint8 labels."""
    batch = load_pickle(data, member)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ArchiveError(f"{member}: expected a dict with 'data' and 'labels'")
    pixels, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072:
        shape = getattr(pixels, "shape", None)
        raise ArchiveError(f"{member}: 'data' must be a uint8 array of shape (N, 3072), got {shape}")
    labels = np.asarray(labels)
    if labels.shape != (pixels.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ArchiveError(f"{member}: 'labels' must be {pixels.shape[0]} integers, got shape {labels.shape}")
    # Rows are planar R, G, B (each 32x32 row-major); models want channels last.
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def _class_names(data: bytes, member: str) -> tuple[str, ...]:
    meta = load_pickle(data, member)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10:
        raise ArchiveError(f"{member}: expected 'label_names' with 10 entries")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
