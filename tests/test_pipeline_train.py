"""End to end: the real `dvc repro` of every stage (the test run's trained pipeline), a second repo that
restores all of it from DVC's run-cache, and the trained models as registry artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TrainedPipeline, commit_all, dvc, run

STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@pytest.mark.e2e
def test_every_stage_ran_once_and_a_second_repo_restores_them_from_the_run_cache(
    trained_pipeline: TrainedPipeline, seeded_repo: Path, tmp_path: Path
) -> None:
    for stage in STAGES:
        assert f"Running stage '{stage}'" in trained_pipeline.log, trained_pipeline.log

    restored = dvc("repro", cwd=seeded_repo).stdout
    assert "Running stage" not in restored, restored
    for stage in STAGES:
        assert f"Stage '{stage}' is cached - skipping run" in restored, restored
    for name in ("alexnet.keras", "alexnet.onnx", "vgg16.keras", "vgg16.onnx"):
        assert (seeded_repo / "models" / name).read_bytes() == (trained_pipeline.repo / "models" / name).read_bytes()
    assert "Running stage" not in dvc("repro", cwd=seeded_repo).stdout

    # The restored `cache: false` metrics and plots read as the trained ones.
    for name in ("alexnet", "vgg16"):
        assert json.loads((seeded_repo / f"metrics/{name}.json").read_text())["epochs_run"] == 2
    shown = json.loads(dvc("metrics", "show", "--json", cwd=seeded_repo).stdout)[""]["data"]
    assert "best_val_accuracy" in shown["metrics/alexnet.json"]["data"]
    # DVCLive's log is a stage output DVC reads: the latest epoch as metrics, every epoch as plots.
    latest = shown["dvclive/vgg16/metrics.json"]["data"]
    assert latest["step"] == 2 and latest["phase"] == "fine_tune"
    plots = json.loads(dvc("plots", "show", "--json", cwd=seeded_repo).stdout)["data"]
    assert len(plots["Accuracy"][0]["content"]["data"]["values"]) == 2 * 2 * 2  # models x train/val x epochs

    # Both models are registry artifacts (dvc.yaml `artifacts:`): tag a version, fetch it from elsewhere.
    commit_all(seeded_repo, "trained")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("alexnet", "vgg16"):
        run(["git", "tag", "-a", f"{name}@v1.0.0", "-m", f"register {name} 1.0.0"], cwd=seeded_repo)
        dvc("artifacts", "get", str(seeded_repo), name, cwd=elsewhere)
        fetched = elsewhere / f"{name}.keras"
        assert fetched.read_bytes() == (seeded_repo / f"models/{name}.keras").read_bytes()
        # Its ONNX export is an artifact of its own, for users without this project.
        run(["git", "tag", "-a", f"{name}-onnx@v1.0.0", "-m", f"register {name}-onnx 1.0.0"], cwd=seeded_repo)
        dvc("artifacts", "get", str(seeded_repo), f"{name}-onnx", cwd=elsewhere)
        assert (elsewhere / f"{name}.onnx").read_bytes() == (seeded_repo / f"models/{name}.onnx").read_bytes()
