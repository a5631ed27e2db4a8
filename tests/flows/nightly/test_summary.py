"""The nightly artifact and messages, from made-up runs: what a reviewer and an on-call person read."""

from __future__ import annotations

import json
from uuid import uuid4

from flows.nightly.flow import Crash, crash_report
from flows.registry import Standing
from flows.summary import accuracy_rows, percent, render
from flows.workspace import RecordedRun

BASELINE = "ab" + "c" * 38
PREVIOUS = RecordedRun("nightly-20261125-020000", f"refs/exps/ab/{BASELINE[2:]}/nightly-20261125-020000", BASELINE)
STAGES = [
    {"stage": "preprocess", "outcome": "restored", "seconds": 1.0},
    {"stage": "train_alexnet", "outcome": "ran", "seconds": 12.5, "attempt": 2},
]


def evaluate(**accuracy: float) -> str:
    return json.dumps({m: {"test_accuracy": a, "test_loss": 1.0} for m, a in accuracy.items()})


def page(**changes: object) -> str:
    args: dict = dict(
        run_name="calm-otter",
        branch="main",
        git_url="/srv/git/cifar10.git",
        commit="d" * 40,
        subject="alexnet: lower lr",
        workspace="/ws",
        how="updated",
        stash=None,
        previous=PREVIOUS,
        commits=["ddddddd alexnet: lower lr"],
        stages=STAGES,
        experiment="nightly-20261126-020000",
        pushed_to="/srv/git/cifar10.git and the DVC remote",
        dvc_remote=True,
        nothing_changed=False,
        accuracy=accuracy_rows(evaluate(alexnet=0.9012, vgg16=0.88), evaluate(alexnet=0.9101, vgg16=0.87)),
        params_diff="| Path | Param |\n| params.yaml | alexnet.learning_rate |",
        metrics_diff="",
        standings=[Standing("alexnet", 0.9101, "v0.1.0", 0.9012), Standing("vgg16", 0.87, None, None)],
        promoted={},
        promote_staging=False,
        registry_problem=None,
        pct=percent,
    )
    args.update(changes)
    return render("nightly_summary.md.j2", **args)


def test_accuracy_change_in_points_for_both_models_even_when_one_is_missing() -> None:
    rows = accuracy_rows(evaluate(alexnet=0.9), evaluate(alexnet=0.925, vgg16=0.8))
    assert rows == [("alexnet", "90.00 %", "92.50 %", "+2.50 pp"), ("vgg16", "-", "80.00 %", "-")]
    assert accuracy_rows(None, "not json") == [("alexnet", "-", "-", "-"), ("vgg16", "-", "-", "-")]


def test_a_run_with_changes_names_the_previous_run_the_commits_and_the_diffs() -> None:
    md = page()
    assert "Recorded as DVC experiment **nightly-20261126-020000** on commit `dddddddddddd`" in md
    assert "**nightly-20261125-020000** (commit `abcccccccccc`)" in md and "`ddddddd alexnet: lower lr`" in md
    assert "| alexnet | 90.12 % | 91.01 % | +0.89 pp |" in md and "| vgg16 | 88.00 % | 87.00 % | -1.00 pp |" in md
    assert "| train_alexnet | ran | 2 | 12.5 |" in md and "alexnet.learning_rate" in md
    assert "_No metric changed._" in md
    assert "dvc metrics diff nightly-20261125-020000 nightly-20261126-020000" in md
    assert "No DVC remote" not in md
    local = page(pushed_to="/srv/git/cifar10.git", dvc_remote=False)
    assert "pushed to `/srv/git/cifar10.git`. No DVC remote: only its git ref left this host" in local, local


def test_nothing_changed_and_first_run_say_so() -> None:
    md = page(nothing_changed=True, experiment=None, pushed_to=None, commits=[], stages=STAGES[:1])
    assert "**Nothing changed** since the last recorded run **nightly-20261125-020000**" in md
    assert "preprocess restored from the run-cache" in md and "No new experiment was recorded" in md
    assert "## Params changed" not in md
    first = page(previous=None, commits=[], params_diff="")
    assert "The first recorded run of this deployment" in first and "## Params changed" not in first
    stashed = page(stash="cifar10-nightly: changes left on abc")
    assert 'stashed: `git stash list` there shows "cifar10-nightly: changes left on abc"' in stashed


def test_crash_reports_count_the_crashes_in_a_row() -> None:
    older = Crash(uuid4(), "first-try", None, "exited with -9")
    newest = Crash(uuid4(), "second-try", "train_vgg16", "Flow run infrastructure exited with -9")
    go_on, report = crash_report([older], limit=2)
    assert go_on and "crashed before its first stage: exited with -9" in report and "restart 1 of at most 2" in report
    go_on, report = crash_report([newest, older], limit=1)
    assert not go_on and "second-try" in report and "crashed in stage train_vgg16" in report
    assert (
        report.endswith("2 crashes in a row, more than max_crash_restarts=1") and "earlier crash: first-try" in report
    )


def test_the_registry_table_says_who_beats_prod_and_what_was_staged() -> None:
    assert (
        Standing("alexnet", 0.91, "v0.1.0", 0.90).beats_prod
        and not Standing("alexnet", 0.90, "v0.1.0", 0.90).beats_prod
    )
    assert Standing("vgg16", 0.5, None, None).beats_prod and not Standing("vgg16", None, None, None).beats_prod
    md = page()
    assert "| alexnet | v0.1.0 | 90.12 % | - | 91.01 % | **yes** | not registered |" in md, md
    assert "| vgg16 | none assigned | - | - | 87.00 % | **yes** | not registered |" in md, md
    # A sweep measured prod's seed spread: 0.89 pp ahead is less than its standard deviation.
    spread = page(standings=[Standing("alexnet", 0.9101, "v0.1.0", 0.9012, (0.012, 3))])
    assert "| alexnet | v0.1.0 | 90.12 % | sd 1.20 pp (3 seeds) | 91.01 % | yes, within the seed spread |" in spread
    clear = page(standings=[Standing("alexnet", 0.93, "v0.1.0", 0.9012, (0.002, 2))])
    assert "| sd 0.20 pp (2 seeds) | 93.00 % | **yes** |" in clear, clear
    assert "Nothing was registered (`promote_staging` is off)" in md
    staged = page(promote_staging=True, promoted={"alexnet": "v0.2.0 (staging)"})
    assert "| **yes** | v0.2.0 (staging) |" in staged and "`prod` is yours to assign" in staged, staged
    broken = page(standings=[], registry_problem="gto show --json failed in /ws: boom")
    assert "_The registry could not be read or written: gto show --json failed in /ws: boom_" in broken, broken
