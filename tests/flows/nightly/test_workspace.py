"""The nightly workspace's git side with real git: the branch head comes in, and nothing a run left
behind is lost unless a recorded run holds it."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows import workspace as nws
from flows.nightly.flow import LINK_TYPE
from flows.workspace import WorkspaceError
from tests.conftest import run

GIT_ID = ["-c", "user.email=t@example.invalid", "-c", "user.name=t"]


def commit(repo: Path, message: str, **files: str) -> str:
    for name, text in files.items():
        (repo / name).write_text(text)
    run(["git", "add", *files], cwd=repo)
    run(["git", *GIT_ID, "commit", "-qm", message], cwd=repo)
    return run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()


@pytest.fixture
def origin(tmp_path: Path) -> tuple[Path, Path]:
    """A bare remote and a developer's clone that pushes to it (``main`` holds params.yaml and .gitignore)."""
    bare, dev = tmp_path / "remote.git", tmp_path / "dev"
    run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], cwd=tmp_path)
    run(["git", "clone", "-q", str(bare), str(dev)], cwd=tmp_path)
    run(["git", "checkout", "-q", "-b", "main"], cwd=dev)
    commit(dev, "init", **{"params.yaml": "lr: 0.1\n", ".gitignore": "/checkpoints/\n"})
    run(["git", "push", "-q", "origin", "main"], cwd=dev)
    return bare, dev


def sync(ws: Path, bare: Path) -> nws.Sync:
    return nws.sync(
        ws, str(bare), "main", cache_dir=None, dvc_remote=None, link_type=LINK_TYPE, recorded_prefix="nightly-"
    )


def record(ws: Path, name: str) -> str:
    """What ``dvc exp save`` leaves: a commit of the workspace as it is, on HEAD, under refs/exps."""
    tree = nws.worktree_tree(ws)
    head = run(["git", "rev-parse", "HEAD"], cwd=ws).stdout.strip()
    exp = run(["git", *GIT_ID, "commit-tree", tree, "-p", head, "-m", name], cwd=ws).stdout.strip()
    run(["git", "update-ref", f"refs/exps/{head[:2]}/{head[2:]}/{name}", exp], cwd=ws)
    return exp


def test_a_new_clone_then_the_next_commit_of_the_branch(origin: tuple[Path, Path], tmp_path: Path) -> None:
    bare, dev = origin
    ws = tmp_path / "ws"
    first = sync(ws, bare)
    head = run(["git", "rev-parse", "HEAD"], cwd=dev).stdout.strip()
    assert (first.how, first.commit, first.previous, first.stash) == ("cloned", head, None, None)
    assert "type = reflink,hardlink,copy" in (ws / ".dvc/config.local").read_text()
    assert sync(ws, bare).how == "unchanged"

    newer = commit(dev, "lower lr", **{"params.yaml": "lr: 0.05\n"})
    run(["git", "push", "-q", "origin", "main"], cwd=dev)
    second = sync(ws, bare)
    assert (second.how, second.commit, second.previous) == ("updated", newer, head)
    assert (ws / "params.yaml").read_text() == "lr: 0.05\n"


def test_changes_no_recorded_run_holds_are_stashed_not_lost(origin: tuple[Path, Path], tmp_path: Path) -> None:
    bare, dev = origin
    ws = tmp_path / "ws"
    sync(ws, bare)
    (ws / "params.yaml").write_text("lr: 0.3  # a crashed run's or someone's edit\n")
    (ws / "metrics.json").write_text('{"acc": 0.5}\n')
    (ws / "checkpoints").mkdir()
    (ws / "checkpoints/state.json").write_text("{}")  # ignored: stays where it is
    assert sync(ws, bare).how == "unchanged"  # same commit: the workspace is left as it is
    assert (ws / "params.yaml").read_text().startswith("lr: 0.3")

    commit(dev, "next", **{"params.yaml": "lr: 0.05\n"})
    run(["git", "push", "-q", "origin", "main"], cwd=dev)
    synced = sync(ws, bare)
    assert synced.how == "updated" and synced.stash and "stashed before checking out" in synced.stash
    assert (ws / "params.yaml").read_text() == "lr: 0.05\n" and not (ws / "metrics.json").exists()
    assert (ws / "checkpoints/state.json").is_file()
    stash = run(["git", "stash", "list"], cwd=ws).stdout
    assert synced.stash in stash
    shown = run(["git", "show", "stash@{0}", "--", "params.yaml"], cwd=ws).stdout
    assert "lr: 0.3" in shown  # recoverable


def test_changes_a_recorded_run_holds_are_dropped_without_a_stash(origin: tuple[Path, Path], tmp_path: Path) -> None:
    bare, dev = origin
    ws = tmp_path / "ws"
    sync(ws, bare)
    (ws / "params.yaml").write_text("lr: 0.1\nresult: 1\n")
    (ws / "metrics.json").write_text('{"acc": 0.5}\n')
    record(ws, "nightly-20261126-020000")
    commit(dev, "next", **{"params.yaml": "lr: 0.05\n"})
    run(["git", "push", "-q", "origin", "main"], cwd=dev)
    synced = sync(ws, bare)
    assert synced.how == "updated" and synced.stash is None
    assert not (ws / "metrics.json").exists() and run(["git", "stash", "list"], cwd=ws).stdout == ""


def test_recorded_runs_of_one_deployment_oldest_first(origin: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = origin
    ws = tmp_path / "ws"
    sync(ws, bare)
    for name in ("nightly-20261126-020000", "other-20261127-020000", "nightly-20261125-020000"):
        record(ws, name)
    runs = nws.recorded_runs(ws, "nightly-")
    assert [r.name for r in runs] == ["nightly-20261125-020000", "nightly-20261126-020000"]
    head = run(["git", "rev-parse", "HEAD"], cwd=ws).stdout.strip()
    assert all(r.baseline == head and r.ref.endswith(r.name) for r in runs)


def test_a_workspace_cloned_from_elsewhere_is_refused(origin: tuple[Path, Path], tmp_path: Path) -> None:
    bare, _ = origin
    ws = tmp_path / "ws"
    sync(ws, bare)
    other = tmp_path / "other.git"
    run(["git", "clone", "-q", "--bare", str(bare), str(other)], cwd=tmp_path)
    with pytest.raises(WorkspaceError, match="is a clone of .*remote.git, not of .*other.git"):
        sync(ws, other)
    with pytest.raises(WorkspaceError, match="branch 'nope'"):
        nws.sync(ws, str(bare), "nope", cache_dir=None, dvc_remote=None, link_type=None, recorded_prefix="n-")
