"""What every workspace clone of the project needs, sweeps' and the nightly run's alike: git run
with its errors as :class:`WorkspaceError`, a clone's ``.dvc/config.local`` (shared cache, link
type, remote), and the cache directory and default remote of a checkout. No Prefect here.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from flows.stages import child_env, dvc_out

#: The name a workspace's ``.dvc/config.local`` gives the DVC remote it is told about.
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


def default_remote(repo: Path) -> tuple[str | None, bool]:
    """The URL of ``repo``'s default DVC remote and whether a clone gets it from the committed
    ``.dvc/config`` (then the workspaces need not be told), from ``dvc config --list --show-origin``."""
    found: dict[str, tuple[str, str]] = {}
    for line in dvc_out(["config", "--list", "--show-origin"], repo).splitlines():
        origin, _, setting = line.partition("\t")
        key, _, value = setting.partition("=")
        found[key] = (value, Path(origin).as_posix())
    name, name_from = found.get("core.remote", (None, ""))
    url, url_from = found.get(f"remote.{name}.url", (None, ""))
    return url, bool(url) and name_from == url_from == ".dvc/config"


def cache_dir_of(repo: Path) -> str | None:
    """The DVC cache directory of the checkout at ``repo`` (None when it is not a DVC repo)."""
    return dvc_out(["cache", "dir"], repo).strip() if (repo / ".dvc").is_dir() else None
