"""The evaluation report: ``reports/report.md`` plus a self-contained ``reports/report.html``.

This module works out what the report says (tables of formatted figures, the figures' PNGs and
captions, where the models were trained); the templates ``tasks/reporting/templates/report.md.j2`` and
``report.html.j2`` lay the same content out twice. The markdown links the PNGs in
``reports/figures/``; the HTML embeds them as data URIs and carries its own CSS, so it displays
offline from a single file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.core.atomic import atomic_path, discard, write_text
from tasks.core.params import EvaluateParams
from tasks.core.paths import FIGURES, REPORT_HTML, REPORT_MD, outputs_for
from tasks.data.splits import Split
from tasks.reporting import classification, figures, templating

if TYPE_CHECKING:
    from tasks.reporting.evaluation import Evaluated

#: The student report this project starts from (test accuracy; it early-stopped on the test set).
STUDENT = {"alexnet": 0.7912, "vgg16": 0.7862}
LABELS = {"alexnet": "AlexNet", "vgg16": "VGG16"}


@dataclass(frozen=True)
class Table:
    """Column headers and rows of cells, already formatted: both renderings show the same text."""

    headers: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Figure:
    """A PNG written to ``reports/figures/<file>`` (linked from the markdown, embedded in the HTML)."""

    file: str
    png: bytes
    caption: str


def mistakes(result: Evaluated, test: Split, class_names: list[str], k: int) -> list[Figure]:
    """The ``k`` most confident mistakes: image, true label, predicted label and confidence."""
    found = []
    for rank, i in enumerate(classification.worst_mistakes(test.y, result.probs, k)):
        pred = int(result.probs[i].argmax())
        caption = f"#{i}: true {class_names[test.y[i]]}, predicted {class_names[pred]} ({result.probs[i, pred]:.0%})"
        found.append(Figure(f"mistake_{result.name}_{rank:02d}.png", figures.png_bytes(test.x[i], scale=3), caption))
    return found


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _vgg16_weights(result: Evaluated) -> str:
    """How VGG16's base started (``vgg16.weights`` as the run recorded it)."""
    return str(result.meta.get("params", {}).get("weights", "imagenet"))


def model_label(result: Evaluated) -> str:
    """The model's name as the report shows it; VGG16's says how its base started (vgg16.weights)."""
    if result.name != "vgg16":
        return LABELS[result.name]
    weights = _vgg16_weights(result)
    if weights == "imagenet":
        return "VGG16 (ImageNet weights)"
    if weights == "none":
        return "VGG16 (random init)"
    return f"VGG16 (weights from {Path(weights).name})"


def setting(experiment: str | None, configs: Path = Path("configs")) -> str:
    """What the report compares, for its header: the DVC experiment it ran in (and the config of that name,
    where one exists, as `make quick` runs configs/quick-cpu.yaml as experiment quick-cpu) or params.yaml."""
    if not experiment:
        return "params.yaml as it stands (dvc repro)"
    config = configs / f"{experiment}.yaml"
    return f"DVC experiment {experiment}" + (f" (the settings of {config.as_posix()})" if config.is_file() else "")


def from_scratch(result: Evaluated) -> bool:
    """Whether VGG16 started from random weights, unlike the student's ImageNet-pretrained one."""
    return result.name == "vgg16" and _vgg16_weights(result) == "none"


def title(results: list[Evaluated]) -> str:
    return "CIFAR-10: " + " vs ".join(
        "AlexNet from scratch" if r.name == "alexnet" else model_label(r) for r in results
    )


def comparison(results: list[Evaluated]) -> Table:
    rows = []
    for r in results:
        s, sp, t = r.scores, r.speed, r.training
        rows.append(
            [
                model_label(r),
                _pct(s["test_accuracy"]),
                f"{s['test_loss']:.4f}",
                f"{s['macro_f1']:.4f}",
                _pct(STUDENT[r.name]) + (" (ImageNet-pretrained)" if from_scratch(r) else ""),
                f"{100 * (s['test_accuracy'] - STUDENT[r.name]):+.2f} pt"
                + (" (random init vs pretrained)" if from_scratch(r) else ""),
                f"{t.get('params', 0):,}",
                t.get("epochs_run"),
                f"{t.get('train_seconds', 0):.0f} s",
                f"{sp['throughput_images_per_second']:.0f}",
                f"{sp['latency_ms_batch1']:.2f} ms",
            ]
        )
    return Table(
        [
            "model",
            "test accuracy",
            "test loss",
            "macro F1",
            "student's test accuracy",
            "difference",
            "parameters",
            "epochs",
            "training time",
            "inference img/s",
            "latency (batch 1)",
        ],
        rows,
    )


def deployment(results: list[Evaluated]) -> Table:
    """Each model as trained (``.keras``, Keras) beside its ONNX export (float32, onnxruntime): file size and
    CPU inference speed, and how closely the export reproduces the model's test predictions."""
    rows = []
    for r in results:
        out, e, sp = outputs_for(r.name), r.export, r.speed
        rows.append(
            [
                LABELS[r.name],
                out.model.name,
                f"{e['model_file_mib']:.1f} MiB",
                f"{sp['throughput_images_per_second']:.0f}",
                f"{sp['latency_ms_batch1']:.2f} ms",
                "",
            ]
        )
        rows.append(
            [
                LABELS[r.name],
                out.export.name,
                f"{e['export_file_mib']:.1f} MiB",
                f"{e['export_throughput_images_per_second']:.0f}",
                f"{e['export_latency_ms_batch1']:.2f} ms",
                f"{100 * e['export_top1_agreement']:.2f} % same top-1, max difference "
                f"{e['export_max_probability_difference']:.1e}",
            ]
        )
    return Table(["model", "file", "size", "inference img/s", "latency (batch 1)", "agreement with .keras"], rows)


def per_class(results: list[Evaluated], class_names: list[str]) -> Table:
    headers = ["class"] + [f"{LABELS[r.name]} {m}" for r in results for m in ("precision", "recall", "F1")]
    rows = [
        [c] + [f"{r.scores['per_class'][c][m]:.3f}" for r in results for m in ("precision", "recall", "f1")]
        for c in class_names
    ]
    return Table(headers, rows)


def training_runs(results: list[Evaluated]) -> list[dict[str, Any]]:
    """Where and how each model was trained, and its training params as indented JSON."""
    runs = []
    for r in results:
        where = r.meta.get("devices", {})
        runs.append(
            {
                "label": LABELS[r.name],
                "host": where.get("host", "?"),
                "backend": where.get("keras_backend", "?"),
                "devices": ", ".join(where.get("devices", [])),
                "precision": r.meta.get("precision_policy"),
                # Older runs' params lack the key: their saved models predict from the image alone.
                "test_time": r.meta.get("params", {}).get("test_time_augmentation", "none"),
                "params": json.dumps(r.meta.get("params", {}), indent=2),
            }
        )
    return runs


def confusion_figures(results: list[Evaluated], class_names: list[str]) -> list[Figure]:
    return [
        Figure(
            f"confusion_{r.name}.png",
            figures.render_png(
                figures.confusion_spec(
                    r.scores["confusion_matrix"], class_names, f"{LABELS[r.name]}: true class (rows) vs prediction"
                )
            ),
            f"{LABELS[r.name]} confusion matrix",
        )
        for r in results
    ]


def curve_figures(results: list[Evaluated]) -> list[Figure]:
    """Accuracy and loss per epoch of every model; none when no training history was recorded."""
    rows = [dict(h, model=LABELS[r.name]) for r in results for h in r.history]
    if not rows:
        return []
    return [
        Figure(
            f"curves_{metric}.png",
            figures.render_png(
                figures.curves_spec(rows, metric, f"{metric} per epoch (dashed: train, solid: validation)")
            ),
            f"{metric} curves",
        )
        for metric in ("accuracy", "loss")
    ]


def build(
    results: list[Evaluated], test: Split, class_names: list[str], params: EvaluateParams, context: dict[str, Any]
) -> tuple[str, str, dict[str, bytes]]:
    """The markdown, the HTML and the figure files of the report."""
    page = {
        "title": title(results),
        "setting": setting(context.get("experiment")),
        "test_size": len(test.y),
        "comparison": comparison(results),
        "deployment": deployment(results),
        "per_class": per_class(results, class_names),
        "confusion": confusion_figures(results, class_names),
        "curves": curve_figures(results),
        "mistakes": [(LABELS[r.name], mistakes(r, test, class_names, params.worst_mistakes)) for r in results],
        "evaluated": context["evaluated"],
        "host": context["devices"]["host"],
        "backend": context["devices"]["keras_backend"],
        "devices": ", ".join(context["devices"]["devices"]),
        "packages": Table(["package", "version"], [list(p) for p in sorted(context["packages"].items())]),
        "training": training_runs(results),
    }
    shown = [*page["confusion"], *page["curves"], *(f for _, found in page["mistakes"] for f in found)]
    return (
        templating.render("report.md.j2", **page),
        templating.render("report.html.j2", **page),
        {f.file: f.png for f in shown},
    )


def write(
    results: list[Evaluated], test: Split, class_names: list[str], params: EvaluateParams, context: dict[str, Any]
) -> None:
    md, page, files = build(results, test, class_names, params, context)
    FIGURES.mkdir(parents=True, exist_ok=True)
    for stale in FIGURES.glob("*.png"):
        if stale.name not in files:
            discard(stale)
    for name, png in files.items():
        with atomic_path(FIGURES / name) as tmp:
            tmp.write_bytes(png)
    write_text(REPORT_MD, md)
    write_text(REPORT_HTML, page)
