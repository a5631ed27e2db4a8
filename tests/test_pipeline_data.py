"""End to end: the real `dvc repro` through the data half of the pipeline, in a temporary git repo."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import dvc, set_params


@pytest.mark.e2e
def test_dvc_repro_validate_then_nothing_to_do(dvc_repo: Path) -> None:
    first = dvc("repro", "validate", cwd=dvc_repo)
    assert "Running stage 'download'" in first.stdout
    assert "Running stage 'validate'" in first.stdout
    report = json.loads((dvc_repo / "reports/validation.json").read_text())
    assert report["success"] is True
    assert sorted(p.name for p in (dvc_repo / "data/prepared").iterdir()) == [
        "facts.json",
        "test.npz",
        "train.npz",
        "val.npz",
    ]

    again = dvc("repro", "validate", cwd=dvc_repo)
    assert "Running stage" not in again.stdout
    status = dvc("status", "download", "preprocess", "validate", cwd=dvc_repo)
    assert "up to date" in status.stdout.lower()


@pytest.mark.e2e
def test_digest_mismatch_stops_the_pipeline(dvc_repo: Path) -> None:
    set_params(dvc_repo, data={"sha256": "a" * 64})
    proc = dvc("repro", "validate", cwd=dvc_repo, check=False)
    assert proc.returncode != 0
    assert "SHA-256 mismatch" in proc.stderr + proc.stdout
    assert not (dvc_repo / "data/raw/cifar-10-python.tar.gz").exists()
    assert not (dvc_repo / "data/prepared").exists()


@pytest.mark.e2e
def test_malformed_params_fail_before_any_work(dvc_repo: Path) -> None:
    set_params(dvc_repo, data={"val_fraction": "a tenth"})
    proc = dvc("repro", "validate", cwd=dvc_repo, check=False)
    assert proc.returncode != 0
    assert "'data.val_fraction' must be a finite number" in proc.stderr + proc.stdout
    assert not (dvc_repo / "data/prepared").exists()
