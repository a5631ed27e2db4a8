"""Write-then-rename helpers so an interrupted stage never leaves a half-written file that looks whole.

Every output goes to a hidden temporary name beside it (``.<name>.<pid>.<random>.tmp<suffixes>``) and
is renamed into place once complete. Inside :func:`together` the renames wait until the whole block has
succeeded, so a stage's outputs change together or not at all: a failure half-way leaves every one of
them as the previous run left it. A temporary file whose process is gone (the stage was killed) is
removed the next time that output is written.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import writing

#: The open :func:`together` block's renames (temporary file, destination) and removals, in order.
_pending: contextvars.ContextVar[list[tuple[Path, Path | None]] | None] = contextvars.ContextVar(
    "atomic_pending", default=None
)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds
    (inside :func:`together`: only once that whole block has succeeded).

    The temporary file lives in the destination folder so the rename is atomic (same filesystem).
    On any exception it is removed and ``dest`` is left exactly as it was.
    """
    dest = Path(dest)
    with writing(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(dest)
        # Keep the destination's suffixes last: Keras insists on names ending in .keras / .weights.h5.
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp" + "".join(dest.suffixes), dir=dest.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        pending = _pending.get()
        try:
            yield tmp
            # mkstemp creates 0600; give the file the permissions a plain open() would have.
            os.chmod(tmp, 0o666 & ~_umask())
            if pending is None:
                os.replace(tmp, dest)
            else:
                pending.append((tmp, dest))
        finally:
            if pending is None or (tmp, dest) not in pending:
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def together() -> Iterator[None]:
    """Hold back the renames of every :func:`atomic_path` in the block (and :func:`discard`'s removals)
    until it succeeds; on failure remove the temporary files and leave every destination untouched."""
    if _pending.get() is not None:  # already inside one: the outer block commits
        yield
        return
    pending: list[tuple[Path, Path | None]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        for tmp, dest in pending:
            if dest is not None:
                tmp.unlink(missing_ok=True)
        raise
    finally:
        _pending.reset(token)
    try:
        for path, dest in pending:
            if dest is None:
                path.unlink(missing_ok=True)
            else:
                with writing(dest):
                    os.replace(path, dest)
    finally:  # a rename that failed (the disk went away) leaves no temporary file behind
        for path, dest in pending:
            if dest is not None:
                path.unlink(missing_ok=True)


def discard(path: str | os.PathLike[str]) -> None:
    """Remove the file ``path`` -- inside :func:`together`, only once the block has succeeded."""
    pending = _pending.get()
    if pending is None:
        Path(path).unlink(missing_ok=True)
    else:
        pending.append((Path(path), None))


def require_free_space(folder: str | os.PathLike[str], nbytes: int) -> None:
    """Raise the OSError a full disk would (ENOSPC) unless ``folder``'s filesystem has ``nbytes`` free:
    some writers (h5py) can crash the process outright when the disk fills under them."""
    with writing(folder):
        free = shutil.disk_usage(folder).free
        if free < nbytes:
            raise OSError(
                errno.ENOSPC, f"No space left on device (need about {nbytes / 1e6:.1f} MB, {free / 1e6:.1f} MB free)"
            )


def remove_stale_temporaries(dest: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files of ``dest`` whose writing process no longer runs; return them."""
    dest = Path(dest)
    removed = []
    for tmp in dest.parent.glob(f".{dest.name}.*.tmp*"):
        pid = tmp.name[len(dest.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    """Atomically write ``text`` (UTF-8) to ``dest``."""
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(dest: str | os.PathLike[str], data: Any) -> None:
    """Atomically write ``data`` as indented JSON (the form DVC metrics and people both read)."""
    write_text(dest, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def save_arrays(dest: str | os.PathLike[str], **arrays: np.ndarray) -> None:
    """Atomically save named arrays as an uncompressed ``.npz`` (fast to load, memory-mappable members)."""
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays sneak into metrics dicts; JSON has no type for them.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
