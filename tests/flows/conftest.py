"""Fixtures for the Prefect flow tests: a real Prefect server (basic authentication on, as a team runs it),
also the API of flows called in the test process, with a process worker; a download server that misbehaves
on purpose; and helpers that read back what a flow run recorded."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.conftest import REPO, require_mark, run, subprocess_env

PREFECT = str(Path(sys.executable).parent / "prefect")
#: What a test repo needs from this checkout, besides the pipeline (PROJECT_FILES), to run the flows.
FLOW_PACKAGES = ("flows", "tools")
#: Start a command with SIGINT at its default even when pytest itself runs in the background
#: (``cmd &`` ignores SIGINT, and children inherit that): the worker stops on SIGINT.
WITH_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])",
]


# -- reading back what a run recorded ----------------------------------------------------------------

#: The auth string of each real server this session started, by API URL.
AUTH: dict[str, str] = {}


def client(api: str | None = None):
    """A sync Prefect client: for the server at ``api`` (with its auth string), else for the current
    settings (:func:`prefect_api`)."""
    from prefect.client.orchestration import SyncPrefectClient, get_client

    return SyncPrefectClient(api=api, auth_string=AUTH.get(api)) if api else get_client(sync_client=True)


def flush_logs() -> None:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)


def task_runs(flow_run_id: UUID, api: str | None = None) -> list[Any]:
    """The flow run's task runs, in the order they started."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with client(api) as c:
        runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(runs, key=lambda r: r.start_time or r.expected_start_time or r.created)


def stage_runs(flow_run_id: UUID, api: str | None = None) -> dict[str, Any]:
    """``{stage: task run}`` for the flow run's stage tasks."""
    return {r.name: r for r in task_runs(flow_run_id, api) if r.task_key.startswith("run_stage")}


def logs(flow_run_id: UUID, api: str | None = None) -> str:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    flush_logs()
    found: list[Any] = []
    with client(api) as c:
        while True:
            page = c.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(found)
            )
            found += page
            if len(page) < 200:
                break
    return "\n".join(log.message for log in found)


def artifacts(flow_run_id: UUID, api: str | None = None) -> dict[str, Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with client(api) as c:
        found = c.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a for a in found}


# -- a download server that fails when told to -------------------------------------------------------


class ArchiveServer:
    """Serves one file over HTTP on 127.0.0.1; answers 503 to its first ``fail_first`` requests."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.fail_first = 0
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                server.requests += 1
                if server.requests <= server.fail_first:
                    self.send_error(503, "try later")
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.payload)))
                self.end_headers()
                self.wfile.write(server.payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cifar-10-python.tar.gz"


@pytest.fixture
def archive_server(fixture_archive: tuple[Path, str]) -> Iterator[ArchiveServer]:
    srv = ArchiveServer(fixture_archive[0].read_bytes())
    thread = threading.Thread(target=srv.httpd.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


# -- a real Prefect server, work pool, deployments and worker -------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, first: int, grace: float) -> None:
    """Stop a process we started, by its PID: ``first`` signal, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.send_signal(first)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class PrefectServer:
    def __init__(self, home: Path, port: int) -> None:
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}/api"
        # Made up for this session, never written to a file: what server.api.auth_string is in a team setup.
        self.auth = AUTH[self.url] = f"team:{secrets.token_urlsafe(16)}"
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = subprocess_env()
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.url,
            PREFECT_API_AUTH_STRING=self.auth,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            DVC_NO_ANALYTICS="1",
            PREFECT_CLI_WRAP_LINES="false",
            COLUMNS="200",
            **extra,
        )
        return env

    def cli(self, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [PREFECT, "--no-prompt", *args], cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def client(self):
        """A sync client bound to this server."""
        return client(self.url)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1 (SQLite in a temp PREFECT_HOME), stopped by PID afterwards;
    one for the session (a start is slow), so each module deploys what it needs itself."""
    require_mark("server", "starts a Prefect server")
    server = PrefectServer(tmp_path_factory.mktemp("prefect-home"), free_port())
    with open(server.log, "w") as log:
        server.proc = subprocess.Popen(
            [*WITH_SIGINT, PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(server.port)],
            env=server.env(PREFECT_SERVER_API_AUTH_STRING=server.auth),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=server.home,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prefect server did not come up:\n{server.log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        stop(server.proc, signal.SIGTERM, 20)


@pytest.fixture(scope="session")
def prefect_api(prefect_server: PrefectServer) -> Iterator[PrefectServer]:
    """The session's real server as this process's Prefect API too, so flows called here in the test report to
    it (one server per worker: a second backend would cost its start and its background services' CPU)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server.url, PREFECT_API_AUTH_STRING: prefect_server.auth}):
        try:
            yield prefect_server
        finally:
            flush_logs()  # while the server is still up


def add_flow_files(repo: Path) -> None:
    """Put this checkout's flows/, the tools/ they use (sweeps read configs with tools.overrides) and
    prefect.yaml into a test repo and commit them. Its schedules are paused there: a test server must never
    start a nightly run of its own (a test run that spans 02:00 UTC would hand one to a test worker)."""
    for package in FLOW_PACKAGES:
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shipped = (REPO / "prefect.yaml").read_text()
    assert shipped.count("active: true") == 1, "prefect.yaml's one active schedule is the nightly's"
    (repo / "prefect.yaml").write_text(shipped.replace("active: true", "active: false"))
    run(["git", "add", *FLOW_PACKAGES, "prefect.yaml"], cwd=repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "flows"], cwd=repo)


def deploy_all(repo: Path, server: PrefectServer) -> None:
    """The ``gpu`` process pool (once per server) and ``prefect --no-prompt deploy --all`` in ``repo``."""
    if " gpu " not in server.cli("work-pool", "ls", cwd=repo).stdout:
        server.cli("work-pool", "create", "gpu", "--type", "process", cwd=repo)
    server.cli("deploy", "--all", cwd=repo)


@contextmanager
def running_worker(repo: Path, server: PrefectServer, **env: str) -> Iterator[subprocess.Popen]:
    """``prefect worker start --pool gpu`` in ``repo`` with ``env`` added to its environment, its log beside
    the repo; stopped with SIGINT (it ignores SIGTERM's intent)."""
    require_mark("server", "starts a Prefect worker")
    with open(repo.parent / "worker.log", "w") as log:
        proc = subprocess.Popen(
            [*WITH_SIGINT, PREFECT, "worker", "start", "--pool", "gpu"],
            cwd=repo,
            env=server.env(PREFECT_WORKER_QUERY_SECONDS="1", **env),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        try:
            yield proc
        finally:
            stop(proc, signal.SIGINT, 30)


@pytest.fixture
def deployed(dvc_repo: Path, prefect_server: PrefectServer) -> Path:
    """The fixture pipeline with the flows, a ``gpu`` process pool, and prefect.yaml's deployments registered."""
    add_flow_files(dvc_repo)
    deploy_all(dvc_repo, prefect_server)
    return dvc_repo


@pytest.fixture
def worker(deployed: Path, prefect_server: PrefectServer) -> Iterator[subprocess.Popen]:
    with running_worker(deployed, prefect_server) as proc:
        yield proc


def worker_log(repo: Path) -> str:
    path = repo.parent / "worker.log"
    return path.read_text()[-6000:] if path.exists() else ""


def env_with(**extra: str) -> dict[str, str]:
    env = subprocess_env()
    env.update(extra)
    return env


@pytest.fixture
def no_gpu() -> None:
    if shutil.which("nvidia-smi") is not None or os.environ.get("CUDA_VISIBLE_DEVICES"):
        pytest.skip("this machine may have a GPU")
