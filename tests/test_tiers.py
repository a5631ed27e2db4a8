"""The test tiers hold: a test that runs the real pipeline without its mark is refused, so `make test-fast`
never starts one by accident."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def test_a_test_running_dvc_repro_without_the_e2e_mark_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("from tests.conftest import pytest_runtest_setup  # noqa: F401")
    pytester.makepyfile(
        """
        import pytest
        from tests.conftest import dvc

        def test_unmarked(tmp_path):
            dvc("repro", cwd=tmp_path, check=False)

        @pytest.mark.e2e
        def test_marked(tmp_path):
            dvc("exp", "run", cwd=tmp_path, check=False)  # not a DVC repo: it fails, and the test does not care
        """
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:xdist")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_unmarked runs dvc repro but is not marked @pytest.mark.e2e*"])
