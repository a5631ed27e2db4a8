"""Errors that a person is meant to read: each says what is wrong and where.

Stage entry points print a :class:`StageError`'s message instead of a traceback (see
:func:`tasks.core.cli.run_stage`). So do failures that come from a stage's environment or its inputs
rather than from its code -- a full disk, a denied permission, a path blocked by a file, a damaged
input file -- which :func:`environment_error` words as ``<what>, <where>: <cause>``. Code that reads
a file a person supplied marks the region with :func:`reading`, and code that writes an output with
:func:`writing` (tasks.core.atomic does), so the line can say which file; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Iterator

#: The word :func:`environment_error` gives a full disk: a :class:`TransientStageError`, since space may be
#: freed before the flow's next attempt.
DISK_FULL = "disk full"
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT}

#: What each errno from the environment means to a person; an OSError with another errno outside a
#: :func:`reading` / :func:`writing` region is treated as a bug.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: DISK_FULL,
    errno.EDQUOT: DISK_FULL + " (quota)",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a file where a folder belongs",
    errno.EISDIR: "a folder where a file belongs",
    errno.EEXIST: "a file where a folder belongs",
    errno.ENAMETOOLONG: "path too long",
    errno.EIO: "input/output error (the disk or its filesystem)",
}
#: Within a :func:`reading` region these mean the file is damaged or not the kind of file it should be
#: (Keras reports a model config it cannot rebuild -- a Lambda naming a function it does not know -- as
#: a TypeError).
DAMAGED_INPUT = (
    ValueError,
    KeyError,
    TypeError,
    EOFError,
    zipfile.BadZipFile,
    pickle.UnpicklingError,
    UnicodeDecodeError,
)
#: How much of a library's message the one line keeps.
_CAUSE_CHARS = 300
#: h5py reports a failed write as an OSError without an errno, the errno inside its message.
_H5PY_ERRNO = re.compile(r"errno = (\d+)")


class StageError(Exception):
    """An expected failure of a stage, with a message for a person."""

    #: The stage's exit status: 2, "fix the input and rerun" (tasks/core/cli.py).
    exit_status = 2


class TransientStageError(StageError):
    """A failure another attempt may not meet (a full disk, pretrained weights out of reach): exits 75,
    sysexits' EX_TEMPFAIL, which the Prefect flow retries; exit 2 is final."""

    exit_status = 75


class ParamsError(StageError):
    """``params.yaml`` holds a missing, mistyped or out-of-range value."""


class DownloadError(StageError):
    """The archive could not be fetched (after retries, where retrying made sense)."""


class ChecksumMismatch(DownloadError):
    """The fetched bytes do not have the digest that ``params.yaml`` promises."""


class ArchiveError(StageError):
    """The archive is not a sound CIFAR-10 "python version" tarball."""


class ValidationFailed(StageError):
    """The prepared arrays failed one or more data expectations."""


class DeviceError(StageError):
    """A GPU was required but none is visible."""


class WeightsUnavailable(TransientStageError):
    """Pretrained weights could not be fetched (no network, server down)."""


# --------------------------------------------------------------------------- the environment and inputs

_WHERE = "_stage_where"  # the attribute an exception carries once a region has named its file


@contextlib.contextmanager
def reading(path: str | os.PathLike[str], what: str = "") -> Iterator[None]:
    """Mark a region that reads ``path`` (``what`` says what it should be: "the prepared train split"),
    so a damaged or unreadable file there becomes one ``error:`` line naming it."""
    label = f"reading {os.fspath(path)}" + (f" ({what})" if what else "")
    with _region("reading", label):
        yield


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Mark a region that writes the output ``path``, so a failed write names the output."""
    with _region("writing", f"writing {os.fspath(path)}"):
        yield


@contextlib.contextmanager
def _region(kind: str, label: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not hasattr(exc, _WHERE) and not isinstance(exc, StageError):
            with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__
                setattr(exc, _WHERE, (kind, label))
        raise


def environment_error(exc: BaseException) -> StageError | None:
    """The :class:`StageError` (``<what>, <where>: <cause>``) a failure of the environment or of an input file
    stands for -- transient for a full disk; None for a bug."""
    message = _environment_message(exc)
    if message is None:
        return None
    transient = isinstance(exc, OSError) and _errno(exc) in _TRANSIENT_ERRNOS
    return (TransientStageError if transient else StageError)(message)


def _errno(exc: OSError) -> int | None:
    if exc.errno is None and (m := _H5PY_ERRNO.search(str(exc))):
        return int(m.group(1))
    return exc.errno


def _environment_message(exc: BaseException) -> str | None:
    kind, where = getattr(exc, _WHERE, (None, None))
    if isinstance(exc, OSError):
        code = _errno(exc)
        what = _ENVIRONMENT_ERRNOS.get(code) if code is not None else None
        if what is None and kind is None:
            return None
        if what is None and kind == "reading" and code is None:  # h5py: not an HDF5 file, truncated
            what = "damaged or not the right kind of file"
        elif what is None:
            what = "file not found" if code == errno.ENOENT else f"cannot {'read' if kind == 'reading' else 'write'}"
        where = where or (f"at {exc.filename}" if exc.filename else "")
        cause = f"[Errno {code}] {exc.strerror or os.strerror(code)}" if code is not None else _first_line(exc)
        return f"{what}, {where}: {cause}" if where else f"{what}: {cause}"
    if kind == "reading" and isinstance(exc, DAMAGED_INPUT):
        return f"damaged or not the right kind of file, {where}: {type(exc).__name__}: {_first_line(exc)}"
    return None


def _first_line(exc: BaseException) -> str:
    """A library's message cut to one line (Keras appends whole configs to its)."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= _CAUSE_CHARS else text[:_CAUSE_CHARS] + " ..."


def closest(word: str, choices: Iterable[object]) -> str | None:
    """The one of ``choices`` that ``word`` looks like a misspelling of, for a "did you mean" hint; None
    where none is near."""
    near = difflib.get_close_matches(word, [str(c) for c in choices], n=1)
    return near[0] if near else None
