"""Every project file a stage's command imports is one of that stage's deps in dvc.yaml.

Otherwise a change to that file leaves ``dvc status`` clean and the stage's results stale. Each
stage's entry module (and every module its functions import) is imported in a fresh interpreter and the
project files it loaded are compared with the stage's deps (a folder dep covers the files under it), so an import added
later cannot escape either. Page templates are read at run time, not imported, so the templates
those files name (and the templates they extend or include) must be deps as well.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import jinja2
import jinja2.meta
import pytest
import yaml

from tasks.reporting import templating
from tests.conftest import REPO, subprocess_env

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
#: The project's own files (a virtual environment inside the checkout is not the project).
TRACKED = set(
    subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
)
PROBE = """
import ast, importlib, json, sys
from pathlib import Path
entry = importlib.import_module(sys.argv[1])
# The imports inside its functions too: an entry point defers Keras until its params are checked.
for node in ast.walk(ast.parse(Path(entry.__file__).read_text())):
    if isinstance(node, ast.Import):
        for alias in node.names:
            importlib.import_module(alias.name)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        importlib.import_module(node.module)
        for alias in node.names:  # `from tasks.model import train` names a module
            try:
                importlib.import_module(node.module + "." + alias.name)
            except ImportError:
                pass
root = Path.cwd().resolve()
files = set()
for module in list(sys.modules.values()):
    path = getattr(module, "__file__", None)
    if path and Path(path).resolve().is_relative_to(root):
        files.add(Path(path).resolve().relative_to(root).as_posix())
print(json.dumps(sorted(files)))
"""


def loaded_project_files(module: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env() | {"PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr
    return [f for f in json.loads(done.stdout.strip().splitlines()[-1]) if f in TRACKED]


#: How a module names a template it renders, ``templating.render("report.html.j2", ...)``: a quoted
#: ``<page>.<format>.j2`` (a bare ``"html.j2"`` is an extension, not a template).
TEMPLATE_NAME = re.compile(r"""["']([\w-]+\.\w+\.j2)["']""")
#: The package whose templates a module renders when it names one, ``package="flows"``.
TEMPLATE_PACKAGE = re.compile(r"""\bpackage=["']([\w.]+)["']""")


def templates_named(files: list[str]) -> list[str]:
    """The template files that ``files`` render: each from the ``templates/`` folder of the package
    the module names (``package="flows"``), else of :data:`tasks.reporting.templating.PACKAGE`."""
    found: set[str] = set()
    for file in files:
        text = (REPO / file).read_text()
        packages = set(TEMPLATE_PACKAGE.findall(text)) or {templating.PACKAGE}
        assert len(packages) == 1, f"{file} renders templates of several packages {packages}; teach this check"
        folder = f"{packages.pop().replace('.', '/')}/templates"
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(REPO / folder))
        todo = TEMPLATE_NAME.findall(text)
        while todo:
            name = todo.pop()
            path = f"{folder}/{name}"
            assert (REPO / path).is_file(), f"{file} names a template {path} that does not exist"
            if path not in found:
                found.add(path)
                source = env.loader.get_source(env, name)[0]
                todo += [n for n in jinja2.meta.find_referenced_templates(env.parse(source)) if n]
    return sorted(found)


def uncovered(files: list[str], deps: list[str]) -> list[str]:
    """The files that no dep names, either itself or as a folder above it (package ``__init__``s aside)."""

    def covered(path: str) -> bool:
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)

    return [f for f in files if not f.endswith("__init__.py") and not covered(f)]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_every_project_file_it_imports(stage: str) -> None:
    match = re.fullmatch(r"python -m ([\w.]+)", STAGES[stage]["cmd"])
    assert match, f"{stage}: expected 'python -m tasks.<module>', got {STAGES[stage]['cmd']!r}"
    files = loaded_project_files(match.group(1))
    assert f"{match.group(1).replace('.', '/')}.py" in files
    missing = uncovered(files + templates_named(files), STAGES[stage].get("deps", []))
    assert not missing, f"dvc.yaml stage {stage} uses {missing} but does not list them as deps"


def test_the_check_notices_a_missing_dep() -> None:
    assert uncovered(
        ["tasks/model/train.py", "tasks/model/models.py", "tasks/__init__.py"], ["tasks/model/train.py"]
    ) == ["tasks/model/models.py"]
    assert uncovered(["tasks/model/train.py"], ["tasks/model"]) == []


def test_the_check_finds_the_templates_a_module_renders() -> None:
    assert templates_named(["tasks/reporting/report.py", "tasks/core/paths.py"]) == [
        "tasks/reporting/templates/report.html.j2",
        "tasks/reporting/templates/report.md.j2",
    ]
    assert templates_named(["flows/sweep/table.py"]) == ["flows/templates/sweep_table.md.j2"]
    assert templates_named(["tools/plots_diff.py"]) == ["tools/templates/plots_diff.html.j2"]
