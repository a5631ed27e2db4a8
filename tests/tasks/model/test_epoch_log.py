"""The DVCLive training log: on disk after every epoch, continued or rebuilt on resume, offline, and
the same files where DVCLive is not installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tasks.model.epoch_log import PLOTTED, EpochLog, logged_epochs, metrics_file, plots_dir, read_history


def records(n: int) -> list[dict[str, Any]]:
    """``n`` epochs of history as tasks.model.train records them, the phase changing after the first."""
    return [
        {
            "epoch": e,
            "phase": "head" if e == 1 else "fine_tune",
            "learning_rate": 1e-3 / e,
            "train_loss": 2.0 / e,
            "train_accuracy": 0.1 * e,
            "val_loss": 2.2 / e,
            "val_accuracy": 0.09 * e,
            "seconds": 1.5,
            "images_per_second": 200.0,
        }
        for e in range(1, n + 1)
    ]


def files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_log(folder: Path, history: list[dict[str, Any]]) -> None:
    with EpochLog(folder) as log:
        log.open([])
        for record in history:
            log.record(record)


@pytest.fixture(autouse=True)
def _no_studio(monkeypatch: pytest.MonkeyPatch) -> None:
    """Even with a DVC Studio token in the environment, the log posts nothing anywhere."""
    import dvclive.studio

    def post(*args: object, **kwargs: object) -> None:
        raise AssertionError("DVCLive tried to post live metrics to DVC Studio")

    monkeypatch.setattr(dvclive.studio, "post_live_metrics", post)
    monkeypatch.setenv("DVC_STUDIO_TOKEN", "not-a-token")
    monkeypatch.setenv("DVC_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STUDIO_REPO_URL", "https://example.invalid/cifar10.git")
    monkeypatch.setenv("DVC_STUDIO_OFFLINE", "false")  # what a user might have; the stage overrides it


def test_every_epoch_is_on_disk_as_soon_as_it_is_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "dvclive/alexnet"
    history = records(3)
    with EpochLog(folder) as log:
        log.open([])
        for done, record in enumerate(history, start=1):
            log.record(record)
            latest = json.loads(metrics_file(folder).read_text())
            assert latest["step"] == done and latest["val_accuracy"] == record["val_accuracy"]
            assert latest["phase"] == record["phase"]
            assert [h["epoch"] for h in read_history(plots_dir(folder))] == list(range(1, done + 1))
    assert sorted(p.name for p in plots_dir(folder).iterdir()) == sorted(f"{n}.tsv" for n in PLOTTED)
    assert read_history(plots_dir(folder)) == [{k: v for k, v in r.items() if k != "phase"} for r in history]
    # No report (DVCLive's HTML needs a CDN), no dvc.yaml of its own, no params copy.
    assert set(files(folder)) == {"metrics.json", *(f"plots/metrics/{n}.tsv" for n in PLOTTED)}


def test_resume_continues_a_log_that_matches_the_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, reference = tmp_path / "resumed", tmp_path / "reference"
    write_log(reference, records(4))
    write_log(folder, records(2))
    caplog.set_level("INFO", logger="tasks.model.epoch_log")
    with EpochLog(folder) as log:
        log.open(records(2))
        for record in records(4)[2:]:
            log.record(record)
    assert "continuing the training log" in caplog.text
    assert files(folder) == files(reference)


@pytest.mark.parametrize(
    "damage",
    ["deleted", "one_epoch_behind", "one_epoch_ahead", "half_written"],
)
def test_resume_rebuilds_a_log_that_does_not_match(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """DVC deletes a stage's outs before rerunning it; a kill can fall between checkpoint and log."""
    folder, reference = tmp_path / "resumed", tmp_path / "reference"
    write_log(reference, records(5))
    write_log(folder, records({"deleted": 3, "one_epoch_behind": 2, "one_epoch_ahead": 4, "half_written": 3}[damage]))
    if damage == "deleted":
        shutil.rmtree(folder)
    if damage == "half_written":  # one file got epoch 4, the others and metrics.json did not
        with open(plots_dir(folder) / "train_loss.tsv", "a") as fh:
            fh.write("4\t0.5\n")
    caplog.set_level("INFO", logger="tasks.model.epoch_log")
    assert logged_epochs(folder) != [1, 2, 3]
    with EpochLog(folder) as log:
        log.open(records(3))
        for record in records(5)[3:]:
            log.record(record)
    assert "rebuilt from the checkpoint's 3 epochs" in caplog.text
    assert files(folder) == files(reference)


def test_missing_log_is_an_error_for_readers(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "dvclive/alexnet/plots/metrics")
