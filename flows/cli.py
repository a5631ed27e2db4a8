"""The flows' command lines (``python -m flows.pipeline``, ``flows.sweep``, ``flows.nightly``): run the
flow here, recorded by Prefect as any run is, and end a failed run as the stages end theirs -- one
``error:`` line and exit status 2 when retrying cannot help (bad input, bad params, failed
validation), 1 otherwise; a run stopped with Ctrl-C ends with one line and exit status 130.

A refused run's exception is still logged to the Prefect server with its traceback; only the console
is spared it, since the error line says all a person at the terminal needs.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import State

from flows.stages import DeterministicFailure, StageFailure
from tasks.core.errors import StageError

#: Exit status of a run that failed for a reason another attempt would not change.
REFUSED = StageError.exit_status
FAILED = 1
#: The shell's status for a command stopped by SIGINT (128 + 2), and the line it ends with.
INTERRUPTED = 130
INTERRUPTED_LINE = "error: interrupted; what finished is kept, and the next run goes on from there"
#: What ``make`` exports (Makefile) and the team setup sets: no analytics, also from a temporary Prefect server
#: these commands start when no ``PREFECT_API_URL`` is set. An environment that says otherwise wins.
OFFLINE = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}


class _NoRefusalTracebacks(logging.Filter):
    """Drop console records that carry a :class:`DeterministicFailure`'s traceback; Prefect logs the
    same failure again, without one, as the task's or flow's final state."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DeterministicFailure))


@contextmanager
def quiet_refusals() -> Iterator[None]:
    """While inside, the console handlers of the root logger (where Prefect's console output goes) skip
    refusal tracebacks."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler)]
    only = _NoRefusalTracebacks()
    for handler in handlers:
        handler.addFilter(only)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(only)


def error_line(failure: BaseException | None, state: State) -> str:
    """The one line that says why the run failed: a stage's own ``error:`` line where there is one."""
    if isinstance(failure, StageFailure) and failure.errors:
        return failure.errors[0]
    text = str(failure) if isinstance(failure, BaseException) else (state.message or state.name)
    return f"error: {text.removeprefix('Flow run encountered an exception: ')}"


@contextmanager
def sigint_blocked() -> Iterator[None]:
    """SIGINT held back from this thread while inside (delivered on leaving), and from any process started
    meanwhile for its whole life: a child inherits the blocked signal mask across ``exec``."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def connect_api() -> None:
    """Reach the Prefect API before the flow starts. Without ``PREFECT_API_URL`` this starts Prefect's
    temporary server, a child of this process in its process group, where Ctrl-C at the terminal would stop
    it together with the flow and leave the flow retrying its last reports for minutes; started with SIGINT
    blocked, it outlives a Ctrl-C, records the run's end, and stops when this process exits."""
    from prefect.client.orchestration import get_client

    with sigint_blocked(), get_client(sync_client=True) as client:
        client.api_healthcheck()


def run_flow(flow: Flow, **parameters: Any) -> tuple[State, int]:
    """Run ``flow`` here; its final state and the command's exit status, with the error line printed to
    stderr for a run that did not complete. Ctrl-C stops the run (its stage too, which keeps its
    checkpoints), prints one line and exits with :data:`INTERRUPTED`."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    try:
        connect_api()
        with quiet_refusals():
            state = flow(**parameters, return_state=True)
    except KeyboardInterrupt:
        print(INTERRUPTED_LINE, file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    if state.is_completed():
        return state, 0
    failure = state.result(raise_on_failure=False)
    print(error_line(failure, state), file=sys.stderr)
    return state, REFUSED if isinstance(failure, DeterministicFailure) else FAILED
