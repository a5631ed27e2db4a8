"""Stage ``download``: fetch the CIFAR-10 archive, verify its SHA-256, and rename it into place.

``data.url`` may be ``https://``, ``http://``, ``file://`` or a plain filesystem path (the way to
point the pipeline at a local copy on a machine without internet). The bytes stream to a temporary
file beside the destination; only when the digest matches ``data.sha256`` is it renamed into place,
so a failed or interrupted download never leaves a file that looks whole (and the temporary file of a
killed run is removed by the next, :mod:`tasks.core.atomic`). Each attempt has an overall deadline,
``data.download_deadline``: a server that trickles its bytes just fast enough for every read to beat the
socket timeout still cannot hold the stage for longer than that.

Hand-written over ``keras.utils.get_file`` or ``dvc import-url``: neither reads a plain path and a URL
alike, checks a SHA-256 before the file takes its place, and retries with backoff under our own
``error:`` messages.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from tasks.core.atomic import atomic_path
from tasks.core.cli import run_stage
from tasks.core.errors import ChecksumMismatch, DownloadError
from tasks.core.params import DataParams, load
from tasks.core.paths import ARCHIVE

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: HTTP statuses worth another try: the server or a proxy is having a bad moment.
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
#: How a failure to reach the host begins (the give-up message adds the offline hint to it).
CANNOT_CONNECT = "cannot connect"
#: What to do where the archive cannot be reached (the README's "No internet?").
OFFLINE_HINT = "set data.url to a local copy of the archive and data.sha256 to its SHA-256"


class _Transient(Exception):
    """A failure that another attempt may not repeat (connection reset, 503, short body)."""


def fetch(
    url: str,
    dest: str | Path,
    sha256: str,
    *,
    attempts: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    deadline: float = 1800.0,
) -> Path:
    """Fetch ``url`` to ``dest`` and check its SHA-256; retry transient failures with exponential backoff.

    ``timeout`` bounds each network read, ``deadline`` each attempt as a whole (checked after every read,
    so an attempt ends at most ``timeout`` seconds past it).

    Raises :class:`ChecksumMismatch` at once (no retry: the bytes arrived, they are just not the
    promised ones) and :class:`DownloadError` for permanent or exhausted failures. ``dest`` is only
    ever replaced by a verified file.
    """
    dest = Path(dest)
    expected = sha256.lower()
    for attempt in range(1, attempts + 1):
        try:
            with atomic_path(dest) as tmp:
                actual = _copy_with_digest(url, tmp, timeout, time.monotonic() + deadline)
                if actual != expected:
                    raise ChecksumMismatch(
                        f"{url}: SHA-256 mismatch: expected {expected}, got {actual}. "
                        "The file was not kept. Check data.url and data.sha256 in params.yaml."
                    )
            log.info("downloaded %s -> %s (sha256 %s)", url, dest, actual)
            return dest
        except _Transient as exc:
            if attempt == attempts:
                offline = str(exc).startswith(CANNOT_CONNECT)
                hint = f" (no network here? {OFFLINE_HINT})" if offline else ""
                raise DownloadError(f"{url}: giving up after {attempts} attempts: {exc}{hint}") from None
            delay = backoff * 2 ** (attempt - 1)
            log.warning("attempt %d/%d failed (%s); retrying in %.1f s", attempt, attempts, exc, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _copy_with_digest(url: str, tmp: Path, timeout: float, deadline: float) -> str:
    """Stream the source into ``tmp``; return the hex SHA-256 of what was written."""
    source = _local_path(url)
    if source is not None:
        if not source.is_file():
            raise DownloadError(f"{url}: no such file ({source.resolve()})")
        with open(source, "rb") as src:
            return _stream(src, tmp, source.stat().st_size, url, deadline)
    try:
        response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 -- scheme checked below
    except urllib.error.HTTPError as exc:
        if exc.code in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Transient(f"{CANNOT_CONNECT}: {reason}") from None
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        try:
            digest = _stream(response, tmp, total, url, deadline)
        except _Transient:
            raise
        except (TimeoutError, ConnectionError, OSError) as exc:
            raise _Transient(f"connection lost mid-transfer: {exc}") from None
        received = tmp.stat().st_size
        if total is not None and received != total:
            raise _Transient(f"truncated body: got {received} of {total} bytes")
        return digest


def _local_path(url: str) -> Path | None:
    """The filesystem path behind a ``file://`` URL or a plain path; None for http(s)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # plain path (or a Windows drive letter)
        return Path(url)
    raise DownloadError(f"{url}: unsupported scheme '{parsed.scheme}' (use https://, http://, file:// or a path)")


def _stream(src: BinaryIO, tmp: Path, total: int | None, label: str, deadline: float) -> str:
    digest = hashlib.sha256()
    budget = deadline - time.monotonic()
    with (
        open(tmp, "wb") as out,
        tqdm(total=total, unit="B", unit_scale=True, desc=Path(label).name, file=sys.stderr, mininterval=2.0) as bar,
    ):
        # read1: at most one read of the source per chunk, so the deadline is looked at between reads
        # even when the bytes come one at a time (read() would wait for a whole chunk).
        while chunk := src.read1(CHUNK):  # type: ignore[attr-defined]
            digest.update(chunk)
            out.write(chunk)
            bar.update(len(chunk))
            if time.monotonic() > deadline:
                got = f"{bar.n} of {total} bytes" if total else f"{bar.n} bytes"
                raise _Transient(
                    f"the attempt passed its deadline of {budget:.0f} s (data.download_deadline) with {got} "
                    "received; the server is too slow"
                )
    return digest.hexdigest()


def main() -> None:
    params = load(DataParams)
    fetch(
        params.url,
        ARCHIVE,
        params.sha256,
        attempts=params.download_attempts,
        backoff=params.download_backoff,
        deadline=params.download_deadline,
    )


if __name__ == "__main__":
    run_stage(main)
