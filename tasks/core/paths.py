"""Every file the stages read or write, and the models the pipeline trains: named once, here.

dvc.yaml names the same paths (DVC needs them as deps and outs); tests/tasks/core/test_paths.py checks
that the two agree, so a path cannot change in one place only. Stages and flows import from here
rather than from each other, so no module loads another stage's dependencies just to learn a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The models the pipeline trains, in report order.
MODELS = ("alexnet", "vgg16")

PARAMS = Path("params.yaml")
ARCHIVE = Path("data/raw/cifar-10-python.tar.gz")
PREPARED = Path("data/prepared")
VALIDATION_REPORT = Path("reports/validation.json")
VALIDATION_METRICS = Path("metrics/validation.json")
VALIDATION_HTML = Path("reports/validation.html")
EVALUATE_METRICS = Path("metrics/evaluate.json")
CONFUSION = Path("plots/confusion")
#: Per-class precision/recall/F1 per model: a plot (``dvc plots``), not metrics -- 40 columns a model
#: would bury the headline figures of ``dvc exp show``.
PER_CLASS = Path("plots/per_class")
REPORT_MD = Path("reports/report.md")
REPORT_HTML = Path("reports/report.html")
FIGURES = Path("reports/figures")


@dataclass(frozen=True)
class Outputs:
    """What a training stage writes for one model."""

    model: Path
    #: The same inference model as ONNX (float32), loadable without this project (tasks.model.export).
    export: Path
    #: The run's summary, written once it ends (best and final scores, time, size).
    metrics: Path
    meta: Path
    #: DVCLive's folder (tasks.model.epoch_log), rewritten after every epoch so DVC follows a running stage.
    live: Path
    #: In ``live``: the latest epoch's numbers (``dvc exp show``, ``dvc metrics show``).
    live_metrics: Path
    #: In ``live``: one ``<name>.tsv`` per number, a row per epoch (``dvc plots``, the report's curves).
    history: Path


def outputs_for(name: str) -> Outputs:
    live = Path(f"dvclive/{name}")
    return Outputs(
        model=Path(f"models/{name}.keras"),
        export=Path(f"models/{name}.onnx"),
        metrics=Path(f"metrics/{name}.json"),
        meta=Path(f"models/{name}.meta.json"),
        live=live,
        # DVCLive's own layout inside its folder (tasks.model.epoch_log writes it).
        live_metrics=live / "metrics.json",
        history=live / "plots/metrics",
    )
