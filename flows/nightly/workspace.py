"""The nightly run's git side: bring the branch head into a worker-owned clone without losing
anything, and find the runs recorded before. No Prefect here.

Hand-written rather than Prefect's ``git_clone`` pull step, which clones shallow (DVC cannot push
experiments from a shallow clone) and deletes and re-clones a folder whose local changes conflict
with the new commit -- training checkpoints and an unrecorded run's results with it.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from flows.workspace import WorkspaceError, git, write_local_config

#: DVC keeps experiments as git refs ``refs/exps/<sha[:2]>/<sha[2:]>/<name>`` on their baseline commit.
_EXP_REF = re.compile(r"^refs/exps/(?P<a>[0-9a-f]{2})/(?P<b>[0-9a-f]{38})/(?P<name>.+)$")
#: Experiments fetched from and pushed to the project's remote.
EXPS_REFSPEC = "+refs/exps/*:refs/exps/*"


@dataclass(frozen=True)
class Sync:
    """What bringing the branch head in did."""

    commit: str
    previous: str | None  # the commit the workspace was on before; None for a new clone
    how: str  # "cloned", "updated" (checked out a new commit) or "unchanged"
    stash: str | None = None  # the message of the stash holding changes that were not recorded


@dataclass(frozen=True)
class RecordedRun:
    """An experiment a nightly run recorded: its name, full ref and baseline commit."""

    name: str
    ref: str
    baseline: str


def branch_head(ws: Path, branch: str) -> str:
    return git(["rev-parse", f"refs/remotes/origin/{branch}^{{commit}}"], ws).stdout.strip()


def sync(
    ws: Path,
    git_url: str,
    branch: str,
    *,
    cache_dir: str | None,
    dvc_remote: str | None,
    link_type: str | None,
    recorded_prefix: str,
) -> Sync:
    """Put the workspace clone ``ws`` on the head of ``branch`` of ``git_url``.

    A new clone is a full one. In an existing clone, nothing is overwritten silently: on the same
    commit the workspace stays as it is (a crashed run's results and checkpoints are what the next
    run resumes from); to move to a new commit, local changes are dropped only when a recorded run
    (``recorded_prefix`` + anything) holds exactly that state, and stashed with a message otherwise.
    Untracked ignored files -- DVC outputs, checkpoints -- are never touched.
    """
    if (ws / ".git").is_dir():
        origin = git(["remote", "get-url", "origin"], ws, check=False).stdout.strip()
        if origin != git_url:
            raise WorkspaceError(
                f"{ws} is a clone of {origin or 'nothing'}, not of {git_url}: move it away or pick another workspace"
            )
        fetched = git(["fetch", "-q", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}"], ws, check=False)
        if fetched.returncode != 0:
            raise WorkspaceError(f"fetching branch {branch!r} of {git_url} failed: {fetched.stderr.strip()}")
        git(["fetch", "-q", "origin", EXPS_REFSPEC], ws)
        how = "updated"
        previous: str | None = git(["rev-parse", "HEAD"], ws).stdout.strip()
    else:
        ws.parent.mkdir(parents=True, exist_ok=True)
        git(["clone", "-q", "--no-checkout", git_url, str(ws)], ws.parent)
        git(["fetch", "-q", "origin", EXPS_REFSPEC], ws)
        how, previous = "cloned", None
    try:
        target = branch_head(ws, branch)
    except WorkspaceError:
        raise WorkspaceError(f"branch {branch!r} is not in {git_url}") from None
    stash = None
    if previous == target:
        how = "unchanged"
    else:
        if previous is not None and is_dirty(ws):
            tree = worktree_tree(ws)
            if any(holds(ws, run, tree) for run in recorded_runs(ws, recorded_prefix)):
                git(["clean", "-q", "-d", "-f"], ws)  # recorded: untracked results live in the experiment
            else:
                stash = f"cifar10-nightly: changes left on {previous[:12]}, stashed before checking out {target[:12]}"
                git(["stash", "push", "-q", "--include-untracked", "-m", stash], ws)
        git(["checkout", "-q", "-f", "--detach", target], ws)
    write_local_config(ws, cache_dir=cache_dir, dvc_remote=dvc_remote, link_type=link_type)
    return Sync(target, previous, how, stash)


def is_dirty(ws: Path) -> bool:
    """Tracked changes or untracked files that are not ignored."""
    return bool(git(["status", "--porcelain"], ws).stdout.strip())


def worktree_tree(ws: Path) -> str:
    """The git tree id of the working tree as it is (tracked and unignored untracked files), computed in a
    scratch index so the real one is untouched."""
    with tempfile.TemporaryDirectory() as tmp:
        index = Path(tmp) / "index"
        env = {"GIT_INDEX_FILE": str(index)}
        git(["read-tree", "HEAD"], ws, env=env)
        git(["add", "-A"], ws, env=env)
        return git(["write-tree"], ws, env=env).stdout.strip()


def holds(ws: Path, run: RecordedRun, tree: str) -> bool:
    """Whether the recorded run's commit holds exactly ``tree`` (but for DVC's own scratch files,
    which ``dvc exp save`` commits and git otherwise ignores)."""
    args = ["diff", "--quiet", run.ref, tree, "--", ".", ":(exclude).dvc/tmp"]
    return git(args, ws, check=False).returncode == 0


def recorded_runs(ws: Path, prefix: str) -> list[RecordedRun]:
    """Experiments named ``<prefix><anything>``, oldest first (the names carry a UTC timestamp)."""
    out = git(["for-each-ref", "--format=%(refname)", "refs/exps/"], ws).stdout
    runs = []
    for ref in out.split():
        m = _EXP_REF.match(ref)
        if m and m.group("name").startswith(prefix):
            runs.append(RecordedRun(m.group("name"), ref, m.group("a") + m.group("b")))
    return sorted(runs, key=lambda r: r.name)


def commits_between(ws: Path, old: str, new: str, limit: int = 20) -> list[str]:
    """``<short sha> <subject>`` of the commits in ``new`` and not in ``old``, newest first."""
    out = git(["log", f"--max-count={limit}", "--format=%h %s", f"{old}..{new}"], ws, check=False).stdout
    return out.splitlines()


def read_at(ws: Path, rev: str, path: str | os.PathLike[str]) -> str | None:
    """A file's text at ``rev``; None where it does not exist."""
    proc = git(["show", f"{rev}:{Path(path).as_posix()}"], ws, check=False)
    return proc.stdout if proc.returncode == 0 else None
