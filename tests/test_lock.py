"""The environment is the lock: every installed distribution has a version uv.lock names for it, and so do
the package versions the run metadata records (tasks.core.runinfo)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest

from tasks.core import runinfo
from tests.conftest import REPO

#: A locked distribution whose INSTALLER record says who installed the environment.
WITNESS = "keras"
#: What `python -m venv` seeds the environment with (pip, which installs uv): not the project's.
SEEDED = {"pip"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, set[str]]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    versions: dict[str, set[str]] = {}
    for package in lock["package"]:
        versions.setdefault(canonical(package["name"]), set()).add(package.get("version", ""))
    return versions


@pytest.fixture(scope="module")
def lock_versions() -> dict[str, set[str]]:
    try:
        installer = (metadata.distribution(WITNESS).read_text("INSTALLER") or "").strip()
    except metadata.PackageNotFoundError:
        installer = ""
    if installer != "uv":
        pytest.skip(f"this environment was not installed from uv.lock (make setup); installer {installer!r}")
    return locked()


def test_every_installed_distribution_is_the_locked_version(lock_versions: dict[str, set[str]]) -> None:
    off_lock = sorted(
        f"{d.metadata['Name']}=={d.version}"
        for d in metadata.distributions()
        if canonical(d.metadata["Name"]) not in SEEDED
        and d.version not in lock_versions.get(canonical(d.metadata["Name"]), set())
    )
    assert not off_lock, f"installed but not as uv.lock says: {off_lock}"


def test_run_metadata_records_the_locked_versions(lock_versions: dict[str, set[str]]) -> None:
    recorded = runinfo.package_versions()
    for name in ("keras", "tensorflow-cpu", "numpy", "dvc", "prefect", "onnxruntime", "tf2onnx"):
        assert recorded.get(name) in lock_versions[canonical(name)], name
