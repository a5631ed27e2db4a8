"""The flow, called here, against the session's real Prefect server (``prefect_api``) on the fixture pipeline.

Each test runs the real flow: real ``dvc repro`` per stage, real retries, real artifacts and logs
read back from the Prefect API. Stage subsets (``stages=["validate"]`` and its upstream) keep the
tests fast whatever training stages dvc.yaml grows.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from flows.pipeline import ARTIFACT_SUMMARY, pipeline
from flows.stages import DeterministicFailure
from tests.cifar_archive import make_archive, make_batch
from tests.conftest import dvc, init_git_dvc, run, set_params
from tests.flows.conftest import ArchiveServer, artifacts, logs, stage_runs, task_runs

pytestmark = [pytest.mark.server, pytest.mark.e2e, pytest.mark.usefixtures("prefect_api")]
DATA_STAGES = ["download", "preprocess", "validate"]


def run_flow(repo: Path, **params):
    """Run the flow; return (final state, flow run id, wall seconds)."""
    params.setdefault("retry_delay_seconds", 0.5)
    started = time.perf_counter()
    state = pipeline(repo_dir=str(repo), return_state=True, **params)
    return state, state.state_details.flow_run_id, time.perf_counter() - started


def outcomes(state) -> dict[str, str]:
    return {r["stage"]: r["outcome"] for r in state.result()["stages"]}


def test_stages_run_in_order_with_logs_and_artifacts_then_skip(dvc_repo: Path) -> None:
    state, run_id, first = run_flow(dvc_repo, stages=["validate"])
    assert state.is_completed(), state.message
    assert outcomes(state) == {"download": "ran", "preprocess": "ran", "validate": "ran"}
    ran = stage_runs(run_id)
    assert list(ran) == DATA_STAGES  # one task per stage, started in dependency order
    assert all(r.state.is_completed() and r.run_count == 1 for r in ran.values())
    names = [r.name for r in task_runs(run_id)]
    assert names[0].startswith("host-") and names[1].startswith("plan-")  # the host report comes first
    text = logs(run_id)
    assert "Running stage 'validate'" in text and "all 11 expectations passed" in text  # streamed stage output
    assert "accelerators: " in text
    summary = artifacts(run_id)[ARTIFACT_SUMMARY].data
    assert "| download | ran |" in summary and "| validate | ran |" in summary
    assert "metrics/evaluate.json` does not exist" in summary
    assert "metrics/validation.json" in summary  # dvc metrics diff HEAD: HEAD had no metrics yet
    assert json.loads((dvc_repo / "reports/validation.json").read_text())["success"] is True

    state, run_id, second = run_flow(dvc_repo, stages=["validate"])
    assert state.is_completed(), state.message
    assert outcomes(state) == dict.fromkeys(DATA_STAGES, "skipped")
    text = logs(run_id)
    assert "stage 'validate' skipped in" in text and "(dvc status: it and its upstream unchanged)" in text, text
    assert "didn't change, skipping" not in text  # one status query instead of a dvc repro per stage
    assert "up to date" in dvc("status", *DATA_STAGES, cwd=dvc_repo).stdout.lower()
    print(f"\nflow, fixture data stages: first run {first:.1f} s, nothing changed {second:.1f} s")


def constant_image_archive(path: Path) -> str:
    """The fixture archive, but ten of its test images are a single colour: validation must fail."""
    batch = make_batch(100, np.random.default_rng(7), "testing batch 1 of 1")
    batch[b"data"][:10] = 128
    return make_archive(path, replace={"test_batch": pickle.dumps(batch, protocol=2)})


def test_validation_failure_fails_at_once_without_retry(dvc_repo: Path, tmp_path: Path) -> None:
    archive = tmp_path / "bad" / "cifar-10-python.tar.gz"
    set_params(dvc_repo, data={"url": str(archive), "sha256": constant_image_archive(archive)})
    state, run_id, seconds = run_flow(dvc_repo, stage_retries=3)  # the whole pipeline, training included
    assert state.is_failed()
    assert "stage 'validate' failed (the stage exited with 2; not retried)" in state.message
    assert "constant_images" in state.message
    ran = stage_runs(run_id)
    assert list(ran) == DATA_STAGES  # nothing after validate started
    assert ran["validate"].run_count == 1 and ran["validate"].state.is_failed()
    assert "Retry" not in logs(run_id)


def test_a_download_retries_in_the_stage_and_its_giving_up_is_final(
    dvc_repo: Path, archive_server: ArchiveServer
) -> None:
    """Downloads are retried in one layer, the stage's own: a server that refuses three requests costs three
    of its tries and no Prefect retry; one that refuses all five makes the stage give up, exit 2, and the flow
    fail at once."""
    archive_server.fail_first = 3
    set_params(dvc_repo, data={"url": archive_server.url, "download_backoff": 0.1})
    state, run_id, _ = run_flow(dvc_repo, stages=["download"], stage_retries=2)
    assert state.is_completed(), state.message
    download = stage_runs(run_id)["download"]
    assert download.run_count == 1 and download.state.is_completed()
    assert archive_server.requests == 4 and "attempt 3/5 failed" in logs(run_id)
    assert outcomes(state) == {"download": "ran"}
    assert (dvc_repo / "data/raw/cifar-10-python.tar.gz").is_file()

    archive_server.requests, archive_server.fail_first = 0, 5
    set_params(dvc_repo, data={"download_attempts": 5, "sha256": "b" * 64})  # a new download, same server
    state, run_id, _ = run_flow(dvc_repo, stages=["download"], stage_retries=2)
    assert state.is_failed() and "giving up after 5 attempts" in state.message and "not retried" in state.message
    assert stage_runs(run_id)["download"].run_count == 1 and archive_server.requests == 5
    assert "Retry" not in logs(run_id)


def test_crashed_stage_is_retried(tmp_path: Path) -> None:
    """A stage process killed by a signal (OOM killer, a dying node) counts as transient."""
    repo = tmp_path / "tiny"
    repo.mkdir()
    init_git_dvc(repo)
    (repo / "crash_once.py").write_text(
        "import os, pathlib, signal\n"
        "mark = pathlib.Path('.attempted')\n"
        "if not mark.exists():\n"
        "    mark.touch()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "pathlib.Path('out.txt').write_text('ok')\n"
    )
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "stages": {
                    "flaky": {"cmd": "python crash_once.py", "deps": ["crash_once.py"], "outs": ["out.txt"]},
                    "after": {"cmd": "cp out.txt after.txt", "deps": ["out.txt"], "outs": ["after.txt"]},
                }
            },
            sort_keys=False,
        )
    )
    run(["git", "add", "-A"], cwd=repo)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qm", "tiny"], cwd=repo)
    state, run_id, _ = run_flow(repo, stage_retries=1)
    assert state.is_completed(), state.message
    ran = stage_runs(run_id)
    assert ran["flaky"].run_count == 2 and ran["after"].run_count == 1
    assert (repo / "after.txt").read_text() == "ok"


def test_require_gpu_fails_fast_before_any_stage(dvc_repo: Path, no_gpu: None) -> None:
    state, run_id, seconds = run_flow(dvc_repo, require_gpu=True)
    assert state.is_failed()
    assert "require_gpu is set but" in state.message and "has no usable GPU" in state.message
    assert stage_runs(run_id) == {}
    assert not (dvc_repo / "data").exists()
    print(f"\nrequire_gpu on a CPU host failed after {seconds:.1f} s")


def test_a_params_file_that_is_not_yaml_is_refused_before_any_stage(dvc_repo: Path) -> None:
    """DVC cannot draw the graph from a broken params.yaml either; the plan says why, once, not to be retried."""
    params = dvc_repo / "params.yaml"
    params.write_text(params.read_text().replace("seed: 42", "seed: [42", 1))
    state, run_id, _ = run_flow(dvc_repo, stages=["validate"])
    assert state.is_failed()
    refusal = state.result(raise_on_failure=False)
    assert isinstance(refusal, DeterministicFailure), refusal
    assert refusal.errors[0].startswith(f"error: {params}: not valid YAML: while parsing a flow sequence"), refusal
    assert stage_runs(run_id) == {}
    assert not (dvc_repo / "data").exists()


def test_set_params_runs_a_named_experiment_and_restores_params(dvc_repo: Path) -> None:
    before = (dvc_repo / "params.yaml").read_bytes()
    state, run_id, _ = run_flow(
        dvc_repo,
        stages=["validate"],
        experiment_name="small-subset",
        set_params=["data.limit_train=200", "data.limit_test=50"],
    )
    assert state.is_completed(), state.message
    assert "small-subset" in dvc("exp", "list", "--name-only", cwd=dvc_repo).stdout.split()
    diff = json.loads(dvc("params", "diff", "HEAD", "small-subset", "--json", cwd=dvc_repo).stdout)
    assert diff["params.yaml"]["data.limit_train"]["new"] == 200
    assert diff["params.yaml"]["data.limit_test"]["new"] == 50
    assert (dvc_repo / "params.yaml").read_bytes() == before  # the next run uses the committed params
    assert json.loads((dvc_repo / "reports/validation.json").read_text())["sizes"]["test"] == 50
    assert "small-subset" in artifacts(run_id)[ARTIFACT_SUMMARY].data

    again, _, seconds = run_flow(
        dvc_repo, stages=["validate"], experiment_name="small-subset", set_params=["data.limit_train=100"]
    )
    assert again.is_failed() and "already exists" in again.message
    bad, _, _ = run_flow(dvc_repo, stages=["validate"], set_params=["data.no_such_key=1"])
    assert bad.is_failed() and "not retried" in bad.message
    assert (dvc_repo / "params.yaml").read_bytes() == before

    # A value or a key the stages would refuse fails the run before any stage, and before DVC removes the
    # outputs of one it would rerun.
    outputs = {p: p.stat().st_mtime_ns for p in (dvc_repo / "data").rglob("*") if p.is_file()}
    assert any(p.parent.name == "prepared" for p in outputs)
    small, run_id, _ = run_flow(dvc_repo, stages=["validate"], set_params=["data.limit_train=5"])
    assert small.is_failed() and "params failed (not retried): error: params.yaml: 'data.limit_train'" in small.message
    assert stage_runs(run_id) == {}
    set_params(dvc_repo, data={"limit_trian": 100})
    typo, run_id, _ = run_flow(dvc_repo, stages=["validate"])
    assert typo.is_failed() and "'data.limit_trian' is not a known key (did you mean 'limit_train'?)" in typo.message
    assert stage_runs(run_id) == {}
    assert {p: p.stat().st_mtime_ns for p in (dvc_repo / "data").rglob("*") if p.is_file()} == outputs
    (dvc_repo / "params.yaml").write_bytes(before)


def test_share_cache_through_a_local_remote(dvc_repo: Path, tmp_path: Path) -> None:
    """Host A runs and pushes (with the run-cache); host B, a fresh clone, restores instead of running."""
    remote = tmp_path / "dvc-remote"
    other = tmp_path / "other-host"
    shutil.copytree(dvc_repo, other)
    for repo in (dvc_repo, other):
        dvc("remote", "add", "--local", "-d", "shared", str(remote), cwd=repo)

    state, _, _ = run_flow(dvc_repo, stages=["validate"], share_cache=True)
    assert state.is_completed(), state.message
    assert outcomes(state) == dict.fromkeys(DATA_STAGES, "ran")
    assert (remote / "runs").is_dir() and (remote / "files").is_dir()

    state, run_id, _ = run_flow(other, stages=["validate"], share_cache=True)
    assert state.is_completed(), state.message
    assert outcomes(state) == dict.fromkeys(DATA_STAGES, "restored")
    assert sorted(p.name for p in (other / "data/prepared").iterdir()) == [
        "facts.json",
        "test.npz",
        "train.npz",
        "val.npz",
    ]
    assert (other / "reports/validation.json").read_text() == (dvc_repo / "reports/validation.json").read_text()
    assert "is cached - skipping run" in logs(run_id)
