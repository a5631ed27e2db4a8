"""A new user's first run, end to end on the fixture archive: `make quick`, `make pipeline` and `make pipeline
FULL=1`, through the real Makefile and the real DVC -- quiet (no WARNING line), params.yaml left meaning the
defaults; on this host without a GPU `make pipeline` runs the quick setting and says so, FULL=1 the defaults."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_TRAINING, dvc, run

#: The quick setting's shape at test size: other AlexNet values than the (tiny) defaults, so a rerun is
#: visible; VGG16 as the defaults, so `make pipeline` has only AlexNet to retrain.
TINY_QUICK = {"alexnet": {"width": 0.125, "epochs": 1, "warmup_epochs": 0, "batch_size": 64, "jit_compile": False}}


def make(target: str, repo: Path, *variables: str) -> str:
    """``make <target>`` in ``repo`` with this interpreter's venv (already set up: the stamp is taken as is)."""
    venv = Path(sys.executable).parent.parent
    proc = run(["make", target, f"VENV={venv}", *variables, "-o", f"{venv}/.setup-stamp"], cwd=repo, timeout=1200)
    return proc.stdout + proc.stderr


def warnings_in(output: str) -> list[str]:
    return [line for line in output.splitlines() if "WARNING" in line]


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_make_quick_then_make_pipeline_is_quiet_and_keeps_the_defaults(seeded_repo: Path) -> None:
    dvc_repo = seeded_repo  # the tiny defaults: the test run's trained pipeline is in its DVC cache
    for name in ("Makefile", "tools", "configs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dvc_repo / name)
    (dvc_repo / "configs/quick-cpu.yaml").write_text(yaml.safe_dump(TINY_QUICK))
    run(["git", "add", "-A"], cwd=dvc_repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "tiny"], cwd=dvc_repo)
    defaults = (dvc_repo / "params.yaml").read_bytes()

    quick = make("quick", dvc_repo)
    assert not warnings_in(quick), quick
    assert "Running stage 'train_alexnet'" in quick and "dvc exp apply quick-cpu" in quick
    assert (dvc_repo / "params.yaml").read_bytes() == defaults, "make quick must leave params.yaml as it was"
    meta = json.loads((dvc_repo / "models/alexnet.meta.json").read_text())
    assert meta["params"]["width"] == TINY_QUICK["alexnet"]["width"]
    shown = json.loads(dvc("exp", "show", "--json", cwd=dvc_repo).stdout)
    names = {e.get("name") for rev in shown for e in rev.get("experiments") or []}
    assert "quick-cpu" in names, shown

    # No GPU here: `make pipeline` is the quick setting again (nothing to run), and says how to ask for more.
    pipeline = make("pipeline", dvc_repo)
    assert "make pipeline: no GPU here" in pipeline and "make pipeline FULL=1" in pipeline, pipeline
    assert "Running stage" not in pipeline and "Stage 'train_alexnet' didn't change" in pipeline, pipeline
    assert json.loads((dvc_repo / "models/alexnet.meta.json").read_text())["params"]["width"] == 0.125
    shown = json.loads(dvc("exp", "show", "--json", cwd=dvc_repo).stdout)
    names = {e.get("name") for rev in shown for e in rev.get("experiments") or []}
    assert "quick-cpu" in names and any(n.startswith("quick-cpu-2") for n in names if n), names  # both kept

    pipeline = make("pipeline", dvc_repo, "FULL=1")
    assert not warnings_in(pipeline), pipeline
    # The defaults differ from the quick setting in AlexNet's params only: its stage and evaluate rerun, here
    # from the run-cache (the defaults ran before); nothing else changed.
    for stage in ("train_alexnet", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run" in pipeline, pipeline
    assert "Running stage" not in pipeline and "'train_vgg16' didn't change" in pipeline, pipeline
    meta = json.loads((dvc_repo / "models/alexnet.meta.json").read_text())
    assert meta["params"]["width"] == TINY_TRAINING["alexnet"]["width"]
    assert (dvc_repo / "params.yaml").read_bytes() == defaults
    assert (dvc_repo / "models/alexnet.onnx").is_file() and (dvc_repo / "reports/report.md").is_file()
