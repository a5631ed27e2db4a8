"""bench/bench_time_to_accuracy.py: recipes of either model named on the command line, with their changes."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from tasks.core.errors import ParamsError
from tasks.core.params import VGG16Params
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "bench"))  # the bench scripts import their shared module as `common`
import bench_time_to_accuracy as bench  # noqa: E402
from common import recipe_params  # noqa: E402


def test_a_recipe_with_changes_reads_values_as_yaml() -> None:
    assert bench.parse_recipe("quick-cpu") == ("alexnet", "quick-cpu", {})
    model, config, changes = bench.parse_recipe("quick-cpu:crop_padding=4,mixed_precision=false,seed=1")
    assert (model, config) == ("alexnet", "quick-cpu")
    assert changes == {"crop_padding": 4, "mixed_precision": False, "seed": 1}
    params = recipe_params(config, model, **changes)
    unchanged = yaml.safe_load((REPO / "configs/quick-cpu.yaml").read_text())["alexnet"]["epochs"]
    assert (params.crop_padding, params.mixed_precision, params.epochs) == (4, False, unchanged)


def test_a_vgg16_recipe_is_the_config_s_vgg16_section() -> None:
    model, config, changes = bench.parse_recipe("vgg16/quick-cpu:epochs=3")
    params = recipe_params(config, model, **changes)
    assert isinstance(params, VGG16Params)
    assert (params.weights, params.batch_norm, params.width, params.head_epochs, params.epochs) == (
        "none",
        True,
        0.25,
        0,
        3,
    )
    assert bench.STAGES[model].phases(params)[0].name == "train"  # no frozen phase: all of it trains


@pytest.mark.parametrize("spec", ["quick-cpu:epochs", "resnet/quick-cpu", "vgg16/"])
def test_a_malformed_recipe_says_what_is_expected(spec: str) -> None:
    with pytest.raises(SystemExit, match=re.escape(f"{spec}: expected [alexnet|vgg16/]CONFIG[:KEY=VALUE,...]")):
        bench.parse_recipe(spec)


def test_a_change_params_refuse_is_named() -> None:
    model, config, changes = bench.parse_recipe("quick-cpu:crop_padding=0")
    with pytest.raises(ParamsError, match="'alexnet.crop_padding' must be >= 1"):
        recipe_params(config, model, **changes)
