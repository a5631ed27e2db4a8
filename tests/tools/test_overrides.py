"""``python -m tools.overrides``: a config file as ``-S`` flags, and bad input as one ``error:`` line."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def overrides(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.overrides", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_config_becomes_set_param_flags() -> None:
    done = overrides("configs/quick-cpu.yaml")
    assert done.returncode == 0, done.stderr
    assert "-S alexnet.width=0.25" in done.stdout and "-S vgg16.weights=none" in done.stdout


def test_bad_input_is_one_error_line_and_exit_2() -> None:
    for args, said in [
        (("configs/no-such.yaml",), "error: configs/no-such.yaml: cannot read the overlay"),
        ((), "error: usage: python -m tools.overrides configs/NAME.yaml"),
    ]:
        done = overrides(*args)
        assert done.returncode == 2 and done.stderr.startswith(said), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
