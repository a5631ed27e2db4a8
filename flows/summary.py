"""The markdown the pipeline and nightly flows leave as Prefect artifacts: what each stage did, both
models' test metrics, the change in test accuracy against the previous run, and where the report is.
The numbers are picked and formatted here; flows/templates/*.md.j2 lay them out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.core.paths import EVALUATE_METRICS, MODELS
from tasks.core.paths import REPORT_HTML as REPORT
from tasks.reporting.templating import render as render_template

#: Rows that lead the metrics table when present; the other numeric metrics follow in name order.
LEADING = ("test_accuracy", "test_loss", "macro_f1", "macro_precision", "macro_recall")


def render(template: str, **context: Any) -> str:
    """``flows/templates/<template>`` filled with ``context``."""
    return render_template(template, package="flows", **context)


def _fmt(name: str, value: Any) -> str:
    if "accuracy" in name and 0 <= value <= 1:
        return f"{100 * value:.2f} %"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metrics_table(repo: Path) -> str:
    """A markdown table of both models' test metrics side by side (metrics/evaluate.json, written by
    the evaluate stage), or a line saying why there is none."""
    path = repo / EVALUATE_METRICS
    if not path.is_file():
        problem = f"_No test metrics yet: `{EVALUATE_METRICS}` does not exist (the `evaluate` stage has not run)._"
        return render("metrics_table.md.j2", problem=problem).strip()
    data = json.loads(path.read_text())
    models = [m for m in MODELS if m in data]
    numeric = {k for m in models for k, v in data[m].items() if _numeric(v)}
    names = [c for c in LEADING if c in numeric] + sorted(numeric - set(LEADING))
    rows = [(name, [_fmt(name, data[m][name]) if name in data[m] else "-" for m in models]) for name in names]
    missing = [m for m in MODELS if m not in models]
    return render(
        "metrics_table.md.j2", problem=None, models=models, rows=rows, missing=missing, path=EVALUATE_METRICS
    ).strip()


def pipeline_summary(
    repo: Path,
    results: Sequence[dict[str, Any]],
    metrics_diff: str,
    *,
    experiment: str | None = None,
    host: str | None = None,
    standings: Sequence[Any] = (),
    registered: dict[str, str] | None = None,
    registry_problem: str | None = None,
) -> str:
    """The pipeline flow's summary artifact; ``standings`` and ``registered`` as the nightly's
    (:mod:`flows.registry`), ``registered`` for ``HEAD``."""
    report = repo / REPORT
    return render(
        "pipeline_summary.md.j2",
        repo=repo,
        host=host,
        experiment=experiment,
        stages=list(results),
        metrics_table=metrics_table(repo),
        metrics_diff=metrics_diff,
        report=REPORT,
        report_uri=report.as_uri() if report.is_file() else None,
        report_path=report,
        standings=list(standings),
        registered=registered or {},
        registry_problem=registry_problem,
        pct=percent,
    )


def percent(value: float | None) -> str:
    """A fraction as a percentage cell; ``-`` for none."""
    return "-" if value is None else f"{100 * value:.2f} %"


def test_accuracies(text: str | None) -> dict[str, float]:
    """Each model's test accuracy in a text of metrics/evaluate.json; none from a missing or broken one."""
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {m: float(v["test_accuracy"]) for m, v in data.items() if _numeric((v or {}).get("test_accuracy"))}


def accuracy_rows(before: str | None, after: str | None) -> list[tuple[str, str, str, str]]:
    """``(model, before, after, change in points)`` cells from two texts of metrics/evaluate.json
    (None where a run has none); one row per model, present or not."""
    old, new = test_accuracies(before), test_accuracies(after)
    rows = []
    for model in MODELS:
        a, b = old.get(model), new.get(model)
        change = "-" if a is None or b is None else f"{100 * (b - a):+.2f} pp"
        rows.append((model, percent(a), percent(b), change))
    return rows
