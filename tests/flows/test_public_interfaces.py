"""flows/ uses DVC and Prefect through their public interfaces only: DVC's command line and
``dvc.api``, Prefect's documented modules. Private modules change between minor releases."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def private_imports(source: str) -> list[str]:
    """The modules ``source`` imports that are DVC's or Prefect's own business."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "dvc" and len(parts) > 1 and parts[1] != "api":
                found.append(name)
            elif parts[0] == "prefect" and any(p.startswith("_") for p in parts[1:]):
                found.append(name)
    return found


@pytest.mark.parametrize(
    ("source", "bad"),
    [
        ("from dvc.repo import Repo", True),
        ("import dvc.utils.hydra", True),
        ("from dvc import repo", True),
        ("from prefect._internal.concurrency import x", True),
        ("import dvc.api", False),
        ("from dvc.api import params_show", False),
        ("from prefect.deployments import run_deployment", False),
        ("from .spec import Sweep", False),
    ],
)
def test_the_scan_tells_private_from_public(source: str, bad: bool) -> None:
    assert bool(private_imports(source)) is bad


def test_flows_import_no_private_dvc_or_prefect_module() -> None:
    files = sorted(FLOWS.rglob("*.py"))
    assert files
    found = {str(f.relative_to(FLOWS)): bad for f in files if (bad := private_imports(f.read_text()))}
    assert found == {}
    text = "\n".join(f.read_text() for f in files)
    for word in ("dvc.utils", "dvc.dependency", "use_cache", "dvc.cli"):
        assert word not in text
