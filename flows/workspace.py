"""The git clones the sweep and nightly flows run in: a sweep experiment's clone at its baseline, the
nightly clone brought to a branch head without losing anything, their ``.dvc/config.local``, the
experiments recorded in them. No Prefect here. Not Prefect's ``git_clone`` pull step: it clones
shallow (DVC cannot push experiments from a shallow clone) and re-clones a folder whose local
changes conflict, checkpoints and unrecorded results with it."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
import subprocess
from typing import Any

import yaml

from flows.stages import child_env, dvc_config, dvc_out

#: The name a workspace's ``.dvc/config.local`` gives the DVC remote it is told about.
REMOTE_NAME = "sweep"
#: DVC keeps experiments as git refs ``refs/exps/<sha[:2]>/<sha[2:]>/<name>`` on their baseline commit.
_EXP_REF = re.compile(r"^refs/exps/(?P<a>[0-9a-f]{2})/(?P<b>[0-9a-f]{38})/(?P<name>.+)$")
EXPS_REFSPEC = "+refs/exps/*:refs/exps/*"


class WorkspaceError(RuntimeError):
    """A git step around a workspace failed; the message carries git's own words."""


def git(
    args: Sequence[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["git", *args],
        cwd=cwd,
        env=child_env({"GIT_TERMINAL_PROMPT": "0", **(env or {})}),
        text=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args)} failed in {cwd}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def write_local_config(
    ws: Path, *, cache_dir: str | None, dvc_remote: str | None, link_type: str | None = None
) -> None:
    """``.dvc/config.local``: the shared cache directory, how outputs link to it, and the default remote
    (what ``dvc cache dir --local``, ``dvc config --local cache.type`` and ``dvc remote add --local -d``
    would write, without three DVC start-ups)."""
    cache = [f"    dir = {cache_dir}"] * bool(cache_dir) + [f"    type = {link_type}"] * bool(link_type)
    lines = ["[cache]", *cache] if cache else []
    if dvc_remote:
        lines += ["[core]", f"    remote = {REMOTE_NAME}", f"['remote \"{REMOTE_NAME}\"']", f"    url = {dvc_remote}"]
    (ws / ".dvc").mkdir(exist_ok=True)
    (ws / ".dvc" / "config.local").write_text("".join(f"{line}\n" for line in lines))


def default_remote(repo: Path) -> tuple[str | None, bool]:
    """The URL of ``repo``'s default DVC remote, and whether a clone gets it from the committed
    ``.dvc/config`` (then its workspaces need not be told)."""
    values, origins = dvc_config(repo)
    name = values.get("core.remote")
    url = values.get(f"remote.{name}.url")
    return url, bool(url) and origins.get("core.remote") == origins.get(f"remote.{name}.url") == ".dvc/config"


def cache_dir_of(repo: Path) -> str | None:
    """The DVC cache directory of the checkout at ``repo`` (None when it is not a DVC repo)."""
    return dvc_out(["cache", "dir"], repo).strip() if (repo / ".dvc").is_dir() else None


def _clone(ws: Path, git_url: str) -> None:
    """A full clone (DVC cannot push experiments from a shallow one), checked out later."""
    ws.parent.mkdir(parents=True, exist_ok=True)
    git(["clone", "-q", "--no-checkout", git_url, str(ws)], ws.parent)


def _has_commit(ws: Path, rev: str) -> bool:
    return git(["cat-file", "-e", f"{rev}^{{commit}}"], ws, check=False).returncode == 0


# -- a sweep experiment's clone ---------------------------------------------------------------------------


def prepare(ws: Path, git_url: str, rev: str, *, cache_dir: str | None, dvc_remote: str | None) -> str:
    """A clone of ``git_url`` at ``rev`` in ``ws`` with the given DVC cache and remote, reused when it
    exists (a retried experiment keeps its training checkpoints); ``"cloned"`` or ``"reused"``."""
    how = "reused" if (ws / ".git").is_dir() else "cloned"
    if how == "cloned":
        _clone(ws, git_url)
    git(["remote", "set-url", "origin", git_url], ws)
    for fetch in (["fetch", "-q", "origin"], ["fetch", "-q", "origin", rev]):
        if not _has_commit(ws, rev):
            git(fetch, ws, check=False)
    if not _has_commit(ws, rev):
        raise WorkspaceError(f"commit {rev} is not in {git_url}: commit and push the sweep's baseline there first")
    # Puts back the tracked files a failed attempt changed (params set by -S); untracked outputs and
    # training checkpoints stay.
    git(["checkout", "-q", "-f", "--detach", rev], ws)
    write_local_config(ws, cache_dir=cache_dir, dvc_remote=dvc_remote)
    return how


def has_experiment(ws: Path, baseline: str, name: str) -> bool:
    """Whether ``ws`` holds experiment ``name`` of ``baseline`` (an earlier attempt ran it but did not push it)."""
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    return git(["show-ref", "--verify", "-q", ref], ws, check=False).returncode == 0


# -- the nightly clone ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sync:
    """What bringing the branch head in did."""

    commit: str
    previous: str | None  # the commit the workspace was on before; None for a new clone
    how: str  # "cloned", "updated" (checked out a new commit) or "unchanged"
    stash: str | None = None  # the message of the stash holding changes no recorded run held


@dataclass(frozen=True)
class RecordedRun:
    """An experiment a nightly run recorded: its name, full ref and baseline commit."""

    name: str
    ref: str
    baseline: str


def sync(
    ws: Path,
    git_url: str,
    branch: str,
    cache_dir: str | None,
    dvc_remote: str | None,
    link_type: str | None,
    recorded_prefix: str,
) -> Sync:
    """Put the clone ``ws`` on the head of ``branch`` of ``git_url``, overwriting nothing silently.

    On the same commit the workspace stays as it is (a crashed run's results and checkpoints are what
    the next run resumes from). To move to a new commit, local changes are dropped only when a
    recorded run (``recorded_prefix`` + anything) holds exactly that state, and stashed otherwise.
    Untracked ignored files -- DVC outputs, checkpoints -- are never touched.
    """
    previous = None
    if (ws / ".git").is_dir():
        origin = git(["remote", "get-url", "origin"], ws, check=False).stdout.strip()
        if origin != git_url:
            raise WorkspaceError(
                f"{ws} is a clone of {origin or 'nothing'}, not of {git_url}: move it away or pick another workspace"
            )
        previous = git(["rev-parse", "HEAD"], ws).stdout.strip()
    else:
        _clone(ws, git_url)
    fetched = git(
        ["fetch", "-q", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}", EXPS_REFSPEC], ws, check=False
    )
    if fetched.returncode != 0:
        raise WorkspaceError(f"fetching branch {branch!r} of {git_url} failed: {fetched.stderr.strip()}")
    target = git(["rev-parse", f"refs/remotes/origin/{branch}^{{commit}}"], ws).stdout.strip()
    stash = None
    if previous != target:
        if previous and git(["status", "--porcelain"], ws).stdout.strip():
            tree = worktree_tree(ws)
            recorded = recorded_runs(ws, recorded_prefix)
            # What a recorded run's commit holds exactly (but for DVC's scratch files) is not lost.
            if any(
                git(["diff", "--quiet", r.ref, tree, "--", ".", ":(exclude).dvc/tmp"], ws, check=False).returncode == 0
                for r in recorded
            ):
                git(["clean", "-q", "-d", "-f"], ws)
            else:
                stash = f"cifar10-nightly: changes left on {previous[:12]}, stashed before checking out {target[:12]}"
                git(["stash", "push", "-q", "--include-untracked", "-m", stash], ws)
        git(["checkout", "-q", "-f", "--detach", target], ws)
    write_local_config(ws, cache_dir=cache_dir, dvc_remote=dvc_remote, link_type=link_type)
    how = "cloned" if previous is None else "unchanged" if previous == target else "updated"
    return Sync(target, previous, how, stash)


def worktree_tree(ws: Path) -> str:
    """The git tree id of the working tree as it is (tracked and unignored untracked files), written
    through a scratch index so the real one is untouched."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        git(["read-tree", "HEAD"], ws, env=env)
        git(["add", "-A"], ws, env=env)
        return git(["write-tree"], ws, env=env).stdout.strip()


def recorded_runs(ws: Path, prefix: str) -> list[RecordedRun]:
    """Experiments named ``<prefix><anything>``, oldest first (the names carry a UTC timestamp)."""
    refs = git(["for-each-ref", "--format=%(refname)", "refs/exps/"], ws).stdout.split()
    found = [m for ref in refs if (m := _EXP_REF.match(ref)) and m.group("name").startswith(prefix)]
    return sorted(
        (RecordedRun(m.group("name"), m.group(0), m.group("a") + m.group("b")) for m in found), key=lambda r: r.name
    )


def read_at(ws: Path, rev: str, path: str | Path) -> str | None:
    """A file's text at ``rev``; None where it does not exist."""
    proc = git(["show", f"{rev}:{Path(path).as_posix()}"], ws, check=False)
    return proc.stdout if proc.returncode == 0 else None


def params_at(ws: Path, rev: str) -> dict[str, Any]:
    """``params.yaml`` at ``rev`` as parsed YAML; empty where the commit has none."""
    return yaml.safe_load(read_at(ws, rev, "params.yaml") or "{}") or {}
