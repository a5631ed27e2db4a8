"""tasks/core/paths.py and dvc.yaml name the same files: a path changed in one place only fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tasks.core import paths
from tasks.model import epoch_log
from tests.conftest import REPO

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


def _entries(items: list[Any]) -> set[str]:
    return {next(iter(i)) if isinstance(i, dict) else i for i in items}


def named_in_dvc_yaml() -> set[str]:
    found: set[str] = set()
    for stage in DVC_YAML["stages"].values():
        for kind in ("deps", "outs", "metrics", "plots"):
            found |= _entries(stage.get(kind, []))
    return found


def test_every_path_of_the_module_is_in_dvc_yaml() -> None:
    named = named_in_dvc_yaml()
    constants = [v for k, v in vars(paths).items() if k.isupper() and isinstance(v, Path) and k != "PARAMS"]
    per_model = [p for m in paths.MODELS for p in vars(paths.outputs_for(m)).values()]
    missing = [p.as_posix() for p in constants + per_model if p.as_posix() not in named]
    # Folders of per-model files (plots/confusion/<model>.csv) count when dvc.yaml names a file inside.
    missing = [p for p in missing if not any(n.startswith(p + "/") for n in named)]
    assert not missing, f"tasks/core/paths.py names {missing}, which dvc.yaml does not"


def test_every_model_has_its_training_stage_and_registry_entry() -> None:
    stages = DVC_YAML["stages"]
    for model in paths.MODELS:
        assert f"train_{model}" in stages
        assert DVC_YAML["artifacts"][model]["path"] == paths.outputs_for(model).model.as_posix()
    assert {s.removeprefix("train_") for s in stages if s.startswith("train_")} == set(paths.MODELS)


def test_training_log_paths_are_dvclives_layout() -> None:
    """tasks.core.paths names the files inside DVCLive's folder that tasks.model.epoch_log writes there."""
    for model in paths.MODELS:
        out = paths.outputs_for(model)
        assert out.live_metrics == epoch_log.metrics_file(out.live)
        assert out.history == epoch_log.plots_dir(out.live)
