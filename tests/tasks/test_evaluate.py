"""Stage evaluate: metrics of both models on the test split, confusion plots, and the report."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import TrainedPipeline, copy_of, finish, needs_mount, set_params, stage, stage_on_small_disk

SECTIONS = (
    "## Comparison",
    "## Exported models",
    "## Per class",
    "## Confusion matrices",
    "## Training curves",
    "## Most confident mistakes: AlexNet",
    "## Most confident mistakes: VGG16",
    "## What produced these numbers",
)


@pytest.fixture(scope="module")
def evaluated(trained_pipeline: TrainedPipeline, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the test run's trained pipeline: both models trained and evaluated by the real stages."""
    work = tmp_path_factory.mktemp("evaluate") / "work"
    shutil.copytree(trained_pipeline.repo, work, ignore=shutil.ignore_patterns(".dvc", ".git"))
    return work


@pytest.mark.e2e
def test_metrics_per_model(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics/evaluate.json").read_text())
    assert set(metrics) == {"alexnet", "vgg16"}
    for name, m in metrics.items():
        for key in (
            "test_accuracy",
            "test_loss",
            "macro_precision",
            "macro_recall",
            "macro_f1",
            "params",
            "model_file_mib",
            "throughput_images_per_second",
            "latency_ms_batch1",
            "train_seconds",
        ):
            assert m[key] is not None, (name, key)
        assert 0.0 <= m["test_accuracy"] <= 1.0 and m["latency_ms_batch1"] > 0
        assert "per_class" not in m, "per-class scores are a plot, not dvc exp show columns"
        rows = (evaluated / f"plots/per_class/{name}.csv").read_text().splitlines()
        assert rows[0] == "class,precision,recall,f1,support"
        assert [r.split(",")[0] for r in rows[1:]] == [
            "airplane",
            "automobile",
            "bird",
            "cat",
            "deer",
            "dog",
            "frog",
            "horse",
            "ship",
            "truck",
        ]
        assert sum(int(r.split(",")[4]) for r in rows[1:]) == 100
        # The ONNX export beside each model: its size, CPU speed, and agreement with the .keras model.
        assert m["export_file_mib"] > 0 and m["export_throughput_images_per_second"] > 0
        assert m["export_top1_agreement"] >= 0.9 and m["export_max_probability_difference"] <= 0.1  # bf16 model
        training = json.loads((evaluated / f"metrics/{name}.json").read_text())
        assert m["train_seconds"] == training["train_seconds"] and m["params"] == training["params"]


@pytest.mark.e2e
def test_confusion_plot_data_matches_accuracy(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "metrics/evaluate.json").read_text())
    for name in ("alexnet", "vgg16"):
        rows = (evaluated / f"plots/confusion/{name}.csv").read_text().splitlines()
        assert rows[0] == "actual,predicted" and len(rows) == 101  # the 100 fixture test images
        correct = sum(a == p for a, p in (r.split(",") for r in rows[1:]))
        assert correct / 100 == pytest.approx(metrics[name]["test_accuracy"])


@pytest.mark.e2e
def test_report_has_every_section_and_the_numbers(evaluated: Path) -> None:
    md = (evaluated / "reports/report.md").read_text()
    metrics = json.loads((evaluated / "metrics/evaluate.json").read_text())
    for section in SECTIONS:
        assert section in md
    assert "79.12 %" in md and "78.62 %" in md
    # The fixture's VGG16 starts from random weights: the report must not call it ImageNet VGG16, and its row
    # says the student's figure it is set against was ImageNet-pretrained.
    assert md.startswith("# CIFAR-10: AlexNet from scratch vs VGG16 (random init)\n\nSetting: params.yaml as it")
    assert "ImageNet VGG16" not in md and "VGG16 (ImageNet weights)" not in md
    assert "| 78.62 % (ImageNet-pretrained) |" in md and " pt (random init vs pretrained) |" in md
    for name, label in (("alexnet", "AlexNet"), ("vgg16", "VGG16 (random init)")):
        assert f"| {label} | {100 * metrics[name]['test_accuracy']:.2f} % |" in md
    for name in ("alexnet", "vgg16"):
        assert f"| {name}.onnx | {metrics[name]['export_file_mib']:.1f} MiB |" in md
    for image in re.findall(r"\]\(figures/([^)]+)\)", md):
        assert (evaluated / "reports/figures" / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.e2e
def test_html_report_is_self_contained(evaluated: Path) -> None:
    page = (evaluated / "reports/report.html").read_text()
    assert "<script" not in page
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page), "nothing may load from the network"
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) >= 5  # 2 confusion matrices, 2 curves, mistakes
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "Comparison" in page and "79.12 %" in page


def test_missing_model_is_a_clear_error(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path)
    code, log = finish(stage("tasks.evaluate", work))
    assert code == 2 and "run the train_alexnet stage first" in log and "Traceback" not in log
    assert not (work / "metrics/evaluate.json").exists()


def _outputs(work: Path) -> dict[str, bytes]:
    found = [*(work / "reports").rglob("*"), *(work / "plots").rglob("*"), work / "metrics/evaluate.json"]
    return {str(p.relative_to(work)): p.read_bytes() for p in sorted(found) if p.is_file()}


@pytest.mark.e2e
@needs_mount
def test_a_failed_evaluate_changes_none_of_its_outputs(evaluated: Path, tmp_path: Path) -> None:
    """The metrics cannot be written (a full disk under metrics/): the report, its figures and the plots
    written before stay the previous run's, and no temporary file is left beside them."""
    work = tmp_path / "work"
    shutil.copytree(evaluated, work)
    set_params(work, evaluate={"worst_mistakes": 4})  # a report that differs from the one on disk
    before = _outputs(work)
    code, log = stage_on_small_disk("tasks.evaluate", work, "metrics", "64k", fill=True)
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    print(errors, "exit", code)
    assert code == 75 and len(errors) == 1 and "Traceback" not in log  # transient: space may be freed
    assert errors[0].startswith("error: disk full, writing metrics/evaluate.json: [Errno 28]")
    assert _outputs(work) == before


@pytest.mark.e2e
def test_a_model_whose_lambda_names_a_module_function_is_one_line(evaluated: Path, tmp_path: Path) -> None:
    """Keras' safe mode will not rebuild a Lambda around ``operator.neg``: a wrong model file, one line."""
    import operator

    import keras

    work = tmp_path / "work"
    shutil.copytree(evaluated, work)
    before = _outputs(work)
    foreign = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Lambda(operator.neg)])
    foreign.save(work / "models/alexnet.keras")
    code, log = finish(stage("tasks.evaluate", work))
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    print(errors, "exit", code)
    assert code == 2 and len(errors) == 1 and "Traceback" not in log
    assert errors[0].startswith(
        "error: damaged or not the right kind of file, reading models/alexnet.keras (a Keras model): TypeError: "
    )
    assert _outputs(work) == before
