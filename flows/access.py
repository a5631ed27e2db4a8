"""What a deployed flow run's parameters may point at: a folder (``repo_dir``, ``workspace``,
``workspace_root``, ``cache_dir``) only inside the deployment's working directory or a root listed in
``CIFAR10_ALLOWED_ROOTS``; a git URL (``git_url``) only if it is the checkout's ``origin``, a folder
under an allowed root, or listed in ``CIFAR10_ALLOWED_REMOTES`` -- because those parameters decide
which ``dvc.yaml``, which code, the worker runs (docs/security.md). Flows called in-process or from the
command line, and parameters left at their defaults, are their caller's own and are not checked.
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


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def check(
    folders: Mapping[str, str | os.PathLike[str] | None] | None = None,
    remotes: Mapping[str, str | None] | None = None,
    *,
    checkout: Path | None = None,
    deployed: bool | None = None,
) -> None:
    """Refuse, with :class:`AccessDenied`, a folder outside the allowed roots or a git URL not allowed.
    ``folders`` and ``remotes`` map parameter names to values; ``checkout`` is the deployment's working
    directory (default: the current one); ``deployed`` defaults to what Prefect's runtime says."""
    if deployed is None:
        from prefect.runtime import deployment

        deployed = deployment.id is not None
    if not deployed:
        return
    checkout = (checkout or Path.cwd()).resolve()
    listed = os.environ.get(ROOTS_VARIABLE, "").split(os.pathsep)
    roots = [checkout, *(Path(p).expanduser().resolve() for p in listed if p)]
    for name, value in (folders or {}).items():
        if value is not None and not _inside(Path(value).expanduser().resolve(), roots):
            raise AccessDenied(
                f"parameter {name}={os.fspath(value)!r} is outside the folders this deployment allows "
                f"({', '.join(map(str, roots))}); its administrators can add roots to {ROOTS_VARIABLE} "
                "in the deployment's job variables"
            )
    try:
        origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=checkout, capture_output=True, text=True)
        own = origin.stdout.split()
    except OSError:  # no git on this host: a checkout without git has no origin either
        own = []
    allowed = [*own, *os.environ.get(REMOTES_VARIABLE, "").split()]
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
