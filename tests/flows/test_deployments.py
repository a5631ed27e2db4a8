"""prefect.yaml for real: `prefect server start` on 127.0.0.1, a `gpu` process work pool,
`prefect --no-prompt deploy --all`, and a `prefect worker start --pool gpu` process running the runs."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from flows.pipeline import ARTIFACT_REPORT, ARTIFACT_SUMMARY
from tests.conftest import REPO, TrainedPipeline, dvc, run, tiny_training
from tests.flows.conftest import PrefectServer, artifacts, logs, stage_runs, worker_log

pytestmark = [pytest.mark.server, pytest.mark.e2e]
FLOW = "cifar10-pipeline"


def wait_for(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def test_the_server_refuses_a_client_without_the_auth_string(prefect_server: PrefectServer) -> None:
    """Basic authentication is on: a request without the team's string is refused (401), with it served."""
    import httpx
    from prefect.client.orchestration import SyncPrefectClient

    request = urllib.request.Request(
        f"{prefect_server.url}/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=30)
    assert caught.value.code == 401
    with SyncPrefectClient(api=prefect_server.url) as anonymous, pytest.raises(httpx.HTTPStatusError, match="401"):
        anonymous.read_deployments()
    with prefect_server.client() as team:
        team.read_deployments()


def refuses_a_workspace_outside_the_allowed_roots(
    deployed: Path, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "dvc.yaml").write_text("stages:\n  own:\n    cmd: echo code the deployment never meant to run\n")
    with prefect_server.client() as c:
        deployment = c.read_deployment_by_name(f"{FLOW}/on-demand")
        flow_run = c.create_flow_run_from_deployment(deployment.id, parameters={"repo_dir": str(elsewhere)})

    def finished():
        with prefect_server.client() as c:
            found = c.read_flow_run(flow_run.id)
        return found if found.state and found.state.is_final() else None

    done = wait_for(finished, 300, "the refused run to end", interval=2)
    print(done.state.message)
    assert done.state.is_failed(), done.state
    expected = f"parameter repo_dir={str(elsewhere)!r} is outside the folders this deployment allows"
    assert expected in done.state.message, f"{done.state.message}\n{worker_log(deployed)}"
    assert not (elsewhere / "dvc.lock").exists()


def registers_a_nightly_schedule_and_an_on_demand_deployment(deployed: Path, prefect_server: PrefectServer) -> None:
    with prefect_server.client() as c:
        nightly = c.read_deployment_by_name("cifar10-nightly/nightly")
        on_demand = c.read_deployment_by_name(f"{FLOW}/on-demand")
    assert nightly.work_pool_name == on_demand.work_pool_name == "gpu"
    assert (
        on_demand.entrypoint == "flows/pipeline.py:pipeline" and nightly.entrypoint == "flows/nightly/flow.py:nightly"
    )
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    assert not schedule.active  # paused in the tests' copy of prefect.yaml (add_flow_files); active as shipped
    [shipped] = [
        d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"] if d["name"] == "nightly"
    ]
    assert shipped["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC", "active": True}]
    assert nightly.parameters == {
        "branch": "main",
        "require_gpu": True,
        "max_crash_restarts": 2,
        "promote_staging": False,
    }
    assert on_demand.schedules == [] and on_demand.parameters == {}
    again = prefect_server.cli("deploy", "--all", cwd=deployed)  # as docs/sweeps.md has a team do
    assert "Warning" not in again.stdout + again.stderr, again.stdout + again.stderr
    for deployment in (nightly, on_demand):  # the pull step puts the run in this checkout
        [step] = deployment.pull_steps
        directory = step["prefect.deployments.steps.set_working_directory"]["directory"]
        assert Path(directory).resolve() == deployed.resolve()


def test_deployments_refuse_foreign_folders_and_serialise_runs_with_artifacts(
    deployed: Path, worker: object, prefect_server: PrefectServer, tmp_path: Path, trained_pipeline: TrainedPipeline
) -> None:
    """One deployed checkout and worker for all of it: the deployments prefect.yaml registers, a run
    refused for a folder outside the allowed roots, then two on-demand runs of the whole pipeline
    (tiny training, in the DVC cache already) at once: the workspace lock makes the second wait; it then
    finds every stage done. Both complete, with their artifacts, and the workspace is consistent."""
    registers_a_nightly_schedule_and_an_on_demand_deployment(deployed, prefect_server)
    refuses_a_workspace_outside_the_allowed_roots(deployed, prefect_server, tmp_path)
    tiny_training(deployed)
    run(["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t", "commit", "-qam", "tiny"], cwd=deployed)
    trained_pipeline.seed(deployed)
    with prefect_server.client() as c:
        deployment = c.read_deployment_by_name(f"{FLOW}/on-demand")
        ids = [c.create_flow_run_from_deployment(deployment.id).id for _ in range(2)]

    def finished():
        with prefect_server.client() as c:
            runs = [c.read_flow_run(i) for i in ids]
        return runs if all(r.state and r.state.is_final() for r in runs) else None

    runs = wait_for(finished, 400, "both runs to finish", interval=2)
    for r in runs:
        assert r.state.is_completed(), (
            f"{r.name}: {r.state.message}\n{logs(r.id, prefect_server.url)[-4000:]}\nworker:\n{worker_log(deployed)}"
        )

    summaries = {i: artifacts(i, prefect_server.url) for i in ids}
    first, second = sorted(ids, key=lambda i: "| download | restored |" not in summaries[i][ARTIFACT_SUMMARY].data)
    stages = list(yaml.safe_load((deployed / "dvc.yaml").read_text())["stages"])
    first_md, second_md = summaries[first][ARTIFACT_SUMMARY].data, summaries[second][ARTIFACT_SUMMARY].data
    assert all(f"| {s} | restored |" in first_md for s in stages), first_md
    assert all(f"| {s} | skipped |" in second_md for s in stages), second_md

    # The first run's stages all ended before the second run's began: the runs took turns.
    a, b = stage_runs(first, prefect_server.url), stage_runs(second, prefect_server.url)
    assert list(a) == list(b) == stages
    assert max(t.end_time for t in a.values()) <= min(t.start_time for t in b.values())
    assert re.search(r"workspace lock \S+ acquired after [\d.]+ s", logs(second, prefect_server.url))

    # Artifacts: both models' test metrics, the metrics diff, the report link.
    assert "| metric | alexnet | vgg16 |" in first_md and "| test_accuracy |" in first_md
    assert "## `dvc metrics diff HEAD`" in first_md and "metrics/evaluate.json" in first_md
    report = summaries[first][ARTIFACT_REPORT]
    assert f"({(deployed / 'reports/report.html').resolve().as_uri()})" in report.data  # a link artifact
    assert (deployed / "reports/report.html").is_file()

    lock = yaml.safe_load((deployed / "dvc.lock").read_text())
    assert list(lock["stages"]) == stages
    status = dvc("status", cwd=deployed).stdout.lower()
    assert "up to date" in status, status
