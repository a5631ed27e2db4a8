"""bench/bench_time_to_accuracy.py: recipes named on the command line, with their changes."""

from __future__ import annotations

import sys

import pytest

from tasks.core.errors import ParamsError
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))  # the bench scripts import their shared module as `common`
import bench_time_to_accuracy as bench  # noqa: E402
from common import recipe_params  # noqa: E402


def test_a_recipe_with_changes_reads_values_as_yaml() -> None:
    assert bench.parse_recipe("quick-cpu") == ("quick-cpu", {})
    config, changes = bench.parse_recipe("quick-cpu:crop_padding=4,mixed_precision=false,seed=1")
    assert (config, changes) == ("quick-cpu", {"crop_padding": 4, "mixed_precision": False, "seed": 1})
    params = recipe_params(config, **changes)
    assert (params.crop_padding, params.mixed_precision, params.epochs) == (4, False, 10)


def test_a_malformed_recipe_says_what_is_expected() -> None:
    with pytest.raises(SystemExit, match=r"quick-cpu:epochs: expected CONFIG\[:KEY=VALUE,...\]"):
        bench.parse_recipe("quick-cpu:epochs")


def test_a_change_params_refuse_is_named() -> None:
    config, changes = bench.parse_recipe("quick-cpu:crop_padding=0")
    with pytest.raises(ParamsError, match="'alexnet.crop_padding' must be >= 1"):
        recipe_params(config, **changes)
