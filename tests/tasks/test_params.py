"""params.yaml -> typed config: every bad value is named before any work starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.errors import ParamsError
from tasks.params import data_params, load_data_params, load_section, load_validate_params
from tests.conftest import REPO

GOOD = {
    "url": "https://example.invalid/a.tar.gz",
    "sha256": "ab" * 32,
    "val_fraction": 0.1,
    "seed": 1,
    "limit_train": None,
    "limit_test": None,
}


def test_repository_params_parse() -> None:
    data = load_data_params(REPO / "params.yaml")
    assert data.sha256 == "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
    assert data.val_fraction == 0.1 and data.limit_train is None
    assert load_validate_params(REPO / "params.yaml").channel_mean == (125.3, 123.0, 113.9)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sha256", "abc", "'data.sha256' must be 64 hexadecimal digits"),
        ("val_fraction", 0.9, "'data.val_fraction' must be <= 0.5"),
        ("val_fraction", "x", "'data.val_fraction' must be a finite number"),
        ("seed", -1, "'data.seed' must be >= 0"),
        ("seed", True, "'data.seed' must be an integer"),
        ("limit_train", 5, "'data.limit_train' must be >= 20"),
        ("url", 3, "'data.url' must be a string"),
    ],
)
def test_bad_values_are_named(key: str, value: object, message: str) -> None:
    with pytest.raises(ParamsError, match=message):
        data_params({**GOOD, key: value})


def test_missing_key() -> None:
    with pytest.raises(ParamsError, match="'data.seed' is missing"):
        data_params({k: v for k, v in GOOD.items() if k != "seed"})


def test_missing_section_and_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("validate: {}\n")
    with pytest.raises(ParamsError, match="section 'data' is missing"):
        load_section("data", path)
    path.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_section("data", path)
