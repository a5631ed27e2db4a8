"""Reviewing changes the way users do: `dvc metrics diff`, `dvc params diff`, experiments, offline plots."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, dvc, run, set_params

COMMIT = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm"]


@pytest.mark.e2e
def test_two_commits_and_two_experiments_are_reviewable(seeded_repo: Path) -> None:
    dvc_repo = seeded_repo
    # The developer tools (tools.plots_diff below) are part of a checkout, though no stage needs them.
    shutil.copytree(REPO / "tools", dvc_repo / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    first = dvc("repro", cwd=dvc_repo)
    assert "Stage 'evaluate' is cached - skipping run" in first.stdout  # the test run's trained pipeline
    assert (dvc_repo / "reports/report.html").is_file()
    run(["git", "add", "-A"], cwd=dvc_repo)
    run([*COMMIT, "baseline"], cwd=dvc_repo)

    set_params(dvc_repo, alexnet={"width": 0.125})
    second = dvc("repro", cwd=dvc_repo)
    assert "Running stage 'train_alexnet'" in second.stdout and "Running stage 'train_vgg16'" not in second.stdout
    run(["git", "add", "-A"], cwd=dvc_repo)
    run([*COMMIT, "wider alexnet"], cwd=dvc_repo)

    params = json.loads(dvc("params", "diff", "HEAD~1", "HEAD", "--json", cwd=dvc_repo).stdout)
    assert params["params.yaml"]["alexnet.width"] == {"old": 0.0625, "new": 0.125, "diff": 0.0625}
    metrics = json.loads(dvc("metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=dvc_repo).stdout)
    assert metrics["metrics/evaluate.json"]["alexnet.params"]["diff"] > 0
    assert "vgg16.params" not in metrics["metrics/evaluate.json"], "an unchanged model shows no diff"

    # Offline rendering of `dvc plots diff` between the two commits.
    out = dvc_repo / "plots_diff"
    run([sys.executable, "-m", "tools.plots_diff", "HEAD~1", "HEAD", "--out", str(out)], cwd=dvc_repo)
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} >= {"Accuracy.png", "Loss.png", "plots_confusion_alexnet.csv.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs)
    page = (out / "index.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page

    # Two experiments whose every stage ran before (DVC takes them from the run-cache): the first commit's
    # AlexNet, then the second's again.
    narrow = dvc("exp", "run", "-n", "narrow", "-S", "alexnet.width=0.0625", cwd=dvc_repo).stdout
    wide = dvc("exp", "run", "-n", "wide", "-S", "alexnet.width=0.125", cwd=dvc_repo).stdout  # on the workspace
    for output in (narrow, wide):
        assert "Stage 'train_alexnet' is cached - skipping run" in output and "Running stage" not in output, output
    shown = json.loads(dvc("exp", "show", "--json", cwd=dvc_repo).stdout)
    names = {exp.get("name") for rev in shown for exp in (rev.get("experiments") or []) for exp in exp["revs"]}
    assert {"narrow", "wide"} <= names
    diff = json.loads(dvc("metrics", "diff", "narrow", "wide", "--json", cwd=dvc_repo).stdout)
    assert diff["metrics/alexnet.json"]["params"]["diff"] > 0
    assert "metrics/vgg16.json" not in diff, "the same VGG16 in both"
    changed = json.loads(dvc("params", "diff", "narrow", "wide", "--json", cwd=dvc_repo).stdout)
    assert changed["params.yaml"] == {"alexnet.width": {"old": 0.0625, "new": 0.125, "diff": 0.0625}}
