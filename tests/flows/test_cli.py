"""The flows' command lines given bad input: one ``error:`` line, exit status 2, no traceback, and the
Prefect run still recorded as Failed (on the session's real Prefect server)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from flows.cli import INTERRUPTED, INTERRUPTED_LINE, error_line, run_flow
from flows.pipeline import pipeline
from flows.stages import DeterministicFailure, TransientFailure
from tests.conftest import REPO
from tests.flows.conftest import PrefectServer, client


def test_the_error_line_is_the_stages_own_where_there_is_one() -> None:
    from prefect.states import Failed

    state = Failed(message="Flow run encountered an exception: RuntimeError: boom")
    refused = DeterministicFailure("plan", ["error: unknown stage(s) 'x'", "error: another"])
    assert error_line(refused, state) == "error: unknown stage(s) 'x'"
    lost = TransientFailure("stage 'download'", [], exit_code=-9)
    assert error_line(lost, state) == f"error: {lost.describe()}"
    assert error_line(None, state) == "error: RuntimeError: boom"


def last_flow_run_state(api: str):
    from prefect.client.schemas.sorting import FlowRunSort

    with client(api) as c:
        [latest] = c.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
    return latest.state


@pytest.mark.server
@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--stages", "bogus"], "error: unknown stage(s) 'bogus'; the pipeline has: download, preprocess"),
        (["-S", "data.nokey=3"], "error: could not override 'data.nokey' in params.yaml: no such key"),
    ],
)
def test_python_m_flows_pipeline_refuses_bad_input_in_one_line(
    args: list[str], error: str, dvc_repo: Path, prefect_api: PrefectServer
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--repo-dir", str(dvc_repo), "--no-serialize", *args],
        cwd=REPO,
        env=prefect_api.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and done.stderr.rstrip().splitlines()[-1].startswith(error), done.stderr
    state = last_flow_run_state(prefect_api.url)
    assert state.is_failed() and error.removeprefix("error: ") in state.message, state
    assert not (dvc_repo / "data").exists()  # refused before any stage ran


@pytest.mark.server
def test_the_commands_keep_analytics_off_unless_the_environment_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, prefect_api: PrefectServer
) -> None:
    """As ``make`` does: a user who runs ``python -m flows.pipeline`` outside it gets no analytics either,
    from the temporary Prefect server included."""
    from prefect import flow

    @flow
    def nothing() -> None:
        return None

    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "0")  # a choice of the user's own
    state, status = run_flow(nothing)
    assert state.is_completed() and status == 0
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and os.environ["DO_NOT_TRACK"] == "0"


@pytest.mark.server
@pytest.mark.e2e
def test_ctrl_c_stops_the_command_in_one_line_and_the_next_run_goes_on_from_there(
    dvc_repo: Path, tmp_path: Path, prefect_api: PrefectServer
) -> None:
    """Ctrl-C at a terminal mid-validate, under the temporary Prefect server a command starts without
    ``PREFECT_API_URL``: SIGINT reaches the whole foreground process group -- the flow, DVC, the stage and
    that server. The command ends at once with one line; the next run skips what finished and runs the rest."""
    home = tmp_path / "prefect-home"
    home.mkdir()
    # A copy of the session server's database: already migrated, the temporary server starts in half the time.
    with (
        closing(sqlite3.connect(prefect_api.home / "prefect.db")) as db,
        closing(sqlite3.connect(home / "prefect.db")) as copy,
    ):
        db.backup(copy)
    env = {k: v for k, v in prefect_api.env().items() if k not in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.pipeline", "--repo-dir", str(dvc_repo), "--stages", "validate", "--no-serialize"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A terminal's foreground job: a process group of its own, SIGINT not ignored (as it is in a
        # background job, which a test runner may be).
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "Running stage 'validate'" in line:
                break
        else:
            pytest.fail("validate never started:\n" + "".join(seen[-40:]))
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = "".join(seen) + rest
    assert proc.returncode == INTERRUPTED, out[-3000:]
    lines = [line for line in out.splitlines() if "Stopping temporary server" not in line]  # Prefect's, at exit
    assert lines[-1] == INTERRUPTED_LINE, out[-3000:]
    assert "Traceback" not in out and "Retry" not in out, out[-3000:]
    assert "Finished in state Crashed" in out  # recorded on the temporary server before it stopped
    lock = yaml.safe_load((dvc_repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "preprocess"}

    state = pipeline(repo_dir=str(dvc_repo), stages=["validate"], serialize=False, return_state=True)
    assert state.is_completed(), state.message
    assert {r["stage"]: r["outcome"] for r in state.result()["stages"]} == {
        "download": "skipped",
        "preprocess": "skipped",
        "validate": "ran",
    }
