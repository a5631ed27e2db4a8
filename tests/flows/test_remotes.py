"""flows/remotes.py: a remote's refusal of the credentials, in one line naming the remote -- from DVC's own
words, and for real through ``run_dvc`` against an S3 server with a wrong secret and with none."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.remotes import describe, refusal
from flows.stages import DeterministicFailure, run_dvc
from tests.conftest import add_s3_remote, dvc
from tests.s3_server import S3Server

FORBIDDEN = (
    "ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject operation: Forbidden"
)


def test_a_refusal_is_found_in_dvc_output_and_nothing_else_is() -> None:
    assert refusal(["Collecting", FORBIDDEN, "Having any troubles?"]) == (
        "Forbidden: An error occurred (403) when calling the HeadObject operation: Forbidden"
    )
    assert refusal(["ERROR: unexpected error - Unable to locate credentials"]) == "Unable to locate credentials"
    assert refusal(["ERROR: failed to push data to the cloud - 3 files failed to upload"]) is None
    assert refusal(["stage says: Forbidden words"]) is None  # only DVC's ERROR lines count


def test_the_description_names_the_remote_its_endpoint_and_where_credentials_go() -> None:
    config = {
        "core.remote": "shared",
        "remote.shared.url": "s3://team-bucket/cifar10-dvc",
        "remote.shared.endpointurl": "https://s3.example.org",
    }
    line = describe(config, "Forbidden: An error occurred (403)")
    assert line.startswith(
        "the DVC remote 'shared' (s3://team-bucket/cifar10-dvc at https://s3.example.org) refused the credentials"
    ), line
    assert "AWS_ACCESS_KEY_ID" in line and "dvc remote modify --local shared" in line and "\n" not in line
    assert "found no credentials" in describe(config, "Unable to locate credentials")


@pytest.mark.parametrize("secret", ["wrong-secret", None])
def test_a_push_the_store_refuses_fails_at_once_in_one_line(
    dvc_repo: Path, s3: S3Server, secret: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    s3.make_bucket("refusing")
    (dvc_repo / "notes.txt").write_text("results\n")
    dvc("add", "-q", "notes.txt", cwd=dvc_repo)
    add_s3_remote(dvc_repo, s3, "s3://refusing/store")
    if secret:
        dvc("remote", "modify", "--local", "shared", "secret_access_key", secret, cwd=dvc_repo)
    else:  # no credentials anywhere
        dvc("remote", "modify", "--local", "--unset", "shared", "access_key_id", cwd=dvc_repo)
        dvc("remote", "modify", "--local", "--unset", "shared", "secret_access_key", cwd=dvc_repo)
    with pytest.raises(DeterministicFailure) as failed:
        run_dvc(["push"], dvc_repo, what="dvc push")
    message = str(failed.value)
    assert message.startswith(
        f"dvc push failed (not retried): the DVC remote 'shared' (s3://refusing/store at {s3.endpoint}) "
        + ("refused the credentials" if secret else "found no credentials")
    ), message
    assert "\n" not in message and "Traceback" not in message, message
    assert not s3.objects("refusing"), "nothing may reach the store"
