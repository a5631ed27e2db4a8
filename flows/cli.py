"""The flows' command lines (``python -m flows.pipeline``, ``flows.sweep``, ``flows.nightly``): run the
flow here, recorded by Prefect as any run is, and end a failed run as the stages end theirs -- one
``error:`` line and exit status 2 when retrying cannot help (bad input, bad params, failed
validation), 1 otherwise.

A refused run's exception is still logged to the Prefect server with its traceback; only the console
is spared it, since the error line says all a person at the terminal needs.
"""

from __future__ import annotations

import logging
import os
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


def run_flow(flow: Flow, **parameters: Any) -> tuple[State, int]:
    """Run ``flow`` here; its final state and the command's exit status, with the error line printed to
    stderr for a run that did not complete."""
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    with quiet_refusals():
        state = flow(**parameters, return_state=True)
    if state.is_completed():
        return state, 0
    failure = state.result(raise_on_failure=False)
    print(error_line(failure, state), file=sys.stderr)
    return state, REFUSED if isinstance(failure, DeterministicFailure) else FAILED
