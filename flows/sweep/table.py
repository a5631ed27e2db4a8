"""The comparison a sweep ends with: one row per experiment (the params that differ, test accuracy
and loss, training and wall time, outcome) and, per point, the mean and standard deviation over
its seeds; as markdown (the Prefect artifact, laid out by ``flows/templates/sweep_table.md.j2``) and
CSV. No Prefect here.

Metrics come from ``dvc exp show --json`` of the main repository -- the same place ``dvc exp show``
reads -- so the table and DVC's own listing cannot disagree.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flows.sweep.spec import Experiment, Sweep, value_text
from tasks.core import paths
from tasks.reporting import templating

EVALUATE_METRICS = paths.EVALUATE_METRICS.as_posix()  # as dvc exp show --json keys it
#: Per compared model, in this order: what the table shows and averages.
METRICS = ("test_accuracy", "test_loss", "train_seconds")
LABELS = {"test_accuracy": "test acc", "test_loss": "test loss", "train_seconds": "train s"}
KNOWN_MODELS = paths.MODELS

#: Outcomes of an experiment in one sweep run.
DONE, DONE_EARLIER, FAILED, FAILED_EARLIER = "done", "done earlier", "failed", "failed earlier"
SUCCESS = (DONE, DONE_EARLIER)


@dataclass
class Outcome:
    status: str
    message: str = ""
    wall_seconds: float | None = None
    #: True: the same experiment would fail again (bad params, failed validation); a rerun skips it
    deterministic: bool = False


@dataclass
class Row:
    experiment: str
    point: str
    seed: int | None
    status: str
    params: dict[str, Any]
    metrics: dict[str, float | None]
    wall_seconds: float | None
    message: str = ""


@dataclass
class Group:
    point: str
    params: dict[str, Any]
    n: int
    n_done: int
    mean: dict[str, float | None] = field(default_factory=dict)
    std: dict[str, float | None] = field(default_factory=dict)
    wall_mean: float | None = None


# -- dvc exp show --json -----------------------------------------------------------------------------


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, Mapping):
        return {prefix: data} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def experiments_from_show(show: Sequence[Mapping[str, Any]], baseline: str | None = None) -> dict[str, dict[str, Any]]:
    """``{name: {"rev", "params": {dotted: value}, "metrics": {file: data}, "error"}}`` for every
    experiment of ``baseline`` (every baseline when None) in ``dvc exp show --json`` output."""
    found: dict[str, dict[str, Any]] = {}
    for base in show:
        if base.get("rev") == "workspace" or (baseline and base.get("rev") != baseline):
            continue
        for exp in base.get("experiments") or []:
            for rev in exp.get("revs") or []:
                data = rev.get("data") or {}
                params: dict[str, Any] = {}
                for file, content in (data.get("params") or {}).items():
                    flat = _flat((content or {}).get("data") or {})
                    params.update(flat if file == "params.yaml" else {f"{file}:{k}": v for k, v in flat.items()})
                metrics = {file: (content or {}).get("data") for file, content in (data.get("metrics") or {}).items()}
                name = rev.get("name") or exp.get("name") or rev.get("rev")
                found[name] = {
                    "rev": rev.get("rev"),
                    "params": params,
                    "metrics": metrics,
                    "error": rev.get("error"),
                    "timestamp": data.get("timestamp"),
                }
    return found


def mismatched_params(experiment: Experiment, recorded: Mapping[str, Any]) -> list[str]:
    """The params ``experiment`` sets whose value the recorded experiment does not have."""
    from flows.sweep.spec import same_value

    wrong = []
    for key, value in experiment.params.items():
        have = recorded.get(key.split(":", 1)[1] if key.startswith("params.yaml:") else key, "<missing>")
        if have == "<missing>" or not same_value(value, have):
            wrong.append(f"{key}={value_text(value)} (the experiment has {value_text(have)})")
    return wrong


# -- rows and groups ---------------------------------------------------------------------------------


def models_to_compare(sweep: Sweep, recorded: Iterable[Mapping[str, Any]]) -> list[str]:
    if sweep.compare:
        return list(sweep.compare)
    seen: set[str] = set()
    for exp in recorded:
        data = (exp.get("metrics") or {}).get(EVALUATE_METRICS)
        if isinstance(data, Mapping):
            seen.update(k for k, v in data.items() if isinstance(v, Mapping))
    return [m for m in KNOWN_MODELS if m in seen] + sorted(seen - set(KNOWN_MODELS)) or list(KNOWN_MODELS)


def differing_keys(experiments: Sequence[Experiment]) -> list[str]:
    """Params whose value is not the same in every experiment of the sweep, in first-seen order."""
    keys: list[str] = []
    for e in experiments:
        keys += [k for k in e.params if k not in keys]
    return [k for k in keys if len({value_text(e.params[k]) if k in e.params else "<unset>" for e in experiments}) > 1]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return float(value)


def build_rows(
    sweep: Sweep,
    experiments: Sequence[Experiment],
    outcomes: Mapping[str, Outcome],
    recorded: Mapping[str, Mapping[str, Any]],
) -> tuple[list[Row], list[str], list[str]]:
    """Rows in sweep order, the differing param keys, and the metric columns (``model.metric``)."""
    models = models_to_compare(sweep, [recorded[e.name] for e in experiments if e.name in recorded])
    columns = [f"{m}.{metric}" for m in models for metric in METRICS]
    keys = differing_keys(experiments)
    rows = []
    for e in experiments:
        outcome = outcomes.get(e.name) or Outcome(FAILED, "no outcome recorded")
        evaluate = ((recorded.get(e.name) or {}).get("metrics") or {}).get(EVALUATE_METRICS) or {}
        metrics = {}
        for column in columns:
            model, metric = column.split(".", 1)
            entry = evaluate.get(model) if isinstance(evaluate, Mapping) else None
            metrics[column] = (
                _number(entry.get(metric)) if isinstance(entry, Mapping) and outcome.status in SUCCESS else None
            )
        rows.append(
            Row(
                e.name,
                e.point,
                e.seed,
                outcome.status,
                {k: e.params[k] for k in keys if k in e.params},
                metrics,
                outcome.wall_seconds,
                outcome.message,
            )
        )
    return rows, keys, columns


def build_groups(
    sweep: Sweep, experiments: Sequence[Experiment], rows: Sequence[Row], keys: Sequence[str], columns: Sequence[str]
) -> list[Group]:
    """Per point: how many seeds finished, and the mean and sample standard deviation (n - 1) of
    each metric over the finished ones (no std from a single seed)."""
    point_keys = [k for k in keys if k not in sweep.seed_params]
    groups = []
    for point in sweep.points:
        members = [r for r in rows if r.point == point.name]
        done = [r for r in members if r.status in SUCCESS]
        first = next(e for e in experiments if e.point == point.name)
        group = Group(
            point.name, {k: first.params[k] for k in point_keys if k in first.params}, len(members), len(done)
        )
        for column in columns:
            values = [r.metrics[column] for r in done if r.metrics.get(column) is not None]
            group.mean[column] = statistics.fmean(values) if values else None
            group.std[column] = statistics.stdev(values) if len(values) >= 2 else None
        walls = [r.wall_seconds for r in done if r.wall_seconds is not None]
        group.wall_mean = statistics.fmean(walls) if walls else None
        groups.append(group)
    return groups


# -- rendering ---------------------------------------------------------------------------------------


def _fmt(column: str, value: float | None) -> str:
    if value is None:
        return "-"
    if column.endswith("accuracy"):
        return f"{100 * value:.2f} %"
    if column.endswith("seconds") or column == "wall":
        return f"{value:.1f}"
    return f"{value:.4f}"


def _label(column: str) -> str:
    model, metric = column.split(".", 1)
    return f"{model} {LABELS.get(metric, metric)}"


def _param(params: dict[str, Any], key: str) -> str:
    """A param's value as the table shows it; ``-`` where the experiment leaves it alone."""
    return value_text(params[key]) if key in params else "-"


def group_cells(group: Group, point_keys: Sequence[str], columns: Sequence[str]) -> list[str]:
    """A point's row of the per-point table: its params, seeds done, mean and std per metric, wall time."""
    cells = [group.point, *(_param(group.params, k) for k in point_keys), f"{group.n_done}/{group.n}"]
    for c in columns:
        cells += [_fmt(c, group.mean[c]), _fmt(c, group.std[c])]
    return [*cells, _fmt("wall", group.wall_mean)]


def row_cells(row: Row, keys: Sequence[str], columns: Sequence[str]) -> list[str]:
    """An experiment's row of the experiments table."""
    return [
        row.experiment,
        row.status,
        *(_param(row.params, k) for k in keys),
        *(_fmt(c, row.metrics[c]) for c in columns),
        _fmt("wall", row.wall_seconds),
    ]


def markdown(
    sweep: Sweep,
    rows: Sequence[Row],
    groups: Sequence[Group],
    keys: Sequence[str],
    columns: Sequence[str],
    *,
    baseline: str,
    files: Sequence[str] = (),
) -> str:
    """The comparison as markdown, laid out by ``flows/templates/sweep_table.md.j2``."""
    point_keys = [k for k in keys if k not in sweep.seed_params]
    return templating.render(
        "sweep_table.md.j2",
        package="flows",
        name=sweep.name,
        description=sweep.description,
        baseline=baseline[:12],
        total=len(rows),
        # Keyed the way the template reads them: done, done_earlier, failed, failed_earlier.
        counts={
            s.replace(" ", "_"): sum(r.status == s for r in rows) for s in (DONE, DONE_EARLIER, FAILED, FAILED_EARLIER)
        },
        point_keys=point_keys,
        keys=keys,
        labels=[_label(c) for c in columns],
        groups=[group_cells(g, point_keys, columns) for g in groups],
        experiments=[row_cells(r, keys, columns) for r in rows],
        failed=[r for r in rows if r.status not in SUCCESS],
        files=files,
    )


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return value_text(value)
    return value


def _csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([_csv_value(v) for v in row] for row in rows)
    return buf.getvalue()


def rows_csv(rows: Sequence[Row], keys: Sequence[str], columns: Sequence[str]) -> str:
    """One row per experiment: its point and seed, outcome, differing params, metrics, wall time, message."""
    header = ["experiment", "point", "seed", "status", *keys, *columns, "wall_seconds", "message"]
    return _csv(
        header,
        (
            [r.experiment, r.point, r.seed, r.status, *(r.params.get(k) for k in keys)]
            + [*(r.metrics[c] for c in columns), r.wall_seconds, r.message]
            for r in rows
        ),
    )


def groups_csv(groups: Sequence[Group], columns: Sequence[str]) -> str:
    """One row per point: its params, seeds run and finished, mean and std of each metric, mean wall time."""
    point_keys = list(dict.fromkeys(k for g in groups for k in g.params))
    stats = [f"{c}_{s}" for c in columns for s in ("mean", "std")]
    return _csv(
        ["point", *point_keys, "n", "n_done", *stats, "wall_seconds_mean"],
        (
            [g.point, *(g.params.get(k) for k in point_keys), g.n, g.n_done]
            + [*(v for c in columns for v in (g.mean[c], g.std[c])), g.wall_mean]
            for g in groups
        ),
    )
