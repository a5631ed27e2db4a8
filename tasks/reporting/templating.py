"""Jinja2 rendering of the pages the project writes: the evaluation report, the validation page,
the offline ``dvc plots diff`` page, the sweep table and the nightly summary.

Templates are package data in the ``templates/`` folder of a package: the stages' pages in
``tasks/reporting/templates`` (the default), the developer tools' in ``tools/templates``, the flows'
in ``flows/templates``; a caller names its package (the ``package`` argument). Python computes what a
page shows, the template only lays it out. HTML templates (``*.html.j2``) autoescape, so a class
name, a param value or an error message is shown as text and can never become markup; markdown
templates (``*.md.j2``) do not, since markdown has no escaping Jinja knows (the ``md_cell`` filter
handles what breaks a table row).
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

import jinja2


def data_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so a page carries its images and displays offline from one file."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def md_cell(value: Any) -> str:
    """A value as one markdown table cell: a ``|`` or a line break would otherwise end the cell or the row."""
    return str(value).replace("|", "\\|").replace("\n", " ")


#: The package whose ``templates/`` folder holds the stages' pages.
PACKAGE = "tasks.reporting"


@cache
def environment(package: str = PACKAGE) -> jinja2.Environment:
    """The environment for the templates of ``package`` (``tasks.reporting``, ``tools`` or ``flows``)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
        # A misspelt or missing value fails the render instead of leaving a blank in the page.
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(data_uri=data_uri, md_cell=md_cell)
    return env


def render(template_name: str, /, package: str = PACKAGE, **context: Any) -> str:
    """``template_name`` from the package's ``templates/`` folder filled with ``context``."""
    return environment(package).get_template(template_name).render(**context)
