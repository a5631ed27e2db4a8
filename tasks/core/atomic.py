"""Write-then-rename helpers so an interrupted stage never leaves a half-written file that looks whole."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it onto ``dest`` only if the block succeeds.

    The temporary file lives in the destination folder so the rename is atomic (same filesystem).
    On any exception it is removed and ``dest`` is left exactly as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Keep the destination's suffixes last: Keras insists on names ending in .keras / .weights.h5.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp" + "".join(dest.suffixes), dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


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
