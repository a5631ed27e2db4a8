"""The model registry read and written through GTO's command line, in a git repository made here."""

from __future__ import annotations

import json
from pathlib import Path

from flows import registry, summary
from tests.conftest import run

GIT_ID = ["-c", "user.email=t@example.invalid", "-c", "user.name=t"]


def commit_metrics(repo: Path, accuracy: float, message: str) -> str:
    (repo / "metrics").mkdir(exist_ok=True)
    (repo / "metrics/evaluate.json").write_text(json.dumps({"alexnet": {"test_accuracy": accuracy}}))
    run(["git", "add", "metrics"], cwd=repo)
    run(["git", *GIT_ID, "commit", "-qm", message], cwd=repo)
    return run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()


def test_versions_stages_and_standings_against_prod(tmp_path: Path) -> None:
    run(["git", "init", "-q", "-b", "main", str(tmp_path)], cwd=tmp_path)
    first = commit_metrics(tmp_path, 0.80, "first")
    run(["gto", "register", "alexnet", first, "--version", "v0.1.0"], cwd=tmp_path)
    run(["gto", "assign", "alexnet", "--version", "v0.1.0", "--stage", "prod"], cwd=tmp_path)
    second = commit_metrics(tmp_path, 0.85, "better")

    entries = registry.entries(tmp_path)
    assert entries["alexnet"].latest == "v0.1.0" and entries["alexnet"].stages == {"prod": "v0.1.0"}
    assert registry.versions_at(tmp_path, first, entries) == {"alexnet": "v0.1.0 (prod)"}
    assert registry.versions_at(tmp_path, second, entries) == {}
    ours = (tmp_path / "metrics/evaluate.json").read_text()
    alexnet, vgg16 = registry.standings(tmp_path, ours, ("alexnet", "vgg16"), entries)
    assert (alexnet.prod_version, alexnet.prod_accuracy, alexnet.accuracy) == ("v0.1.0", 0.80, 0.85)
    assert alexnet.beats_prod and vgg16.prod_version is None and not vgg16.beats_prod

    # What the pipeline flow's summary says of them, for the commit prod points at.
    md = summary.pipeline_summary(tmp_path, [], "", standings=[alexnet, vgg16], registered={"alexnet": "v0.1.0 (prod)"})
    assert "| alexnet | v0.1.0 | 80.00 % | 85.00 % | **yes** | v0.1.0 (prod) |" in md, md
    assert "| vgg16 | none assigned | - | - | no | not registered |" in md, md
    broken = summary.pipeline_summary(tmp_path, [], "", registry_problem="gto show --json failed in /x: boom")
    assert "_The registry could not be read: gto show --json failed in /x: boom_" in broken, broken
