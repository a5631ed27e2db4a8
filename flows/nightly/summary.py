"""The markdown artifact of a nightly run: what came in, what ran, and the change in both models'
test accuracy, params and metrics against the previous recorded run of the same deployment."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flows.nightly.workspace import RecordedRun
from tasks.core.paths import MODELS
from tasks.reporting.templating import render as render_template


@dataclass(frozen=True)
class AccuracyRow:
    model: str
    before: float | None
    after: float | None

    @property
    def change(self) -> float | None:
        """In percentage points."""
        return None if self.before is None or self.after is None else 100 * (self.after - self.before)

    @property
    def cells(self) -> tuple[str, str, str]:
        """How the table shows it: both accuracies in percent and the change in points."""
        pct = ["-" if v is None else f"{100 * v:.2f} %" for v in (self.before, self.after)]
        return pct[0], pct[1], "-" if self.change is None else f"{self.change:+.2f} pp"


def accuracies_from(evaluate_json: str | None) -> dict[str, float]:
    """``{model: test_accuracy}`` from the text of metrics/evaluate.json (empty when absent or unreadable)."""
    try:
        data = json.loads(evaluate_json or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        model: float(values["test_accuracy"])
        for model, values in data.items()
        if isinstance(values, dict) and isinstance(values.get("test_accuracy"), (int, float))
    }


def accuracy_rows(before: str | None, after: str | None) -> list[AccuracyRow]:
    old, new = accuracies_from(before), accuracies_from(after)
    models = [m for m in MODELS if m in old or m in new] + sorted((old.keys() | new.keys()) - set(MODELS))
    return [AccuracyRow(m, old.get(m), new.get(m)) for m in models or MODELS]


def render(
    *,
    run_name: str,
    branch: str,
    git_url: str,
    commit: str,
    subject: str,
    workspace: str,
    how: str,
    stash: str | None,
    previous: RecordedRun | None,
    commits: Sequence[str],
    stages: Sequence[dict[str, Any]],
    experiment: str | None,
    pushed_to: str | None,
    nothing_changed: bool,
    accuracy: Sequence[AccuracyRow],
    params_diff: str = "",
    metrics_diff: str = "",
) -> str:
    restored = [r["stage"] for r in stages if r.get("outcome") == "restored"]
    return render_template(
        "nightly_summary.md.j2",
        package="flows",
        run_name=run_name,
        branch=branch,
        git_url=git_url,
        commit=commit,
        subject=subject,
        workspace=workspace,
        how=how,
        stash=stash,
        previous=previous,
        commits=list(commits),
        stages=list(stages),
        experiment=experiment,
        pushed_to=pushed_to,
        nothing_changed=nothing_changed,
        restored=restored,
        accuracy=list(accuracy),
        params_diff=params_diff,
        metrics_diff=metrics_diff,
    )
