"""The validation gate: a training stage refuses arrays the validate stage did not pass (checked before
Keras loads, so the refusal is immediate)."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.core.errors import StageError
from tasks.core.paths import VALIDATION_REPORT


def require_validated(report: Path = VALIDATION_REPORT) -> None:
    """Refuse to train unless the validate stage said the arrays are sound."""
    try:
        verdict = json.loads(report.read_text())
    except FileNotFoundError:
        raise StageError(f"{report} not found: run the validate stage first (dvc repro validate)") from None
    except ValueError:
        raise StageError(f"{report} is not valid JSON; rerun the validate stage") from None
    if verdict.get("success") is not True:
        failed = ", ".join(verdict.get("failed") or ["unknown"])
        raise StageError(f"{report} says the prepared data failed validation ({failed}); refusing to train on it")
