"""The team storage of docs/orchestration.md for real: its commands, as written there, against an S3 server
on 127.0.0.1 (SeaweedFS with authentication on, through dvc-s3): the trained pipeline pushed from one
checkout and pulled into a reviewer's clone, credentials from the environment only."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, TrainedPipeline, commit_all, dvc, run, subprocess_env
from tests.s3_server import S3Server, credentials_env

pytestmark = pytest.mark.e2e

DOC = REPO / "docs" / "orchestration.md"
MARKER = "<!-- tested: tests/test_team_storage.py -->"


def documented_blocks() -> list[str]:
    """The bash blocks of the doc that follow :data:`MARKER`, in order."""
    return re.findall(re.escape(MARKER) + r"\n```bash\n(.*?)```", DOC.read_text(), flags=re.S)


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{script}\nexited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_the_documented_s3_remote_shares_the_pipeline_with_a_reviewer(
    seeded_repo: Path, trained_pipeline: TrainedPipeline, s3: S3Server, tmp_path: Path
) -> None:
    setup, reviewer = documented_blocks()
    s3.make_bucket("team-bucket")
    # The trained pipeline's results in this checkout, as on a host that ran it: its dvc.lock, its outputs.
    shutil.copy2(trained_pipeline.repo / "dvc.lock", seeded_repo / "dvc.lock")
    dvc("checkout", "-q", cwd=seeded_repo)
    commit_all(seeded_repo, "the trained pipeline")
    env = {**subprocess_env(), **credentials_env(s3), "S3_ENDPOINT": s3.endpoint}
    env |= {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    pushed = bash(setup, seeded_repo, env)
    stored = s3.objects("team-bucket/cifar10-dvc")
    assert stored and all(key.startswith("team-bucket/cifar10-dvc/files/md5/") for key in stored), stored
    assert "files pushed" in pushed.stdout + pushed.stderr, pushed.stdout
    committed = run(["git", "show", "HEAD:.dvc/config"], cwd=seeded_repo).stdout
    assert "s3://team-bucket/cifar10-dvc" in committed and s3.endpoint in committed, committed
    assert "secret" not in committed and "access_key" not in committed, committed  # no credentials in git

    bare = tmp_path / "project.git"
    run(["git", "clone", "-q", "--bare", str(seeded_repo), str(bare)], cwd=tmp_path)
    bash(reviewer, tmp_path, {**env, "PROJECT_GIT_URL": str(bare)})
    clone = tmp_path / "cifar10"
    for output in ("models/alexnet.keras", "models/vgg16.keras", "data/prepared/train.npz"):
        assert (clone / output).read_bytes() == (seeded_repo / output).read_bytes(), output
