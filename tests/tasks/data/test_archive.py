"""Reading the archive: sound fixture archives load; every kind of bad archive is refused clearly."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tasks.core.errors import ArchiveError
from tasks.data.archive import read_archive
from tests.cifar_archive import make_archive


def test_reads_fixture_archive(fixture_archive: tuple[Path, str]) -> None:
    data = read_archive(fixture_archive[0])
    assert data.x_train.shape == (300, 32, 32, 3) and data.x_train.dtype == np.uint8
    assert data.x_test.shape == (100, 32, 32, 3)
    assert data.y_train.shape == (300,) and set(data.y_train.tolist()) == set(range(10))
    assert data.class_names[0] == "airplane" and len(data.class_names) == 10


def test_planar_rows_become_channels_last(tmp_path: Path) -> None:
    """Row = 1024 red, 1024 green, 1024 blue; the loader must put them in the last axis."""
    from tests.cifar_archive import make_batch

    batch = make_batch(10, np.random.default_rng(0), "b")
    planar = batch[b"data"]
    path = tmp_path / "a.tar.gz"
    make_archive(path, replace={f"data_batch_{i}": pickle.dumps(batch, protocol=2) for i in range(1, 6)})
    x = read_archive(path).x_train
    assert x[0, 0, 0, 0] == planar[0, 0]  # red of pixel (0, 0)
    assert x[0, 0, 0, 1] == planar[0, 1024]  # green of pixel (0, 0)
    assert x[0, 0, 1, 2] == planar[0, 2048 + 1]  # blue of pixel (0, 1)


def test_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"<html>this is an error page, not an archive</html>")
    with pytest.raises(ArchiveError, match="not a readable .tar.gz"):
        read_archive(path)


def test_truncated_archive(tmp_path: Path, fixture_archive: tuple[Path, str]) -> None:
    path = tmp_path / "a.tar.gz"
    data = fixture_archive[0].read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        read_archive(path)


def test_missing_batch(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    make_archive(path, skip="data_batch_3")
    with pytest.raises(ArchiveError, match="missing member.*data_batch_3"):
        read_archive(path)


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 4, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_member("cifar-10-batches-py/../../evil.sh"), "escapes the target folder"),
        (_member("/etc/evil"), "escapes the target folder"),
        (_member("cifar-10-batches-py/link", tarfile.SYMTYPE, link="/etc/passwd"), "is a link"),
        (_member("cifar-10-batches-py/hard", tarfile.LNKTYPE, link="cifar-10-batches-py/test_batch"), "is a link"),
        (_member("cifar-10-batches-py/dev", tarfile.CHRTYPE), "device or special file"),
        (_member("cifar-10-batches-py/fifo", tarfile.FIFOTYPE), "device or special file"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, member: tarfile.TarInfo, message: str) -> None:
    path = tmp_path / "a.tar.gz"
    make_archive(path, extra=[member])
    with pytest.raises(ArchiveError, match=message):
        read_archive(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"], "nothing may be extracted"


class _Exploit:
    """Unpickling this would call os.system -- the restricted unpickler must refuse."""

    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("touch PWNED",))


def test_pickle_that_calls_a_function_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "a.tar.gz"
    make_archive(path, replace={"data_batch_2": pickle.dumps({b"data": _Exploit()}, protocol=2)})
    with pytest.raises(ArchiveError, match=r"data_batch_2: the pickle asks for (posix|os)\.system"):
        read_archive(path)
    assert not (tmp_path / "PWNED").exists()


def test_batch_with_wrong_shape(tmp_path: Path) -> None:
    bad = {b"data": np.zeros((10, 100), np.uint8), b"labels": list(range(10))}
    path = tmp_path / "a.tar.gz"
    make_archive(path, replace={"test_batch": pickle.dumps(bad, protocol=2)})
    with pytest.raises(ArchiveError, match=r"test_batch: 'data' must be a uint8 array of shape \(N, 3072\)"):
        read_archive(path)


def test_garbage_pickle(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    make_archive(path, replace={"data_batch_1": b"\x80\x02not a pickle at all"})
    with pytest.raises(ArchiveError, match="data_batch_1: not a readable pickle"):
        read_archive(path)
