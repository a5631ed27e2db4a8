"""The shared shape of every ``python -m tasks.<stage>`` entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tasks.core.errors import StageError, environment_error

#: Exit status of a stage that failed for a reason its message explains (bad input, bad params, the
#: environment); a :class:`~tasks.core.errors.TransientStageError` exits with its own (75) so the flow retries it.
EXIT_STAGE_ERROR = StageError.exit_status


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; turn a :class:`StageError`, or a failure of the environment or of an
    input file (:func:`~tasks.core.errors.environment_error`), into one ``error:`` line and its exit
    status. Any other exception is a bug and keeps its traceback."""
    # Our own loggers speak at INFO; libraries (Great Expectations is chatty) only at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("tasks").setLevel(logging.INFO)
    logging.getLogger("__main__").setLevel(logging.INFO)
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except Exception as exc:
        message = environment_error(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_STAGE_ERROR)
