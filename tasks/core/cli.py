"""The shared shape of every ``python -m tasks.<stage>`` entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tasks.core.errors import StageError, environment_error


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; turn a :class:`StageError`, or a failure of the environment or of an
    input file (:func:`~tasks.core.errors.environment_error`), into one ``error:`` line and its exit
    status: 2, final (fix the input and rerun), or 75 for a :class:`~tasks.core.errors.TransientStageError`
    (another attempt may pass). Any other exception is a bug and keeps its traceback."""
    # Our own loggers speak at INFO; libraries (Great Expectations is chatty) only at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("tasks").setLevel(logging.INFO)
    logging.getLogger("__main__").setLevel(logging.INFO)
    try:
        main()
    except Exception as exc:
        error = exc if isinstance(exc, StageError) else environment_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_status)
