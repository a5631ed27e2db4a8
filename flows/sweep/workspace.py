"""Per-experiment workspaces for sweeps, and the DVC plumbing around them. No Prefect here.
The git and DVC-config helpers every workspace clone needs are :mod:`flows.workspace`; this
module adds what only sweeps need.

Each experiment of a sweep runs in a git clone of its own (``<root>/<sweep>/<experiment>``) at the
sweep's baseline commit, so concurrent ``dvc exp run``s never contend for one repository's lock.
Results travel two ways: the experiment's git ref is pushed back (``dvc exp push``) to the
repository the sweep started from, and its data -- outputs and run-cache -- goes to the DVC remote.
On one host the clones can also share one DVC cache directory (``cache_dir``), so a stage that ran
in one workspace is restored, not rerun, in the next.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from typing import Any
from pathlib import Path

from flows.stages import dag, stage_order
from flows.workspace import WorkspaceError, git, write_local_config


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


def has_experiment(ws: Path, baseline: str, name: str) -> bool:
    """Whether ``ws`` holds experiment ``name`` of ``baseline`` (an earlier attempt ran it but
    did not get to push it)."""
    ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"
    return git(["show-ref", "--verify", "-q", ref], ws, check=False).returncode == 0


def remove(ws: Path) -> None:
    shutil.rmtree(ws, ignore_errors=True)


# -- DVC -----------------------------------------------------------------------------------------------


def _keys(params: Any, prefix: str = "") -> list[str]:
    if not isinstance(params, dict) or not params:
        return [prefix]
    return [k for key, value in params.items() for k in _keys(value, f"{prefix}{key}.")]


def shared_stages(repo: Path, varied: Iterable[str], targets: Sequence[str] | None = None) -> list[str]:
    """The stages no experiment of the sweep changes -- none of their params (``dvc.api.params_show``)
    nor those of any stage upstream is among ``varied`` -- in ``dvc repro`` order, limited to what
    ``targets`` needs. A sweep runs them once before the experiments, so the experiments all restore
    them instead of computing them side by side."""
    import contextlib

    import dvc.api

    varied = [k.split(":", 1)[1] if ":" in k else k for k in varied]
    order = stage_order(repo, list(targets) if targets else None)
    edges = dag(repo)[1]
    changed: set[str] = set()
    for stage in order:  # upstream first: a stage downstream of a changed one changes too
        with contextlib.chdir(repo):  # dvc.api reads params files relative to the working directory
            keys = [k.rstrip(".") for k in _keys(dvc.api.params_show(stages=stage))]
        touched = any(v == k or v.startswith(f"{k}.") or k.startswith(f"{v}.") for k in keys for v in varied)
        if touched or any(a in changed for a, b in edges if b == stage):
            changed.add(stage)
    return [s for s in order if s not in changed]
