"""``python -m tools.overrides``: a config file as ``-S`` flags, bad input as one ``error:`` line, and the rule
by which DVC accepts an override."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.overrides import applied, override_files, override_problem


def overrides(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.overrides", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_a_config_becomes_set_param_flags() -> None:
    done = overrides("configs/quick-cpu.yaml")
    assert done.returncode == 0, done.stderr
    assert "-S alexnet.width=0.25" in done.stdout and "-S vgg16.weights=none" in done.stdout


def test_bad_input_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    misspelt = tmp_path / "typo.yaml"
    misspelt.write_text("alexnet:\n  learnin_rate: 0.1\n")
    for args, said in [
        (("configs/no-such.yaml",), "error: configs/no-such.yaml: cannot read the overlay"),
        ((), "error: usage: python -m tools.overrides configs/NAME.yaml"),
        (
            (str(misspelt),),
            f"error: {misspelt}: could not override 'alexnet.learnin_rate' in params.yaml: no such key "
            "(did you mean 'alexnet.learning_rate'?)",
        ),
    ]:
        done = overrides(*args)
        assert done.returncode == 2 and done.stderr.startswith(said), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        ("data.limit_train=5000", None),
        ("data.nokey=3", "could not override 'data.nokey' in params.yaml: no such key (add it with +data.nokey=3)"),
        ("+data.nokey=3", None),
        ("+data.seed=2", "could not add 'data.seed' to params.yaml: it is already there"),
        ("++data.seed=2", None),
        ("~data.seed", None),
        ("nokey.deeper=1", "could not override 'nokey.deeper'"),
        ("data.limit_trian=5", "no such key (did you mean 'data.limit_train'?)"),
        ("dta.seed=5", "no such key (did you mean 'data.seed'?)"),
        ("data.seed", "is not KEY=VALUE"),
    ],
)
def test_overrides_are_checked_by_hydras_rule(item: str, problem: str | None) -> None:
    found = override_problem("data:\n  limit_train: 0\n  seed: 1\n", item)
    assert found == problem if problem is None else problem in (found or "")


def test_override_files() -> None:
    assert override_files(["a=1", "sub/params.yaml:b=2", "c=3"]) == ["params.yaml", "sub/params.yaml"]


def test_applied_leaves_the_params_dvc_exp_run_would() -> None:
    doc = {"data": {"limit_train": 0, "seed": 1}, "alexnet": {"epochs": 30}}
    after = applied(
        doc,
        ["data.limit_train=200", "+data.new=[1, 2]", "~data.seed", "alexnet.epochs=", "other.yaml:data.seed=5"],
    )
    assert after == {"data": {"limit_train": 200, "new": [1, 2]}, "alexnet": {"epochs": None}}
    assert doc == {"data": {"limit_train": 0, "seed": 1}, "alexnet": {"epochs": 30}}, "the input is left as it was"
    assert applied(doc, ["data.seed.deeper=1"]) == doc  # below a plain value: DVC refuses it, check_overrides says why
