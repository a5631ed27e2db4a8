"""The shared shape of every ``python -m tasks.<stage>`` entry point."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tasks.core.errors import StageError

#: Exit status of a stage that failed for a reason its message explains (bad input, bad params);
#: a :class:`~tasks.core.errors.TransientStageError` exits with its own (75) so the flow retries it.
EXIT_STAGE_ERROR = StageError.exit_status


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's ``main``; turn a :class:`StageError` into one clear line and exit 2."""
    # Our own loggers speak at INFO; libraries (Great Expectations is chatty) only at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("tasks").setLevel(logging.INFO)
    logging.getLogger("__main__").setLevel(logging.INFO)
    try:
        main()
    except StageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
