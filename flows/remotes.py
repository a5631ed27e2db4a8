"""A DVC remote that refuses this host's credentials, said in one line that names the remote.

DVC passes an object store's refusal on as botocore words it ("ERROR: unexpected error - Forbidden: An
error occurred (403) when calling the HeadObject operation: Forbidden"), without saying which remote it
tried or what to change. :func:`refusal` finds such a line in a ``dvc`` command's output and
:func:`describe` says which remote, at which endpoint, and where its credentials come from. Pure
functions: the caller reads ``dvc config`` (:func:`flows.stages.dvc_config`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

#: What the S3 client says when the store refuses the credentials, or when there are none.
_REFUSED = re.compile(
    r"\(403\)|Forbidden|AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch|Unable to locate credentials"
)


def refusal(lines: Sequence[str]) -> str | None:
    """DVC's ``ERROR`` line that says a remote refused the credentials (or found none), else None."""
    for line in lines:
        if line.startswith("ERROR") and _REFUSED.search(line):
            return line.removeprefix("ERROR: ").removeprefix("unexpected error - ").strip()
    return None


def describe(config: Mapping[str, str], refused: str, remote: str | None = None) -> str:
    """One line: which remote (``remote``, else the default of ``config``, ``dvc config --list``'s
    ``key -> value``) refused what, and where its credentials are set."""
    name = remote or config.get("core.remote", "")
    url = config.get(f"remote.{name}.url", "?")
    endpoint = config.get(f"remote.{name}.endpointurl")
    where = f"{url} at {endpoint}" if endpoint else url
    problem = "found no credentials" if "Unable to locate credentials" in refused else "refused the credentials"
    return (
        f"the DVC remote '{name}' ({where}) {problem} ({refused}): give this host the remote's access key and "
        "secret -- AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, or "
        f"`dvc remote modify --local {name} access_key_id ...` and `... secret_access_key ...` in this checkout"
    )
