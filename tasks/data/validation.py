"""Great Expectations suites that gate training on sound arrays (the ``validate`` stage's checks).

The prepared arrays are summarised into small tables (:mod:`tasks.data.summaries`) and each table gets
an expectation suite. :func:`validate` returns the report the stage writes as ``reports/validation.json``
(overall ``success`` plus one entry per expectation); :func:`render_html` lays it out as
``reports/validation.html`` (a self-contained page, no CDN, from
``tasks/reporting/templates/validation.html.j2``); :func:`failure_message` names every failed expectation.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.core.errors import StageError
from tasks.core.params import DataParams, ValidateParams
from tasks.core.paths import VALIDATION_HTML
from tasks.data import summaries
from tasks.data.splits import NUM_CLASSES, SPLITS, Split, load_split
from tasks.reporting import templating

FULL_TRAIN_SOURCE = 50_000
CIFAR_SHAPE = "32x32x3"
#: What a validation.json entry may say about where its expectation failed, in the order shown.
DETAILS = ("observed_value", "unexpected_count", "examples", "error")


@dataclass(frozen=True)
class Check:
    """One named expectation on one summary table."""

    name: str
    table: str
    expectation: str  # class name in great_expectations.expectations
    kwargs: dict[str, Any]
    description: str


@dataclass
class Outcome:
    """What running the checks found, in the shape written to validation.json."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [e["name"] for e in self.entries if not e["success"]]

    @property
    def success(self) -> bool:
        return not self.failed


def build_checks(data: DataParams, params: ValidateParams, full: bool) -> list[Check]:
    """The expectations, each with a stable name that reports and error messages use."""
    labels = list(range(NUM_CLASSES))
    checks = [
        Check(
            "image_shape",
            "images",
            "ExpectColumnValuesToBeInSet",
            {"column": "shape", "value_set": [CIFAR_SHAPE]},
            f"every image is {CIFAR_SHAPE} (height x width x channels)",
        ),
        Check(
            "dtype",
            "images",
            "ExpectColumnValuesToBeInSet",
            {"column": "dtype", "value_set": ["uint8"]},
            "arrays are uint8",
        ),
        Check(
            "pixel_min",
            "images",
            "ExpectColumnValuesToBeBetween",
            {"column": "min", "min_value": 0, "max_value": 255},
            "smallest pixel of each image is within 0..255",
        ),
        Check(
            "pixel_max",
            "images",
            "ExpectColumnValuesToBeBetween",
            {"column": "max", "min_value": 0, "max_value": 255},
            "largest pixel of each image is within 0..255",
        ),
        Check(
            "finite",
            "images",
            "ExpectColumnValuesToBeBetween",
            {"column": "nonfinite", "min_value": 0, "max_value": 0},
            "no NaN or infinite pixels",
        ),
        Check(
            "labels_in_range",
            "images",
            "ExpectColumnValuesToBeInSet",
            {"column": "label", "value_set": labels},
            "labels are integers 0..9",
        ),
        Check(
            "all_classes_present",
            "classes",
            "ExpectColumnValuesToBeBetween",
            {"column": "count", "min_value": 1},
            "all ten classes appear in every split",
        ),
        Check(
            "class_balance",
            "classes",
            "ExpectColumnValuesToBeBetween",
            {"column": "deviation", "min_value": 0, "max_value": params.class_balance_tolerance},
            f"each class holds 1/10 of each split within {params.class_balance_tolerance:.0%}",
        ),
        Check(
            "split_sizes",
            "sizes",
            "ExpectColumnPairValuesToBeEqual",
            {"column_A": "actual", "column_B": "expected"},
            f"split sizes follow data.val_fraction={data.val_fraction}, data.limit_train={data.limit_train}, "
            f"data.limit_test={data.limit_test}",
        ),
        Check(
            "no_test_leakage",
            "images",
            "ExpectColumnSumToBeBetween",
            {"column": "leaked", "min_value": 0, "max_value": params.max_leaked_images},
            f"at most {params.max_leaked_images} test images also appear in train/val (exact-hash match)",
        ),
        Check(
            "constant_images",
            "images",
            "ExpectColumnSumToBeBetween",
            {"column": "is_constant", "min_value": 0, "max_value": params.max_constant_images},
            f"at most {params.max_constant_images} single-colour images",
        ),
    ]
    if full:
        tol = params.channel_stats_tolerance
        checks += [
            Check(
                "channel_mean",
                "channels",
                "ExpectColumnValuesToBeBetween",
                {"column": "mean_error", "min_value": 0, "max_value": tol},
                f"train per-channel mean within {tol} of {list(params.channel_mean)}",
            ),
            Check(
                "channel_std",
                "channels",
                "ExpectColumnValuesToBeBetween",
                {"column": "std_error", "min_value": 0, "max_value": tol},
                f"train per-channel std within {tol} of {list(params.channel_std)}",
            ),
        ]
    return checks


def is_full_data(data: DataParams, source: dict[str, int]) -> bool:
    """Whether the train split comes from the whole official training set (the stats check applies)."""
    return data.limit_train is None and source.get("train") == FULL_TRAIN_SOURCE


def tables(
    splits: dict[str, Split], data: DataParams, params: ValidateParams, source: dict[str, int], full: bool
) -> dict[str, pd.DataFrame]:
    frames = {
        "images": summaries.images_frame(splits),
        "classes": summaries.classes_frame(splits),
        "sizes": summaries.sizes_frame(splits, summaries.expected_sizes(source, data)),
    }
    if full and splits["train"].x.ndim == 4:  # a misshapen array is image_shape's to report
        frames["channels"] = summaries.channels_frame(splits["train"].x, params)
    return frames


def run_checks(checks: list[Check], frames: dict[str, pd.DataFrame]) -> Outcome:
    """Run every check through Great Expectations; one suite and validation definition per table."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # A file context in a folder we delete ourselves: the ephemeral one leaves a temp folder behind.
    with tempfile.TemporaryDirectory(prefix="gx-") as root:
        context = gx.get_context(mode="file", project_root_dir=root)
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        return _run_suites(context, checks, frames)


def _run_suites(context: Any, checks: list[Check], frames: dict[str, pd.DataFrame]) -> Outcome:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    source = context.data_sources.add_pandas("prepared_arrays")
    outcome = Outcome()
    for table, frame in frames.items():
        mine = [c for c in checks if c.table == table]
        if not mine:
            continue
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe(f"{table}_all")
        suite = context.suites.add(gx.ExpectationSuite(name=f"cifar10_{table}"))
        for check in mine:
            suite.add_expectation(getattr(gxe, check.expectation)(**check.kwargs, meta={"name": check.name}))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{table}", data=batch, suite=suite)
        )
        result = definition.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
        by_name = {r.expectation_config.meta["name"]: r for r in result.results}
        for check in mine:
            outcome.entries.append(_entry(check, by_name[check.name], frame))
    return outcome


def _entry(check: Check, result: Any, frame: pd.DataFrame) -> dict[str, Any]:
    """One validation.json entry: the check, its verdict, and where it failed."""
    details = dict(result.result or {})
    entry: dict[str, Any] = {
        "name": check.name,
        "table": check.table,
        "expectation": result.expectation_config.type,
        "description": check.description,
        "kwargs": {k: v for k, v in check.kwargs.items()},
        "success": bool(result.success),
    }
    if result.exception_info and result.exception_info.get("raised_exception"):
        entry["error"] = result.exception_info.get("exception_message")
    for key in ("observed_value", "unexpected_count", "element_count", "partial_missing_list"):
        if key in details and details[key] is not None:
            entry[key] = _plain(details[key])
    index = details.get("partial_unexpected_index_list") or []
    if index and "split" in frame.columns:
        # Say *where*: "train[17]" beats a row number of a frame nobody sees.
        entry["examples"] = [_where(frame, i) for i in index[:10]]
    if check.name == "no_test_leakage" and frame["leaked"].any():
        entry["examples"] = [f"test[{p}]" for p in frame.loc[frame["leaked"] == 1, "position"].head(10)]
    if check.name == "constant_images" and frame["is_constant"].any():
        rows = frame.loc[frame["is_constant"] == 1].head(10)
        entry["examples"] = [f"{s}[{p}]" for s, p in zip(rows["split"], rows["position"])]
    return entry


def _where(frame: pd.DataFrame, i: Any) -> str:
    row = frame.loc[i]
    if "position" in frame.columns:
        return f"{row['split']}[{row['position']}]"
    label = f", class {row['label']}" if "label" in frame.columns else ""
    return f"{row['split']}{label}"


def _plain(value: Any) -> Any:
    """GE hands back numpy scalars and tuples; JSON wants plain values."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        return value.item()
    return value


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page (inline CSS, no scripts, no CDN) a person can open offline."""
    return templating.render("validation.html.j2", report=report, details=DETAILS)


def validate(folder: Path, data: DataParams, params: ValidateParams) -> dict[str, Any]:
    """Load the prepared splits, run every check, and return the report (pure apart from reading)."""
    try:
        splits = {name: load_split(name, folder) for name in SPLITS}
        source = json.loads((folder / "facts.json").read_text())["source"]
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise StageError(f"{folder}: cannot read the prepared data ({exc}); run the preprocess stage first") from None
    full = is_full_data(data, source)
    outcome = run_checks(build_checks(data, params, full), tables(splits, data, params, source, full))
    if not full:
        outcome.skipped.append(
            {
                "name": "channel_mean/channel_std",
                "reason": "only checked on the full training set (data.limit_train: null, "
                f"{FULL_TRAIN_SOURCE} source images)",
            }
        )
    import great_expectations as gx

    return {
        "success": outcome.success,
        "failed": outcome.failed,
        "sizes": {name: int(len(s.y)) for name, s in splits.items()},
        "expectations": outcome.entries,
        "skipped": outcome.skipped,
        "great_expectations_version": gx.__version__,
    }


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """The few scalars of a validation report that belong in ``dvc exp show``."""
    return {
        "success": report["success"],
        "failed": len(report["failed"]),
        "expectations": len(report["expectations"]),
        "sizes": report["sizes"],
    }


def failure_message(report: dict[str, Any]) -> str:
    lines = [f"data validation failed ({len(report['failed'])} expectation(s)); see {VALIDATION_HTML}:"]
    for e in report["expectations"]:
        if not e["success"]:
            found = {k: e[k] for k in DETAILS if k in e}
            lines.append(f"  - {e['name']}: expected {e['description']}; found {found}")
    return "\n".join(lines)
