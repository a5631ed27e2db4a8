"""The markdown a flow run leaves behind as Prefect artifacts: what each stage did, the test
metrics of both models, what changed against the last commit, and where the report is. The
numbers are picked and formatted here; flows/templates/*.md.j2 lay them out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.core.paths import EVALUATE_METRICS, MODELS
from tasks.core.paths import REPORT_HTML as REPORT
from tasks.reporting.templating import render as render_template

#: Rows that lead the table when present; the other numeric metrics follow in name order.
LEADING = ("test_accuracy", "test_loss", "macro_f1", "macro_precision", "macro_recall")


def _fmt(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if "accuracy" in name and 0 <= value <= 1:
        return f"{100 * value:.2f} %"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.4g}"


def metrics_rows(repo: Path) -> dict[str, Any]:
    """What the metrics table shows, from metrics/evaluate.json: the models (columns), one
    ``(metric, cells)`` row per numeric metric, the models with no metrics -- or ``problem``, a
    line saying why there is no table."""
    path = repo / EVALUATE_METRICS
    if not path.is_file():
        why = "does not exist (the `evaluate` stage has not run)"
        return {"problem": f"_No test metrics yet: `{EVALUATE_METRICS}` {why}._"}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"problem": f"_`{EVALUATE_METRICS}` could not be read: {exc}_"}
    models = [m for m in MODELS if isinstance(data, dict) and isinstance(data.get(m), dict)]
    if isinstance(data, dict):
        models += sorted(k for k, v in data.items() if isinstance(v, dict) and k not in models)
    if not models:
        return {"problem": f"_`{EVALUATE_METRICS}` holds no per-model metrics._"}
    numeric = {k for m in models for k, v in data[m].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics = [c for c in LEADING if c in numeric] + sorted(numeric - set(LEADING))
    rows = [(name, [_fmt(name, data[m][name]) if name in data[m] else "-" for m in models]) for name in metrics]
    return {"problem": None, "models": models, "rows": rows, "missing": [m for m in MODELS if m not in models]}


def metrics_table(repo: Path) -> str:
    """A markdown table of both models' test metrics side by side, or a line saying why there is none."""
    return render_template("metrics_table.md.j2", package="flows", path=EVALUATE_METRICS, **metrics_rows(repo)).strip()


def render(
    repo: Path,
    results: Sequence[dict[str, Any]],
    metrics_diff: str,
    *,
    experiment: str | None = None,
    host: str | None = None,
) -> str:
    report = repo / REPORT
    return render_template(
        "pipeline_summary.md.j2",
        package="flows",
        repo=repo,
        host=host,
        experiment=experiment,
        stages=list(results),
        metrics_table=metrics_table(repo),
        metrics_diff=metrics_diff,
        report=REPORT,
        report_uri=report.as_uri() if report.is_file() else None,
        report_path=report,
    )
