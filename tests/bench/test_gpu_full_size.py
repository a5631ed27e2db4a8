"""bench/gpu_full_size.py: the runner that plays DVC's part on a GPU machine, rehearsed here on JAX."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO, subprocess_env

SPEC = importlib.util.spec_from_file_location("gpu_full_size", REPO / "bench/gpu_full_size.py")
runner = importlib.util.module_from_spec(SPEC)  # type: ignore[arg-type]
sys.modules[SPEC.name] = runner  # dataclasses look their module up while the class is built
SPEC.loader.exec_module(runner)  # type: ignore[union-attr]


def _facts(folder: Path, digest: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "facts.json").write_text(json.dumps({"sha256": {"train": {"x": digest, "y": "y"}}}))


def test_a_carried_verdict_needs_the_same_arrays(tmp_path: Path) -> None:
    validated = tmp_path / "validated"
    _facts(validated, "aaa")
    (validated / "validation.json").write_text(json.dumps({"success": True, "failed": []}))
    base = tmp_path / "base"
    _facts(base / "data/prepared", "aaa")
    runner.carry_validation(base, validated)
    assert json.loads((base / "reports/validation.json").read_text())["success"] is True

    other = tmp_path / "other"
    _facts(other / "data/prepared", "bbb")
    with pytest.raises(SystemExit, match="differ from those validated"):
        runner.carry_validation(other, validated)
    assert not (other / "reports/validation.json").exists(), "no verdict for arrays nobody validated"
    with pytest.raises(SystemExit, match="pass --validated DIR"):
        runner.carry_validation(other, None)


def test_sets_and_overlays_layer_onto_params_yaml() -> None:
    import yaml

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    sets = runner.parse_sets(["alexnet.epochs=2", "alexnet.width=0.5", "data.limit_train=null"])
    assert sets == {"alexnet": {"epochs": 2, "width": 0.5}, "data": {"limit_train": None}}
    student = runner.run_params(base, runner.RUNS["student"], sets)
    assert student["alexnet"]["optimizer"] == "adam" and student["alexnet"]["epochs"] == 2  # overlay, then sets
    assert base["alexnet"]["optimizer"] == "sgd", "the base params are not changed"
    with pytest.raises(SystemExit, match="expected section.key=value"):
        runner.parse_sets(["epochs=2"])


def test_student_epochs_fit_the_time_left() -> None:
    fast = {"median_epoch_seconds": 0.8}
    assert runner.student_epochs(1000, fast) == 19  # the recipe's own 19 at most
    assert runner.student_epochs(100, fast) == 10
    assert runner.student_epochs(10, fast) == 2  # at least two, whatever is left


@pytest.mark.e2e
def test_rehearsal_on_jax_trains_scores_and_packs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(REPO / "bench/gpu_full_size.py"),
        "--synthetic",
        "100",
        "--work",
        str(tmp_path / "w"),
        "--out",
        str(out),
        "--runs",
        "alexnet",
        "--set",
        "alexnet.width=0.0625",
        "alexnet.epochs=2",
        "alexnet.batch_size=64",
        "alexnet.warmup_epochs=1",
    ]
    done = subprocess.run(
        cmd,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env() | {"KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((out / "summary.json").read_text())
    for name in ("alexnet",):  # one run: the runner's loop over runs is the same for each
        result = summary[name]
        assert result["backend"] == "jax" and result["epochs_run"] == 2
        assert 0.0 <= result["test_accuracy"] <= 1.0 and len(result["val_accuracy_per_epoch"]) == 2
        with tarfile.open(out / f"{name}.tgz") as tar:
            names = set(tar.getnames())
        assert {
            f"{name}/metrics/test_alexnet.json",
            f"{name}/dvclive/alexnet/metrics.json",
            f"{name}/dvclive/alexnet/plots/metrics/val_accuracy.tsv",
            f"{name}/models/alexnet.meta.json",
            f"{name}/stage.log",
            f"{name}/params.yaml",
        } <= names
    assert summary["alexnet"]["batch_size"] == 64
