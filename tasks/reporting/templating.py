"""Jinja2 rendering of the pages the project writes: the evaluation report, the validation page,
the offline ``dvc plots diff`` page and the sweep table.

Templates are package data next to the code that fills them (``tasks/templates``,
``flows/templates``); Python computes what a page shows, the template only lays it out. HTML
templates (``*.html.j2``) autoescape, so a class name, a param value or an error message is shown
as text and can never become markup; markdown templates (``*.md.j2``) do not, since markdown has
no escaping Jinja knows (the ``md_cell`` filter handles what breaks a table row).
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


@cache
def environment(package: str = "tasks") -> jinja2.Environment:
    """The environment for the templates of ``package`` (``tasks`` or ``flows``)."""
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


def render(template_name: str, /, package: str = "tasks", **context: Any) -> str:
    """``template_name`` from ``<package>/templates`` filled with ``context``."""
    return environment(package).get_template(template_name).render(**context)
