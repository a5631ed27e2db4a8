"""tools/wheelhouse.py: which locked pins a target gets, what it keeps of its own, and pip's target tags."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from tasks.core.errors import StageError
from tools import wheelhouse

LOCKED = [
    "jax==0.10.2 ; python_full_version < '3.12' and sys_platform == 'linux'",
    "jax==0.12.0.1 ; python_full_version >= '3.12' and sys_platform == 'linux'",
    "numpy==2.5.5 ; python_full_version >= '3.12' and sys_platform == 'linux'",
    "numpy==2.4.6 ; python_full_version < '3.12' and sys_platform == 'linux'",
    "tqdm==4.67.1",
    "nvidia-cudnn-cu12==9.10 ; platform_machine == 'aarch64'",
]


def test_the_target_python_picks_its_own_pins_not_this_interpreters() -> None:
    assert wheelhouse.for_target(LOCKED, "3.12", "manylinux_2_28_x86_64") == [
        "jax==0.12.0.1",
        "numpy==2.5.5",
        "tqdm==4.67.1",
    ]
    assert wheelhouse.for_target(LOCKED, "3.11", "manylinux_2_28_aarch64") == [
        "jax==0.10.2",
        "numpy==2.4.6",
        "tqdm==4.67.1",
        "nvidia-cudnn-cu12==9.10",
    ]


def test_what_the_target_has_is_left_to_it_and_version_differences_are_noted() -> None:
    have = wheelhouse.frozen_names("NumPy==2.3.4\n-e git+https://example.invalid/x#egg=x\njax==0.12.0.1\n")
    assert have == {"numpy": "2.3.4", "jax": "0.12.0.1"}
    wanted, kept = wheelhouse.split_by_target(["jax==0.12.0.1", "numpy==2.5.5", "tqdm==4.67.1"], have)
    assert wanted == ["tqdm==4.67.1"]
    assert kept == ["jax==0.12.0.1", "numpy==2.3.4  # uv.lock has 2.5.5"]


def test_pip_gets_every_abi_and_every_older_manylinux_of_the_target() -> None:
    options = wheelhouse.target_options("3.12", "manylinux_2_28_x86_64")
    abis = [options[i + 1] for i, o in enumerate(options) if o == "--abi"]
    platforms = [options[i + 1] for i, o in enumerate(options) if o == "--platform"]
    assert abis == ["cp312", "abi3", "none"]
    assert platforms[0] == "manylinux_2_28_x86_64"
    assert {"manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    assert "manylinux_2_29_x86_64" not in platforms
    assert wheelhouse.target_options(None, None) == []


def test_the_real_lock_pins_other_versions_for_another_python() -> None:
    uv = Path(sys.executable).parent.parent / "uv/bin/uv"
    if not uv.is_file():
        pytest.skip(f"no uv at {uv} (make setup installs it there)")
    locked = wheelhouse.locked_requirements(str(uv), ["dev"])
    here = wheelhouse.for_target(locked, "3.11", "manylinux_2_28_x86_64")
    there = wheelhouse.for_target(locked, "3.12", "manylinux_2_28_x86_64")
    assert any(p.startswith("prefect==") for p in here)
    assert not any(p.startswith("cifar10-pipeline") for p in here)
    assert len({p.split("==")[0] for p in here}) == len(here), "one pin per package"
    assert set(here) != set(there)


def _wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel, as pip reads one."""
    dist = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{name}/__init__.py", "")
        whl.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: t\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")


def test_a_wheelhouse_cut_from_a_full_one_takes_only_its_pins_and_no_index(tmp_path: Path) -> None:
    full, out = tmp_path / "full", tmp_path / "out"
    full.mkdir()
    _wheel(full, "alpha", "1.0")
    _wheel(full, "beta", "2.0")
    wheelhouse.download(["alpha==1.0"], out, [], wheels_from=full)
    assert [p.name for p in out.iterdir()] == ["alpha-1.0-py3-none-any.whl"]
    with pytest.raises(StageError, match=f"{full} lacks a wheel the lock needs"):
        wheelhouse.download(["gamma==3.0"], out, [], wheels_from=full)
