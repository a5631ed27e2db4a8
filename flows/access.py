"""What a deployed flow run's parameters may point at: folders under the allowed roots, git remotes on
the allowed list.

Whoever may start a deployment chooses its parameters, and those that name a workspace or a git URL
decide which ``dvc.yaml`` -- which code -- the worker runs. So a run started from a deployment accepts:

- a folder (``repo_dir``, ``workspace``, ``workspace_root``, ``cache_dir``) only inside the deployment's
  working directory (the checkout its pull step sets) or inside a root listed in
  ``CIFAR10_ALLOWED_ROOTS`` (paths separated by ``os.pathsep``);
- a git URL (``git_url``) only if it is the checkout's own ``origin``, a folder under an allowed root,
  or listed in ``CIFAR10_ALLOWED_REMOTES`` (exact URLs, separated by whitespace).

Both variables belong in the deployment's or the work pool's job variables (``env``), which only those
who administer the deployment can change (docs/security.md). A flow called in-process or from the
command line, with no deployment, is its caller's own and is not checked. Parameters left at their
defaults are the deployment's own and are not checked either.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOTS_VARIABLE = "CIFAR10_ALLOWED_ROOTS"
REMOTES_VARIABLE = "CIFAR10_ALLOWED_REMOTES"


class AccessDenied(PermissionError):
    """A parameter names a folder or a git remote this deployment does not allow."""


def allowed_roots(checkout: Path) -> list[Path]:
    """The deployment's working directory, then every root ``CIFAR10_ALLOWED_ROOTS`` lists."""
    listed = [Path(p).expanduser().resolve() for p in os.environ.get(ROOTS_VARIABLE, "").split(os.pathsep) if p]
    return [checkout.resolve(), *listed]


def allowed_remotes(checkout: Path) -> list[str]:
    """The checkout's ``origin`` (when it has one), then every URL ``CIFAR10_ALLOWED_REMOTES`` lists."""
    try:
        origin = subprocess.run(
            ["git", "remote", "get-url", "origin"], cwd=checkout, capture_output=True, text=True, check=False
        )
    except OSError:  # no git on this host: a checkout without git has no origin either
        origin = None
    own = [origin.stdout.strip()] if origin and origin.returncode == 0 and origin.stdout.strip() else []
    return [*own, *os.environ.get(REMOTES_VARIABLE, "").split()]


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check(
    folders: Mapping[str, str | os.PathLike[str] | None] | None = None,
    remotes: Mapping[str, str | None] | None = None,
    *,
    checkout: Path | None = None,
    deployed: bool | None = None,
) -> None:
    """Refuse, with :class:`AccessDenied`, a folder outside the allowed roots or a git URL not allowed.

    ``folders`` and ``remotes`` map each parameter's name to its value (None: left at its default).
    ``checkout`` is the deployment's working directory (default: the current one); ``deployed`` whether
    this run came from a deployment (default: Prefect's runtime says).
    """
    if deployed is None:
        from prefect.runtime import deployment

        deployed = deployment.id is not None
    if not deployed:
        return
    checkout = (checkout or Path.cwd()).resolve()
    roots = allowed_roots(checkout)
    for name, value in (folders or {}).items():
        if value is not None and not _inside(Path(value).expanduser().resolve(), roots):
            raise AccessDenied(
                f"parameter {name}={os.fspath(value)!r} is outside the folders this deployment allows "
                f"({', '.join(map(str, roots))}); its administrators can add roots to {ROOTS_VARIABLE} "
                "in the deployment's job variables"
            )
    allowed = allowed_remotes(checkout)
    for name, url in (remotes or {}).items():
        if url is None or url in allowed:
            continue
        local = Path(url.removeprefix("file://")).expanduser()
        if "://" not in url.removeprefix("file://") and local.is_absolute() and _inside(local.resolve(), roots):
            continue
        raise AccessDenied(
            f"parameter {name}={url!r} is not a git remote this deployment allows "
            f"({', '.join(allowed) or 'none listed'}); its administrators can list it in {REMOTES_VARIABLE} "
            "in the deployment's job variables"
        )
