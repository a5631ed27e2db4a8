"""Training stages meeting faults of their inputs and their environment: a damaged checkpoint heals by
itself, every other fault is one ``error:`` line with exit 2 (75 for a full disk: space may be freed), and nothing
of the previous good run is lost.

Faults are real, not mocked: a file blocking the output folder, a tmpfs too small for the model (mounted
in a user namespace, so no root is needed; skipped where the kernel refuses one), an output folder that
is a link into sysfs (where the kernel denies creating files to every user, root included), files cut
short or garbled on disk.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.conftest import copy_of, finish, needs_mount, set_params, stage, stage_on_small_disk


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("error:")]


def one_error(code: int, log: str, status: int = 2) -> str:
    """The stage's single ``error:`` line, checked to come with exit ``status`` (2: final; 75: try again) and
    no traceback."""
    errors = error_lines(log)
    print(errors, "exit", code)  # the report quotes what each fault printed
    assert code == status and len(errors) == 1 and "Traceback" not in log, log[-3000:]
    return errors[0]


def snapshot(work: Path) -> dict[str, bytes]:
    """Every file of the previous run's outputs: model, metadata, metrics, the DVCLive log."""
    files = [work / "models/alexnet.keras", work / "models/alexnet.meta.json", work / "metrics/alexnet.json"]
    files += sorted((work / "dvclive/alexnet").rglob("*.*"))
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def stuck(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace whose run trained every epoch but could not write its model (a file named ``models``
    is in the way): the run's checkpoint is left, and ``stuck.log`` holds what the stage printed."""
    work = copy_of(workspace, tmp_path_factory.mktemp("stuck"))
    (work / "models").write_text("in the way")
    code, log = finish(stage("tasks.train_alexnet", work))
    (work / "stuck.log").write_text(f"{code}\n{log}")
    return work


@pytest.fixture(scope="module")
def trained(stuck: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace after a good run of train_alexnet: the stuck one, rerun with the way cleared (it resumes
    from the whole checkpoint); ``trained.log`` holds what that run printed."""
    work = tmp_path_factory.mktemp("trained") / "work"
    shutil.copytree(stuck, work)
    (work / "models").unlink()
    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 0, log
    (work / "trained.log").write_text(log)
    return work


def test_an_output_path_blocked_by_a_file_is_one_line(stuck: Path) -> None:
    code, log = (stuck / "stuck.log").read_text().split("\n", 1)
    line = one_error(int(code), log)
    assert line.startswith("error: a file where a folder belongs, writing models/alexnet.keras: [Errno 17]")
    assert (stuck / "checkpoints/alexnet/state.json").is_file(), "the finished training is kept for the rerun"


def _cut_short(folder: Path) -> Path:
    [path] = folder.glob("last*.keras")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _garble(folder: Path) -> Path:
    [path] = folder.glob("last*.keras")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    return path


def _empty_best(folder: Path) -> Path:
    [path] = folder.glob("best*.weights.h5")
    path.write_bytes(b"")
    return path


def _garble_state(folder: Path) -> Path:
    path = folder / "state.json"
    path.write_text(path.read_text()[:40])
    return path


def _damaged_line(lines: list[str], work: Path, damaged: Path) -> None:
    """The one warning about the damaged checkpoint, and the checkpoint kept aside for a person."""
    print(lines)
    assert len(lines) == 1
    assert "checkpoint in checkpoints/alexnet is damaged (" in lines[0]
    assert "moved to checkpoints/alexnet.damaged-" in lines[0] and lines[0].endswith("starting afresh")
    [aside] = (work / "checkpoints").glob("alexnet.damaged-*")
    assert (aside / damaged.name).is_file(), "the damaged checkpoint is kept for a person"


def test_a_damaged_checkpoint_is_moved_aside_and_the_stage_trains_afresh(stuck: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(stuck, work)
    (work / "models").unlink()
    damaged = _cut_short(work / "checkpoints/alexnet")
    code, log = finish(stage("tasks.train_alexnet", work))
    assert code == 0, log
    _damaged_line([line for line in log.splitlines() if "is damaged" in line], work, damaged)
    assert "Traceback" not in log
    assert "resuming" not in log and "alexnet epoch 1/2" in log and "alexnet epoch 2/2" in log
    assert (work / "models/alexnet.keras").is_file() and not (work / "checkpoints/alexnet").exists()


@pytest.mark.parametrize("damage", [_cut_short, _garble, _empty_best, _garble_state], ids=lambda f: f.__name__[1:])
def test_each_kind_of_damage_is_found_and_the_checkpoint_loads_as_a_fresh_start(
    stuck: Path, tmp_path: Path, damage, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What the stage does with each damaged checkpoint on load (the test above runs the whole stage once)."""
    from tasks.model.checkpoints import Checkpoints

    work = tmp_path / "work"
    shutil.copytree(stuck, work)
    fingerprint = json.loads((work / "checkpoints/alexnet/state.json").read_text())["fingerprint"]
    damaged = damage(work / "checkpoints/alexnet")
    monkeypatch.chdir(work)  # the stage's own view: paths relative to its working directory
    with caplog.at_level(logging.INFO, logger="tasks.model.checkpoints"):
        model, state = Checkpoints(Path("checkpoints"), "alexnet").load(fingerprint)
    assert model is None and state.epochs_done == 0 and state.fingerprint == fingerprint
    _damaged_line([r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()], work, damaged)
    assert not any("resuming" in r.getMessage() for r in caplog.records)
    assert list((work / "checkpoints/alexnet").iterdir()) == [], "a fresh start: an empty checkpoint folder"


def test_a_checkpoint_for_other_params_is_not_reused(
    stuck: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tasks.model.checkpoints import Checkpoints

    work = tmp_path / "work"
    shutil.copytree(stuck, work)
    monkeypatch.chdir(work)
    with caplog.at_level(logging.INFO, logger="tasks.model.checkpoints"):
        model, state = Checkpoints(Path("checkpoints"), "alexnet").load("other params")
    assert model is None and state.epochs_done == 0
    assert "checkpoint in checkpoints/alexnet is for other params or data; starting afresh" in caplog.messages
    assert list((work / "checkpoints/alexnet").iterdir()) == [], "the other run's files are gone"


def test_a_whole_checkpoint_resumes(trained: Path) -> None:
    log = (trained / "trained.log").read_text()
    assert "resuming from checkpoints/alexnet after epoch 2" in log and "alexnet epoch 1/2" not in log
    assert "is damaged" not in log
    assert (trained / "models/alexnet.keras").is_file() and not (trained / "checkpoints/alexnet").exists()


def test_a_failed_run_keeps_the_previous_runs_outputs_and_log(trained: Path, tmp_path: Path) -> None:
    """A run that diverges in its first epoch: the previous model, metrics and DVCLive log are all still there."""
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    before = snapshot(work)
    set_params(work, alexnet={"learning_rate": 1e30, "seed": 7})
    line = one_error(*finish(stage("tasks.train_alexnet", work)))
    assert "training diverged at epoch 1" in line
    assert snapshot(work) == before


@needs_mount
def test_a_full_disk_under_the_model_is_one_line_and_loses_nothing(trained: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    set_params(work, alexnet={"seed": 7})  # a new run, not the one on disk
    shutil.rmtree(work / "models")  # the tmpfs hides the folder anyway: keep the comparison honest
    before = snapshot_without_model(work)
    line = one_error(*stage_on_small_disk("tasks.train_alexnet", work, "models", "16k"), status=75)  # space may come
    assert line.startswith("error: disk full, writing models/alexnet.keras: [Errno 28] No space left on device")
    assert snapshot_without_model(work) == before
    assert (work / "checkpoints/alexnet/state.json").is_file(), "the finished training waits for more space"


def snapshot_without_model(work: Path) -> dict[str, bytes]:
    files = [work / "metrics/alexnet.json", *sorted((work / "dvclive/alexnet").rglob("*.*"))]
    return {str(p.relative_to(work)): p.read_bytes() for p in files}


@needs_mount
def test_a_full_disk_under_the_checkpoints_is_one_line(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path)
    line = one_error(*stage_on_small_disk("tasks.train_alexnet", work, "checkpoints", "64k"), status=75)
    assert line.startswith("error: disk full, writing checkpoints/alexnet: [Errno 28] No space left on device")


def test_permission_denied_on_an_output_is_one_line(stuck: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    shutil.copytree(stuck, work)
    (work / "models").unlink()
    (work / "models").symlink_to("/sys/fs")  # sysfs refuses new files to everyone, root included
    line = one_error(*finish(stage("tasks.train_alexnet", work)))
    assert line.startswith("error: permission denied, writing models/alexnet.keras: [Errno 13] Permission denied")


def test_a_truncated_prepared_split_is_one_line(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path)
    split = work / "data/prepared/train.npz"
    split.write_bytes(split.read_bytes()[:1000])
    line = one_error(*finish(stage("tasks.train_alexnet", work)))
    assert line.startswith(
        "error: damaged or not the right kind of file, reading data/prepared/train.npz (the prepared train split): "
        "BadZipFile"
    )
    assert not (work / "models").exists()


def test_vgg16_weights_naming_a_file_that_is_not_weights_is_one_line(workspace: Path, tmp_path: Path) -> None:
    work = copy_of(workspace, tmp_path, vgg16={"weights": "notes_notop.h5", "width": 1.0})
    (work / "notes_notop.h5").write_text("not an HDF5 file\n")
    line = one_error(*finish(stage("tasks.train_vgg16", work)))
    assert line.startswith("error: damaged or not the right kind of file, reading notes_notop.h5 (vgg16.weights): ")
    assert not (work / "models").exists()
