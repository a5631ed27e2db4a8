"""The evaluation report's rendering, without training anything: the same facts in the markdown and
the HTML, and every user-supplied string shown as text in the HTML, never as markup."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest

from tasks.core.params import EvaluateParams
from tasks.data.splits import Split
from tasks.reporting import figures, report

EVIL = "<script>alert('x')</script>"  # a quote too: it must not end an attribute
CLASSES = [EVIL, *(f"class{i}" for i in range(1, 10))]


def result(name: str, probs: np.ndarray) -> SimpleNamespace:
    """What report.build reads of an evaluate.Evaluated (without importing Keras for it)."""
    per_class = {c: {"precision": 0.5, "recall": 0.25, "f1": 0.125} for c in CLASSES}
    return SimpleNamespace(
        name=name,
        probs=probs,
        scores={
            "test_accuracy": 0.8,
            "test_loss": 0.5,
            "macro_f1": 0.75,
            "per_class": per_class,
            "confusion_matrix": [[1] * 10] * 10,
        },
        speed={"throughput_images_per_second": 1000.0, "latency_ms_batch1": 2.5},
        training={"params": 1234567, "epochs_run": 3, "train_seconds": 61.0},
        meta={
            "params": {"weights": "none", "note": EVIL},
            "devices": {"host": EVIL, "keras_backend": "jax", "devices": ["cpu:0"]},
            "precision_policy": "float32",
        },
        export={
            "model_file_mib": 12.25,
            "export_file_mib": 11.5,
            "export_throughput_images_per_second": 800.0,
            "export_latency_ms_batch1": 1.25,
            "export_top1_agreement": 0.9995,
            "export_max_probability_difference": 0.0004,
        },
        history=[{"epoch": 1, "train_accuracy": 0.5, "val_accuracy": 0.4, "train_loss": 1.0, "val_loss": 1.1}],
    )


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, dict[str, bytes]]:
    # vl-convert is slow and beside the point here: any PNG will do.
    monkeypatch.setattr(figures, "render_png", lambda spec, scale=1.5: figures.png_bytes(np.zeros((2, 2, 3), np.uint8)))
    y = np.arange(10)
    probs = np.full((10, 10), 0.05)
    probs[np.arange(10), (y + 1) % 10] = 0.55  # every image wrong, predicted as the next class
    probs[9, 0] = 0.6  # the most confident mistake predicts the class with the hostile name
    test = Split(x=np.zeros((10, 4, 4, 3), np.uint8), y=y)
    context = {
        "evaluated": "2024-01-01T00:00:00",
        "devices": {"host": "here", "keras_backend": "tensorflow", "devices": ["CPU"]},
        "packages": {"keras": "3.5.0", "evil": EVIL},
        "experiment": "quick-cpu",
    }
    results = [result("alexnet", probs), result("vgg16", np.eye(10)[y])]
    results[0].meta["params"]["test_time_augmentation"] = "flip"  # VGG16's older records lack the key
    return report.build(
        results, test, CLASSES, EvaluateParams(batch_size=8, latency_repeats=1, worst_mistakes=3), context
    )


def test_markdown_and_html_show_the_same_facts(built: tuple[str, str, dict[str, bytes]]) -> None:
    md, page, files = built
    assert md.startswith("# CIFAR-10: AlexNet from scratch vs VGG16 (random init)\n")
    setting = "Setting: DVC experiment quick-cpu (the settings of configs/quick-cpu.yaml)."
    assert setting in md and setting in page
    # VGG16 from random weights against the student's ImageNet-pretrained one: the row says so.
    vgg16 = (
        "| VGG16 (random init) | 80.00 % | 0.5000 | 0.7500 | 78.62 % (ImageNet-pretrained) "
        "| +1.38 pt (random init vs pretrained) |"
    )
    assert vgg16 in md, md
    assert "| AlexNet | 80.00 % | 0.5000 | 0.7500 | 79.12 % | +0.88 pt | 1,234,567 | 3 | 61 s | 1000 | 2.50 ms |" in md
    assert "<td>80.00 %</td><td>0.5000</td><td>0.7500</td><td>79.12 %</td><td>+0.88 pt</td>" in page
    # Each model beside its ONNX export: sizes, CPU speed, agreement.
    assert "| AlexNet | alexnet.keras | 12.2 MiB | 1000 | 2.50 ms |  |" in md
    assert "| AlexNet | alexnet.onnx | 11.5 MiB | 800 | 1.25 ms | 99.95 % same top-1, max difference 4.0e-04 |" in md
    assert "<td>alexnet.onnx</td><td>11.5 MiB</td><td>800</td>" in page
    assert "VGG16 made no mistakes on the test split." in md and "VGG16 made no mistakes on the test split." in page
    flip_note = "its test predictions average each image with its mirror image"
    assert md.count(flip_note) == 1 and page.count(flip_note) == 1
    assert sorted(files) == [
        "confusion_alexnet.png",
        "confusion_vgg16.png",
        "curves_accuracy.png",
        "curves_loss.png",
        "mistake_alexnet_00.png",
        "mistake_alexnet_01.png",
        "mistake_alexnet_02.png",
    ]
    assert sorted(re.findall(r"\]\(figures/([^)]+)\)", md)) == sorted(files)
    assert len(re.findall(r"src='data:image/png;base64,[^']+'", page)) == len(files)


def test_html_escapes_class_names_params_and_hosts(built: tuple[str, str, dict[str, bytes]]) -> None:
    md, page, _ = built
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    assert f"<td>{escaped}</td>" in page  # the class name in the per-class table
    assert f"alt='#9: true class9, predicted {escaped} (60%)'" in page  # a mistake's caption, in an attribute
    assert f"Trained on {escaped} with jax" in page
    assert f"&#34;note&#34;: &#34;{escaped}&#34;" in page  # the params JSON
    assert EVIL in md  # markdown shows the text as given


def test_the_setting_names_the_experiment_and_its_config(tmp_path) -> None:
    (tmp_path / "quick-cpu.yaml").write_text("alexnet: {}\n")
    assert report.setting(None, tmp_path) == "params.yaml as it stands (dvc repro)"
    assert (
        report.setting("quick-cpu", tmp_path)
        == f"DVC experiment quick-cpu (the settings of {tmp_path.as_posix()}/quick-cpu.yaml)"
    )
    assert report.setting("lunar-orbit", tmp_path) == "DVC experiment lunar-orbit"
