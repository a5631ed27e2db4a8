"""Every project file a stage's command imports is one of that stage's deps in dvc.yaml.

Otherwise a change to that file leaves ``dvc status`` clean and the stage's results stale. Each
stage's entry module is followed through every ``import`` statement of the project's files, those inside
functions too, and the files reached are compared with the stage's deps (a folder dep covers the files
under it), so an import added later cannot escape either. Page templates are read at run time, not
imported, so the templates those files name (and the templates they extend or include) must be deps as well.
"""

from __future__ import annotations

import ast
import re
import subprocess

import jinja2
import jinja2.meta
import pytest
import yaml

from tasks.reporting import templating
from tests.conftest import REPO

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


def module_file(name: str) -> str | None:
    """The project file of module ``name`` (``tasks.model`` -> ``tasks/model/__init__.py``), if it is one."""
    base = name.replace(".", "/")
    return next((f for f in (f"{base}.py", f"{base}/__init__.py") if f in TRACKED), None)


def imported_names(file: str) -> list[str]:
    """Every module an ``import`` statement anywhere in ``file`` may name, in functions too (the entry
    points defer Keras until their params are checked): ``from a import b`` may name ``a`` or ``a.b``."""
    package = file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    package = package if file.endswith("__init__.py") else package.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse((REPO / file).read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            stem = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            base = ".".join(p for p in (stem, node.module or "") if p)
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


def loaded_project_files(module: str) -> list[str]:
    """The project files ``module`` imports, directly or through other project modules, with the packages
    above each (Python runs their ``__init__`` first): read from the source, not run, so an import
    a run happens not to reach counts too."""
    found: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for file in filter(None, (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1))):
            if file not in found:
                found.add(file)
                todo += imported_names(file)
    return sorted(found)


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


def test_the_imports_are_followed_into_functions_and_through_the_project() -> None:
    files = loaded_project_files("tasks.train_alexnet")
    assert "tasks/model/train.py" in files  # imported inside main(), after the params are checked
    assert "tasks/model/layers.py" in files and "tasks/__init__.py" in files  # further down, and a package
    assert imported_names("flows/sweep/__main__.py") == ["sys", "flows.sweep.flow", "flows.sweep.flow.main"]


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
