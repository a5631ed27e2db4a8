"""End to end: the real `dvc repro` of every stage (the test run's trained pipeline), a second repo that
restores all of it from DVC's run-cache, the trained models as registry artifacts promoted by stage (GTO),
and `python -m tasks.predict` with no option, with a staged artifact, and with a stage nobody assigned."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

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
    assert latest["step"] == 2 and latest["phase"] == "train"
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

    # Promotion by stage: "v1.0.0 is prod", fetched by its stage; predict classifies with it, and with no
    # option at all picks the workspace's better model.
    for name in ("alexnet", "alexnet-onnx"):
        run(["gto", "assign", name, "--version", "v1.0.0", "--stage", "prod"], cwd=seeded_repo)
    shown = json.loads(run(["gto", "show", "--json"], cwd=seeded_repo).stdout)
    assert shown["alexnet"]["stage"] == {"prod": "v1.0.0"} and not any(shown["vgg16"]["stage"].values()), shown
    dvc("artifacts", "get", str(seeded_repo), "alexnet", "--stage", "prod", "-o", "prod.keras", cwd=elsewhere)
    assert (elsewhere / "prod.keras").read_bytes() == (seeded_repo / "models/alexnet.keras").read_bytes()

    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)).save(picture)
    scores = json.loads((seeded_repo / "metrics/evaluate.json").read_text())
    better = max(("alexnet", "vgg16"), key=lambda m: scores[m]["test_accuracy"])
    first = run([sys.executable, "-m", "tasks.predict", str(picture)], cwd=seeded_repo)
    assert first.stderr.startswith(f"model: models/{better}.onnx (the better"), first.stderr
    assert first.stdout.startswith(f"{picture}: ") and len(first.stdout.splitlines()) == 1, first.stdout
    staged = run(
        [sys.executable, "-m", "tasks.predict", str(picture), "--artifact", "alexnet-onnx", "--stage", "prod"],
        cwd=seeded_repo,
    )
    assert staged.stdout.startswith(f"{picture}: "), staged.stderr
    unassigned = run(
        [sys.executable, "-m", "tasks.predict", str(picture), "--artifact", "vgg16", "--stage", "prod"],
        cwd=seeded_repo,
        check=False,
    )
    assert unassigned.returncode == 2 and unassigned.stdout == "", unassigned
    [line] = unassigned.stderr.strip().splitlines()
    assert line.startswith("error: cannot fetch the registry's model vgg16 at stage prod from .: "), line
    assert "Unable to find artifact 'vgg16 @ prod'" in line, line
