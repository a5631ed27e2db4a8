"""Per-experiment workspaces for sweeps, and the DVC plumbing around them. No Prefect here.
The DVC plumbing the flows share (stage names and graph, pushing ``cache: false`` outputs) is
:mod:`flows.stages`; this module adds what only sweeps need.

Each experiment of a sweep runs in a git clone of its own (``<root>/<sweep>/<experiment>``) at the
sweep's baseline commit, so concurrent ``dvc exp run``s never contend for one repository's lock.
Results travel two ways: the experiment's git ref is pushed back (``dvc exp push``) to the
repository the sweep started from, and its data -- outputs and run-cache -- goes to the DVC remote.
On one host the clones can also share one DVC cache directory (``cache_dir``), so a stage that ran
in one workspace is restored, not rerun, in the next.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from flows.stages import child_env, plan, stage_graph, stage_name

REMOTE_NAME = "sweep"


class WorkspaceError(RuntimeError):
    """A git step around the workspace failed; the message carries git's own words."""


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


def head(repo: Path) -> str:
    return git(["rev-parse", "HEAD"], repo).stdout.strip()


def dirty_pipeline_files(repo: Path) -> list[str]:
    """Tracked files with uncommitted changes: a sweep's workspaces see only what is committed."""
    out = git(["status", "--porcelain", "--untracked-files=no"], repo).stdout
    return [line[3:] for line in out.splitlines() if line.strip()]


def _has_commit(ws: Path, rev: str) -> bool:
    return git(["cat-file", "-e", f"{rev}^{{commit}}"], ws, check=False).returncode == 0


def prepare(ws: Path, git_url: str, rev: str, *, cache_dir: str | None, dvc_remote: str | None) -> str:
    """A clone of ``git_url`` at ``rev`` in ``ws``, reused when it exists (a retried experiment keeps
    its training checkpoints), with the given DVC cache directory and default remote. Returns
    ``"cloned"`` or ``"reused"``."""
    how = "reused"
    if (ws / ".git").is_dir():
        git(["remote", "set-url", "origin", git_url], ws)
        if not _has_commit(ws, rev):
            git(["fetch", "-q", "origin"], ws, check=False)
        if not _has_commit(ws, rev):
            shutil.rmtree(ws)
    if not (ws / ".git").is_dir():
        how = "cloned"
        ws.parent.mkdir(parents=True, exist_ok=True)
        if ws.exists():
            shutil.rmtree(ws)
        git(["clone", "-q", "--no-checkout", git_url, str(ws)], ws.parent)
        if not _has_commit(ws, rev):
            git(["fetch", "-q", "origin", rev], ws, check=False)
        if not _has_commit(ws, rev):
            raise WorkspaceError(f"commit {rev} is not in {git_url}: commit and push the sweep's baseline there first")
    # Put back the tracked files a failed attempt changed (params set by -S); untracked files --
    # outputs, training checkpoints to resume from -- stay.
    git(["checkout", "-q", "-f", "--detach", rev], ws)
    write_local_config(ws, cache_dir=cache_dir, dvc_remote=dvc_remote)
    return how


def write_local_config(
    ws: Path, *, cache_dir: str | None, dvc_remote: str | None, link_type: str | None = None
) -> None:
    """``.dvc/config.local`` of the workspace: the shared cache directory, how outputs link to it, and
    the remote (what ``dvc cache dir --local``, ``dvc config --local cache.type`` and ``dvc remote add
    --local -d`` would write)."""
    lines = []
    if cache_dir or link_type:
        lines += ["[cache]"]
        lines += [f"    dir = {cache_dir}"] if cache_dir else []
        lines += [f"    type = {link_type}"] if link_type else []
    if dvc_remote:
        lines += ["[core]", f"    remote = {REMOTE_NAME}", f"['remote \"{REMOTE_NAME}\"']", f"    url = {dvc_remote}"]
    path = ws / ".dvc" / "config.local"
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n" if lines else "")


def has_experiment(ws: Path, baseline: str, name: str) -> bool:
    """Whether ``ws`` holds experiment ``name`` of ``baseline`` (an earlier attempt ran it but
    did not get to push it)."""
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    return git(["show-ref", "--verify", "-q", ref], ws, check=False).returncode == 0


def remove(ws: Path) -> None:
    shutil.rmtree(ws, ignore_errors=True)


# -- DVC -----------------------------------------------------------------------------------------------


def default_remote(repo: Path) -> tuple[str | None, bool]:
    """The URL of ``repo``'s default DVC remote and whether a clone gets it from the committed
    ``.dvc/config`` (then the workspaces need not be told)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        config = dvc_repo.config
        name = config["core"].get("remote")
        if not name or name not in config["remote"]:
            return None, False
        url = config["remote"][name].get("url")
        committed = config.load_one("repo")
        in_git = committed.get("core", {}).get("remote") == name and name in committed.get("remote", {})
    return url, in_git


def cache_dir_of(repo: Path) -> str | None:
    """The DVC cache directory of the checkout at ``repo`` (None when it is not a DVC repo)."""
    if not (repo / ".dvc").is_dir():
        return None
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return dvc_repo.cache.local_cache_dir


def _touches(key: str, stage_keys: Iterable[str]) -> bool:
    return any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in stage_keys)


def shared_stages(repo: Path, varied: Iterable[str], targets: Sequence[str] | None = None) -> list[str]:
    """The stages no experiment of the sweep changes -- none of their params (nor those of any
    stage upstream) is among ``varied`` -- in dependency order, limited to what ``targets`` needs.
    A sweep runs them once before the experiments, so the experiments all restore them instead of
    computing them side by side."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    varied = [k.split(":", 1)[1] if ":" in k else k for k in varied]
    graph = stage_graph(repo)
    with Repo(str(repo)) as dvc_repo:
        touched = set()
        for stage in dvc_repo.index.stages:
            if not stage.cmd:
                continue
            keys = [p for dep in stage.deps if isinstance(dep, ParamsDependency) for p in (dep.params or [""])]
            if any(k == "" or _touches(v, [k]) for k in keys for v in varied):
                touched.add(stage_name(stage, dvc_repo.root_dir))
    order = plan(graph, list(targets) if targets else None)
    changed: set[str] = set()
    for stage in order:  # upstream first: a stage downstream of a changed one changes too
        if stage in touched or any(dep in changed for dep in graph[stage]):
            changed.add(stage)
    return [s for s in order if s not in changed]
