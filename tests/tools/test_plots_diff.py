"""The offline ``dvc plots diff`` page, without DVC but for an empty repo (tests/test_pipeline_review.py runs the
command on a trained one)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import jinja2
import pytest

from tasks.core.errors import StageError
from tasks.reporting import templating
from tests.conftest import init_git_dvc
from tools import plots_diff


def test_page_embeds_every_plot_and_escapes_ids_and_revisions() -> None:
    evil = "<script>alert('x')</script>"
    rendered = [(evil, plots_diff.file_name(evil), ["HEAD~1", evil], b"\x89PNG one"), ("Loss", "Loss.png", [], b"two")]
    page = plots_diff.page(rendered, [evil])
    assert "<script" not in page
    escaped = "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"
    assert f"<h1>dvc plots diff: {escaped}</h1>" in page
    assert f"alt='{escaped}'" in page and f"(HEAD~1, {escaped})" in page
    assert [base64.b64decode(i) for i in re.findall(r"src='data:image/png;base64,([^']+)'", page)] == [
        b"\x89PNG one",
        b"two",
    ]
    assert "dvc plots diff: workspace vs HEAD" in plots_diff.page(rendered, [])


def test_a_value_the_template_needs_but_is_not_given_fails_the_render() -> None:
    with pytest.raises(jinja2.UndefinedError):
        templating.render("plots_diff.html.j2", package="tools", plots=[])


def test_revisions_without_plots_are_one_line_that_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    init_git_dvc(tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match=r"found no plots in the workspace or HEAD: the training stages have not run"):
        plots_diff.main([])
    assert not (tmp_path / "reports").exists()
