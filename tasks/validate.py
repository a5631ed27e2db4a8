"""Stage ``validate``: Great Expectations suites (:mod:`tasks.data.validation`) that gate training on sound arrays.

Writes ``reports/validation.json`` (overall ``success`` plus one entry per expectation), its headline
in ``metrics/validation.json``, and ``reports/validation.html``, then exits non-zero naming every
failed expectation. Training stages depend on the JSON and refuse to start unless it says
``success: true``.
"""

from __future__ import annotations

import logging

from tasks.core.atomic import write_json, write_text
from tasks.core.cli import run_stage
from tasks.core.errors import ValidationFailed
from tasks.core.params import DataParams, ValidateParams, load
from tasks.core.paths import PREPARED, VALIDATION_HTML, VALIDATION_METRICS, VALIDATION_REPORT
from tasks.data.validation import failure_message, headline, render_html, validate

log = logging.getLogger(__name__)


def main() -> None:
    report = validate(PREPARED, load(DataParams), load(ValidateParams))
    write_json(VALIDATION_REPORT, report)
    write_json(VALIDATION_METRICS, headline(report))
    write_text(VALIDATION_HTML, render_html(report))
    if not report["success"]:
        raise ValidationFailed(failure_message(report))
    log.info("all %d expectations passed", len(report["expectations"]))


if __name__ == "__main__":
    run_stage(main)
