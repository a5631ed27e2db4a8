"""Stage download: a real HTTP server on 127.0.0.1 stands in for the internet."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tasks.core.errors import ChecksumMismatch, DownloadError
from tasks.download import fetch
from tests.conftest import REPO, run, set_params, subprocess_env

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    """A tiny HTTP server whose misbehaviour the test sets: fail the first N requests, 404, truncate."""

    def __init__(self) -> None:
        self.fail_first = 0
        self.status = 200
        self.truncate = False
        self.trickle = 0.0  # seconds between single bytes: a mirror that is slow but never silent for long
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                server.requests += 1
                if server.requests <= server.fail_first:
                    self.send_error(503, "try later")
                    return
                if server.status != 200:
                    self.send_error(server.status)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                if server.trickle:
                    try:
                        for i in range(len(PAYLOAD)):
                            self.wfile.write(PAYLOAD[i : i + 1])
                            self.wfile.flush()
                            time.sleep(server.trickle)
                    except OSError:  # the client gave up
                        pass
                    return
                self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2] if server.truncate else PAYLOAD)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_http_success(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "raw" / "a.tar.gz"
    fetch(server.url, dest, PAYLOAD_SHA, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["a.tar.gz"]


def test_transient_failures_are_retried(server: Server, tmp_path: Path) -> None:
    server.fail_first = 2
    dest = tmp_path / "a.tar.gz"
    fetch(server.url, dest, PAYLOAD_SHA, attempts=4, backoff=0.01)
    assert server.requests == 3
    assert dest.read_bytes() == PAYLOAD


def test_gives_up_after_attempts(server: Server, tmp_path: Path) -> None:
    server.fail_first = 99
    with pytest.raises(DownloadError, match="giving up after 3 attempts.*503"):
        fetch(server.url, tmp_path / "a.tar.gz", PAYLOAD_SHA, attempts=3, backoff=0.01)
    assert server.requests == 3
    assert leftovers(tmp_path) == []


def test_an_unreachable_host_gives_up_with_the_offline_setting(tmp_path: Path) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = closed.server_address[1]
    closed.server_close()  # nothing listens there now: every attempt is refused
    with pytest.raises(DownloadError) as raised:
        fetch(f"http://127.0.0.1:{port}/cifar.tar.gz", tmp_path / "a.tar.gz", PAYLOAD_SHA, attempts=2, backoff=0.01)
    said = str(raised.value)
    assert "giving up after 2 attempts: cannot connect" in said and "set data.url to a local copy" in said, said
    assert leftovers(tmp_path) == []


def test_404_fails_at_once(server: Server, tmp_path: Path) -> None:
    server.status = 404
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url, tmp_path / "a.tar.gz", PAYLOAD_SHA, attempts=5, backoff=0.01)
    assert server.requests == 1, "a 404 is permanent and must not be retried"
    assert leftovers(tmp_path) == []


def test_digest_mismatch_names_both_digests_and_keeps_nothing(server: Server, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        fetch(server.url, tmp_path / "a.tar.gz", wrong, backoff=0.01)
    assert wrong in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert server.requests == 1
    assert leftovers(tmp_path) == []


def test_truncated_body_is_retried_then_reported(server: Server, tmp_path: Path) -> None:
    server.truncate = True
    with pytest.raises(DownloadError, match="truncated"):
        fetch(server.url, tmp_path / "a.tar.gz", PAYLOAD_SHA, attempts=2, backoff=0.01)
    assert server.requests == 2
    assert leftovers(tmp_path) == []


def test_failed_download_keeps_existing_good_file(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.tar.gz"
    dest.write_bytes(b"the good file")
    server.status = 404
    with pytest.raises(DownloadError):
        fetch(server.url, dest, PAYLOAD_SHA, backoff=0.01)
    assert dest.read_bytes() == b"the good file"


@pytest.mark.parametrize("form", ["plain", "file_url"])
def test_local_path_and_file_url(tmp_path: Path, form: str) -> None:
    src = tmp_path / "src" / "archive.tar.gz"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    url = str(src) if form == "plain" else src.as_uri()
    dest = tmp_path / "out" / "a.tar.gz"
    fetch(url, dest, PAYLOAD_SHA)
    assert dest.read_bytes() == PAYLOAD


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="no such file"):
        fetch(str(tmp_path / "nope.tar.gz"), tmp_path / "a.tar.gz", PAYLOAD_SHA)


def test_unsupported_scheme(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="unsupported scheme 'ftp'"):
        fetch("ftp://example.invalid/a.tar.gz", tmp_path / "a.tar.gz", PAYLOAD_SHA)


def test_stage_entry_point_reports_mismatch_without_traceback(server: Server, tmp_path: Path) -> None:
    """`python -m tasks.download` as DVC runs it: a one-line error, exit 2, no file."""
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "params.yaml").write_text((repo / "params.yaml").read_text())
    set_params(tmp_path, data={"url": server.url, "sha256": "f" * 64})
    proc = run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(repo)!r}); "
            "from tasks.core.cli import run_stage; from tasks.download import main; run_stage(main)",
        ],
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "SHA-256 mismatch" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "data/raw/cifar-10-python.tar.gz").exists()
    assert leftovers(tmp_path / "data/raw") == []


def download_stage(work: Path, **data: object) -> subprocess.Popen[str]:
    """``python -m tasks.download`` in ``work`` with this checkout's params.yaml and ``data`` changed."""
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(work, data=data)
    env = subprocess_env() | {"PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tasks.download"], cwd=work, env=env, text=True, stderr=subprocess.PIPE
    )


def test_trickling_server_meets_the_deadline(server: Server, tmp_path: Path) -> None:
    """One byte every 50 ms beats any per-read timeout; the attempt's deadline still ends it."""
    server.trickle = 0.05
    with pytest.raises(DownloadError, match=r"deadline of 1 s \(data.download_deadline\)"):
        fetch(server.url, tmp_path / "a.tar.gz", PAYLOAD_SHA, attempts=1, timeout=5, deadline=1.0)
    assert leftovers(tmp_path) == []


def test_stage_deadline_is_one_line(server: Server, tmp_path: Path) -> None:
    server.trickle = 0.05
    proc = download_stage(tmp_path, url=server.url, sha256=PAYLOAD_SHA, download_attempts=1, download_deadline=1)
    _, err = proc.communicate(timeout=60)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    print(errors, "exit", proc.returncode)
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in err
    assert "giving up after 1 attempts" in errors[0] and "deadline of 1 s (data.download_deadline)" in errors[0]


def test_killed_download_leaves_no_temporary_file_for_the_next_run(server: Server, tmp_path: Path) -> None:
    server.trickle = 0.01
    raw = tmp_path / "data/raw"
    proc = download_stage(tmp_path, url=server.url, sha256=PAYLOAD_SHA, download_attempts=1)
    deadline = time.monotonic() + 60
    while not leftovers(raw) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    [temporary] = leftovers(raw)
    assert temporary.startswith(".cifar-10-python.tar.gz."), "the kill left the hidden temporary file"
    server.trickle = 0.0
    proc = download_stage(tmp_path, url=server.url, sha256=PAYLOAD_SHA, download_attempts=1)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert leftovers(raw) == ["cifar-10-python.tar.gz"]
