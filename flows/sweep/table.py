"""The comparison a sweep ends with: one row per experiment (the params that differ between the
sweep's experiments, each compared model's test accuracy, loss and training seconds, wall time,
outcome) and, per point, the mean and sample standard deviation over its seeds; as CSV and as
markdown (``flows/templates/sweep_table.md.j2``). The metrics come from ``dvc exp show --json``, so
the table and DVC's own listing cannot disagree. No Prefect here.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flows.sweep.spec import Experiment, Sweep, value_text
from tasks.core import paths
from tasks.reporting.templating import render

EVALUATE_METRICS = paths.EVALUATE_METRICS.as_posix()  # as dvc exp show --json keys it
#: Per compared model, in this order: what the table shows and averages.
METRICS = {"test_accuracy": "test acc", "test_loss": "test loss", "train_seconds": "train s"}
#: Outcomes of an experiment in one sweep run.
DONE, DONE_EARLIER, FAILED = "done", "done earlier", "failed"
SUCCESS = (DONE, DONE_EARLIER)


@dataclass
class Outcome:
    status: str
    message: str = ""
    wall_seconds: float | None = None


@dataclass
class Table:
    """Rows (one per experiment) and groups (one per point), each a dict of its CSV columns."""

    keys: list[str]  # the params whose value differs between the experiments
    point_keys: list[str]  # those of them the seed does not set
    columns: list[str]  # ``model.metric``
    rows: list[dict[str, Any]]
    groups: list[dict[str, Any]]


def flat(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested params as ``{"section.key": value}``."""
    if not isinstance(data, Mapping):
        return {prefix: data}
    return {k: v for key, value in data.items() for k, v in flat(value, f"{prefix}.{key}" if prefix else key).items()}


def experiments_from_show(show: Sequence[Mapping[str, Any]], baseline: str) -> dict[str, dict[str, Any]]:
    """``{name: {"params": {dotted: value}, "evaluate": metrics/evaluate.json}}`` for every experiment
    of ``baseline`` in ``dvc exp show --json`` output; other params files' keys carry ``<file>:``."""
    found = {}
    for exp in next((b.get("experiments") or [] for b in show if b.get("rev") == baseline), []):
        for rev in exp.get("revs") or []:
            data = rev.get("data") or {}
            params = {}
            for file, content in (data.get("params") or {}).items():
                dotted = flat(content.get("data") or {})
                params.update(dotted if file == "params.yaml" else {f"{file}:{k}": v for k, v in dotted.items()})
            evaluate = ((data.get("metrics") or {}).get(EVALUATE_METRICS) or {}).get("data") or {}
            found[rev.get("name") or exp.get("name")] = {"params": params, "evaluate": evaluate}
    return found


def mismatched_params(experiment: Experiment, recorded: Mapping[str, Any]) -> list[str]:
    """The params ``experiment`` sets whose value the recorded experiment does not have."""
    wrong = []
    for key, value in experiment.params.items():
        have = recorded.get(key.removeprefix("params.yaml:"), "<missing>")
        if have != value:
            wrong.append(f"{key}={value_text(value)} (the experiment has {value_text(have)})")
    return wrong


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return float(value) if ok else None


def build(
    sweep: Sweep,
    outcomes: Mapping[str, Outcome],
    shown: Mapping[str, Mapping[str, Any]],
    baseline_params: Mapping[str, Any] | None = None,
) -> Table:
    """The table of ``sweep``'s experiments, their ``outcomes`` and what ``dvc exp show`` holds of them; a
    param an experiment does not set shows the value it ran with, ``baseline_params`` (the baseline
    commit's params.yaml, dotted keys)."""
    experiments = sweep.experiments()
    columns = [f"{model}.{metric}" for model in sweep.compare or paths.MODELS for metric in METRICS]
    every = list(dict.fromkeys(k for e in experiments for k in e.params))
    base = baseline_params or {}

    def value(e: Experiment, key: str) -> Any:
        return e.params[key] if key in e.params else base.get(key.removeprefix("params.yaml:"))

    keys = [k for k in every if len({value_text(value(e, k)) for e in experiments}) > 1]
    point_keys = [k for k in keys if k not in sweep.seed_params]
    rows = []
    for e in experiments:
        outcome = outcomes.get(e.name) or Outcome(FAILED, "no outcome recorded")
        evaluate = (shown.get(e.name) or {}).get("evaluate", {}) if outcome.status in SUCCESS else {}
        metrics = {c: _number((evaluate.get(c.split(".")[0]) or {}).get(c.split(".", 1)[1])) for c in columns}
        row = {"experiment": e.name, "point": e.point, "seed": e.seed, "status": outcome.status}
        row |= {k: value(e, k) for k in keys} | metrics
        rows.append({**row, "wall_seconds": outcome.wall_seconds, "message": outcome.message})
    groups = []
    for point in sweep.points:
        members = [r for r in rows if r["point"] == point]
        done = [r for r in members if r["status"] in SUCCESS]
        first = next(e for e in experiments if e.point == point)
        group = {"point": point, **{k: value(first, k) for k in point_keys}, "n": len(members), "n_done": len(done)}
        for column in [*columns, "wall_seconds"]:
            values = [r[column] for r in done if r[column] is not None]
            group[f"{column}_mean"] = statistics.fmean(values) if values else None
            if column != "wall_seconds":  # sample standard deviation (n - 1): none from a single seed
                group[f"{column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        groups.append(group)
    return Table(keys, point_keys, columns, rows, groups)


def _metric(column: str, value: float | None) -> str:
    """A metric (``model.metric``, ``wall_seconds``) as the markdown table shows it."""
    if value is None:
        return "-"
    if column.endswith("accuracy"):
        return f"{100 * value:.2f} %"
    return f"{value:.1f}" if column.endswith("seconds") else f"{value:.4f}"


def markdown(sweep: Sweep, table: Table, *, baseline: str, files: Sequence[str] = ()) -> str:
    """The comparison as markdown."""
    statuses = [r["status"] for r in table.rows]
    return render(
        "sweep_table.md.j2",
        package="flows",
        sweep=sweep,
        table=table,
        baseline=baseline[:12],
        counts={s.replace(" ", "_"): statuses.count(s) for s in (DONE, DONE_EARLIER, FAILED)},
        labels=[f"{model} {METRICS[metric]}" for model, metric in (c.split(".", 1) for c in table.columns)],
        text=lambda value: "-" if value is None else value_text(value),
        metric=_metric,
        files=files,
    )


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """Rows as CSV, a header of their keys; lists and flags in YAML flow style, nothing for None."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: "" if v is None else value_text(v) if isinstance(v, (list, dict, bool)) else v for k, v in row.items()}
        )
    return out.getvalue()
