"""End to end: the real `dvc repro` through both training stages in a temporary git repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import dvc, run, tiny_training


@pytest.mark.slow
def test_dvc_repro_through_both_training_stages(dvc_repo: Path, tmp_path: Path) -> None:
    tiny_training(dvc_repo)
    proc = dvc("repro", "train_alexnet", "train_vgg16", cwd=dvc_repo)
    assert "Running stage 'train_alexnet'" in proc.stdout and "Running stage 'train_vgg16'" in proc.stdout
    for name in ("alexnet", "vgg16"):
        assert (dvc_repo / f"models/{name}.keras").is_file()
        metrics = json.loads((dvc_repo / f"metrics/{name}.json").read_text())
        assert metrics["epochs_run"] == 2
    shown = dvc("metrics", "show", "--json", cwd=dvc_repo).stdout
    assert "best_val_accuracy" in shown and "metrics/alexnet.json" in shown
    # DVCLive's log is a stage output DVC reads: the latest epoch as metrics, every epoch as plots.
    latest = json.loads(shown)[""]["data"]["dvclive/vgg16/metrics.json"]["data"]
    assert latest["step"] == 2 and latest["phase"] == "fine_tune"
    plots = json.loads(dvc("plots", "show", "--json", cwd=dvc_repo).stdout)["data"]
    assert len(plots["Accuracy"][0]["content"]["data"]["values"]) == 2 * 2 * 2  # models x train/val x epochs
    again = dvc("repro", "train_alexnet", "train_vgg16", cwd=dvc_repo)
    assert "Running stage" not in again.stdout

    # Both models are registry artifacts (dvc.yaml `artifacts:`): tag a version, fetch it from elsewhere.
    run(["git", "add", "-A"], cwd=dvc_repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "trained"], cwd=dvc_repo)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("alexnet", "vgg16"):
        run(["git", "tag", "-a", f"{name}@v1.0.0", "-m", f"register {name} 1.0.0"], cwd=dvc_repo)
        dvc("artifacts", "get", str(dvc_repo), name, cwd=elsewhere)
        fetched = elsewhere / f"{name}.keras"
        assert fetched.read_bytes() == (dvc_repo / f"models/{name}.keras").read_bytes()
        # Its ONNX export is an artifact of its own, for users without this project.
        run(["git", "tag", "-a", f"{name}-onnx@v1.0.0", "-m", f"register {name}-onnx 1.0.0"], cwd=dvc_repo)
        dvc("artifacts", "get", str(dvc_repo), f"{name}-onnx", cwd=elsewhere)
        assert (elsewhere / f"{name}.onnx").read_bytes() == (dvc_repo / f"models/{name}.onnx").read_bytes()
