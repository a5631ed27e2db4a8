"""Errors that a person is meant to read: each says what is wrong and where.

Stage entry points catch :class:`StageError` and print its message instead of a traceback
(see :func:`tasks.core.cli.run_stage`); anything else is a bug and keeps its traceback.
"""


class StageError(Exception):
    """An expected failure of a stage, with a message for a person."""

    #: The stage's exit status: 2, "fix the input and rerun" (tasks/core/cli.py).
    exit_status = 2


class TransientStageError(StageError):
    """A failure another attempt may not meet (the network, a server): exits 75, sysexits' EX_TEMPFAIL,
    which the Prefect flow retries."""

    exit_status = 75


class ParamsError(StageError):
    """``params.yaml`` holds a missing, mistyped or out-of-range value."""


class DownloadError(StageError):
    """The archive could not be fetched (after retries, where retrying made sense)."""


class ChecksumMismatch(DownloadError):
    """The fetched bytes do not have the digest that ``params.yaml`` promises."""


class ArchiveError(StageError):
    """The archive is not a sound CIFAR-10 "python version" tarball."""


class ValidationFailed(StageError):
    """The prepared arrays failed one or more data expectations."""


class DeviceError(StageError):
    """A GPU was required but none is visible."""


class WeightsUnavailable(TransientStageError):
    """Pretrained weights could not be fetched (no network, server down)."""
