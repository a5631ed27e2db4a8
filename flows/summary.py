"""The markdown a flow run leaves behind as Prefect artifacts: what each stage did, the test
metrics of both models, what changed against the last commit, and where the report is."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.core.paths import EVALUATE_METRICS, MODELS
from tasks.core.paths import REPORT_HTML as REPORT

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


def metrics_table(repo: Path) -> str:
    """A markdown table from metrics/evaluate.json -- one row per metric, one column per model,
    so the models compare side by side -- or a line saying why there is none."""
    path = repo / EVALUATE_METRICS
    if not path.is_file():
        return f"_No test metrics yet: `{EVALUATE_METRICS}` does not exist (the `evaluate` stage has not run)._"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"_`{EVALUATE_METRICS}` could not be read: {exc}_"
    if not isinstance(data, dict):
        return f"_`{EVALUATE_METRICS}` holds no per-model metrics._"
    models = [m for m in MODELS if isinstance(data.get(m), dict)]
    models += sorted(k for k, v in data.items() if isinstance(v, dict) and k not in models)
    if not models:
        return f"_`{EVALUATE_METRICS}` holds no per-model metrics._"
    numeric = {k for m in models for k, v in data[m].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics = [c for c in LEADING if c in numeric] + sorted(numeric - set(LEADING))
    rows = ["| metric | " + " | ".join(models) + " |", "| --- |" + " ---: |" * len(models)]
    for metric in metrics:
        cells = [_fmt(metric, data[m][metric]) if metric in data[m] else "-" for m in models]
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")
    missing = [m for m in MODELS if m not in models]
    if missing:
        rows.append(f"\n_No metrics for {', '.join(missing)} in `{EVALUATE_METRICS}`._")
    return "\n".join(rows)


def stages_table(results: Sequence[dict[str, Any]]) -> str:
    rows = ["| stage | outcome | attempts | seconds |", "| --- | --- | ---: | ---: |"]
    rows += [f"| {r['stage']} | {r['outcome']} | {r.get('attempt', 1)} | {r['seconds']:.1f} |" for r in results]
    return "\n".join(rows)


def render(
    repo: Path,
    results: Sequence[dict[str, Any]],
    metrics_diff: str,
    *,
    experiment: str | None = None,
    host: str | None = None,
) -> str:
    report = repo / REPORT
    lines = ["# CIFAR-10 pipeline run", ""]
    if host:
        lines += [f"Host: `{host}` -- workspace: `{repo}`", ""]
    if experiment:
        lines += [f"DVC experiment: **{experiment}** (`dvc exp show`, `dvc exp diff {experiment}`)", ""]
    lines += [
        "## Stages",
        "",
        stages_table(results),
        "",
        "## Test metrics",
        "",
        metrics_table(repo),
        "",
        "## `dvc metrics diff HEAD`",
        "",
        metrics_diff.strip() or "_No metric differs from HEAD._",
        "",
        "## Report",
        "",
    ]
    if report.is_file():
        lines.append(f"[{REPORT}]({report.as_uri()}) -- `{report}`")
    else:
        lines.append(f"_`{REPORT}` does not exist yet (written by the `evaluate` stage)._")
    return "\n".join(lines) + "\n"
