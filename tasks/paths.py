"""Every file the stages read or write, and the models the pipeline trains: named once, here.

dvc.yaml names the same paths (DVC needs them as deps and outs); tests/tasks/test_paths.py checks
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
    metrics: Path
    history: Path
    meta: Path


def outputs_for(name: str) -> Outputs:
    return Outputs(
        Path(f"models/{name}.keras"),
        Path(f"metrics/{name}.json"),
        Path(f"plots/train/{name}.csv"),
        Path(f"models/{name}.meta.json"),
    )
