"""The nightly deployment for real: `prefect server start` on 127.0.0.1, a `gpu` process pool,
`prefect --no-prompt deploy --all`, a worker, a bare git repository as the project's remote, an S3 bucket
as the DVC remote (SeaweedFS on 127.0.0.1; the worker's credentials in its environment, a reviewer's in
`.dvc/config.local`), the project's alert automation sending through a webhook notification block to a
receiver on 127.0.0.1, and the fixture pipeline with tiny training."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
import yaml

from flows.nightly.flow import ARTIFACT, WORKSPACES
from tests.conftest import REPO, TrainedPipeline, dvc, make_dvc_repo, run, set_params, tiny_training
from tests.s3_server import S3Server, credentials_env
from tests.flows.conftest import (
    PrefectServer,
    add_flow_files,
    artifacts,
    deploy_all,
    logs,
    running_worker,
    stage_runs,
    worker_log,
)
from tests.flows.test_deployments import wait_for

pytestmark = [pytest.mark.server, pytest.mark.e2e]
DEPLOYMENT = "cifar10-nightly/nightly"
GIT_ID = ["-c", "user.email=t@example.invalid", "-c", "user.name=t"]


class Receiver:
    """A webhook endpoint on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's naming
                length = int(self.headers.get("Content-Length", 0))
                outer.posts.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def texts(self) -> list[str]:
        return [f"{p.get('subject')}\n{p.get('body')}" for p in self.posts]

    def notice(self, about: str, timeout: float = 60) -> str:
        """The one notice that names ``about`` (a flow run's name), once the automation has sent it."""
        found = wait_for(lambda: [t for t in self.texts() if about in t], timeout, f"a notice about {about}", 0.5)
        [text] = found
        return text


@dataclass
class Team:
    """The deploy checkout (a developer's clone too), its bare remote, the S3 store of the DVC remote, and
    the worker."""

    repo: Path
    bare: Path
    s3: S3Server
    server: PrefectServer
    receiver: Receiver
    deployment_id: UUID
    worker: subprocess.Popen | None = None

    @property
    def workspace(self) -> Path:
        return self.repo / WORKSPACES / "nightly"

    def push(self, message: str, **sections: dict) -> str:
        set_params(self.repo, **sections)
        run(["git", *GIT_ID, "commit", "-qam", message], cwd=self.repo)
        run(["git", "push", "-q", "origin", "HEAD:main"], cwd=self.repo)
        return run(["git", "rev-parse", "HEAD"], cwd=self.repo).stdout.strip()

    def start(self) -> UUID:
        with self.server.client() as c:
            return c.create_flow_run_from_deployment(self.deployment_id).id

    def flow_run(self, run_id: UUID) -> Any:
        with self.server.client() as c:
            return c.read_flow_run(run_id)

    def finished(self, run_id: UUID, timeout: float = 400) -> Any:
        flow_run = wait_for(
            lambda: (r := self.flow_run(run_id)).state and r.state.is_final() and r, timeout, f"run {run_id}", 1
        )
        return flow_run

    def runs(self) -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        with self.server.client() as c:
            ours = DeploymentFilter(id=DeploymentFilterId(any_=[self.deployment_id]))
            found = c.read_flow_runs(deployment_filter=ours)
        return [r for r in found if not (r.state and r.state.is_scheduled() and r.parameters.get("restart_of") is None)]

    def restart_of(self, run_id: UUID, timeout: float = 60) -> Any:
        def started():
            return next((r for r in self.runs() if str(run_id) in (r.parameters.get("restart_of") or "")), None)

        return wait_for(started, timeout, f"a restart of {run_id}", 0.5)

    def kill(self, run_id: UUID) -> float:
        """SIGKILL the flow run's process and everything under it (dvc, the stage): a crash."""
        assert self.worker is not None
        procs: list[psutil.Process] = []
        for child in psutil.Process(self.worker.pid).children(recursive=True):
            try:
                if child.environ().get("PREFECT__FLOW_RUN_ID") == str(run_id):
                    procs.append(child)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        roots = [p for p in procs if p.ppid() not in {q.pid for q in procs}]
        assert roots, f"no process runs {run_id}:\n{worker_log(self.repo)}"
        doomed = {p.pid: p for root in roots for p in [root, *root.children(recursive=True)]}
        for p in doomed.values():
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        killed = time.time()
        psutil.wait_procs(list(doomed.values()), timeout=10)
        return killed

    def experiments(self) -> list[str]:
        out = run(["git", "ls-remote", str(self.bare), "refs/exps/*"], cwd=self.repo).stdout
        return sorted(line.rsplit("/", 1)[-1] for line in out.splitlines())

    def summary(self, run_id: UUID) -> str:
        return artifacts(run_id, self.server.url)[ARTIFACT].data

    def explain(self, run_id: UUID) -> str:
        r = self.flow_run(run_id)
        tail = logs(run_id, self.server.url)[-5000:]
        return f"{r.name}: {r.state.type} {r.state.message}\n{tail}\n{worker_log(self.repo)}"


@pytest.fixture(scope="module")
def team(
    tmp_path_factory: pytest.TempPathFactory,
    fixture_archive: tuple[Path, str],
    prefect_server: PrefectServer,
    trained_pipeline: TrainedPipeline,
    s3: S3Server,
) -> Iterator[Team]:
    """One team for the module, as in real life: the tests below run in order on the same deployment,
    remotes and worker, each starting from what the one before left. Its DVC cache starts with the test
    run's trained pipeline, as a team's host has what it ran before."""
    tmp_path = tmp_path_factory.mktemp("nightly")
    repo = make_dvc_repo(tmp_path / "repo", fixture_archive)
    tiny_training(repo)
    trained_pipeline.seed(repo)
    shutil.copy2(REPO / ".gitignore", repo / ".gitignore")
    # The team's bucket, committed as docs/orchestration.md says (URL and endpoint; the secrets stay out).
    s3.make_bucket("nightly")
    dvc("remote", "add", "-d", "storage", "s3://nightly/dvc", cwd=repo)
    dvc("remote", "modify", "storage", "endpointurl", s3.endpoint, cwd=repo)
    run(["git", "add", "-A"], cwd=repo)
    run(["git", *GIT_ID, "commit", "-qm", "tiny training, DVC remote"], cwd=repo)
    add_flow_files(repo)
    bare = tmp_path / "remote.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], cwd=tmp_path)
    run(["git", "remote", "add", "origin", str(bare)], cwd=repo)
    run(["git", "push", "-q", "origin", "HEAD:main"], cwd=repo)

    deploy_all(repo, prefect_server)

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    receiver = Receiver()
    with temporary_settings({PREFECT_API_URL: prefect_server.url, PREFECT_API_AUTH_STRING: prefect_server.auth}):
        CustomWebhookNotificationBlock(
            name="cifar10-alerts", url=receiver.url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
        ).save("cifar10-alerts-test", overwrite=True)
    # The documented setup's alert automation, sending through that block.
    alerts = [sys.executable, "-m", "flows.alerts", "custom-webhook/cifar10-alerts-test"]
    created = subprocess.run(alerts, cwd=REPO, env=prefect_server.env(), capture_output=True, text=True, timeout=120)
    assert created.returncode == 0 and "'cifar10 failure alerts' created" in created.stdout, created.stderr
    with prefect_server.client() as c:
        deployment = c.read_deployment_by_name(DEPLOYMENT)
        # What a team sets in the UI for this host: no GPU here, one restart in a row.
        parameters = {
            **deployment.parameters,
            "require_gpu": False,
            "max_crash_restarts": 1,
            "retry_delay_seconds": 1,
            "promote_staging": True,
        }
        c.update_deployment(deployment.id, DeploymentUpdate(parameters=parameters))
    team = Team(repo, bare, s3, prefect_server, receiver, deployment.id)
    try:
        with running_worker(repo, prefect_server, **credentials_env(s3)) as team.worker:
            yield team
    finally:
        with prefect_server.client() as c:  # the server outlives this module; its other tests send no alerts
            for automation in c.read_automations_by_name("cifar10 failure alerts"):
                c.delete_automation(automation.id)
        receiver.httpd.shutdown()


def test_the_deployment_carries_its_schedule_and_its_crash_trigger(team: Team) -> None:
    with team.server.client() as c:
        nightly = c.read_deployment(team.deployment_id)
        automations = c.read_automations_by_name("cifar10-nightly restart after a crash")
    assert nightly.entrypoint == "flows/nightly/flow.py:nightly"
    [schedule] = nightly.schedules
    assert schedule.schedule.cron == "0 2 * * *" and schedule.schedule.timezone == "UTC"
    shipped = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [spec] = [d for d in shipped["deployments"] if d["name"] == "nightly"]
    assert spec["parameters"]["require_gpu"] is True and spec["parameters"]["branch"] == "main"
    [automation] = automations
    assert automation.trigger.expect == {"prefect.flow-run.Crashed"}
    [action] = automation.actions
    assert action.deployment_id == team.deployment_id
    assert action.parameters == {"restart_of": "{{ event.resource.id }}"}  # rendered by the server, not at deploy
    created = team.server.cli("automation", "create", "--from-file", "flows/automations/nightly-zombies.yaml", cwd=REPO)
    assert "cifar10-nightly zombie detection" in created.stdout


def test_runs_are_recorded_promoted_and_an_unchanged_rerun_records_nothing(team: Team, tmp_path: Path) -> None:
    first = team.start()
    done = team.finished(first)
    assert done.state.is_completed(), team.explain(first)
    assert "| train_alexnet | restored |" in team.summary(first)  # from the host's DVC cache
    [exp1] = team.experiments()
    assert exp1.startswith("nightly-")
    assert team.s3.objects("nightly/dvc"), "nothing reached the DVC remote"
    md = team.summary(first)
    assert f"Recorded as DVC experiment **{exp1}**" in md and "first recorded run" in md, md
    # Nothing in prod yet: the run beats it, and promote_staging registers and stages it, tags pushed.
    for model in ("alexnet", "vgg16"):
        assert f"| {model} | none assigned | - |" in md and "| **yes** | v0.1.0 (staging) |" in md, md
    tags = run(["git", "ls-remote", "--tags", str(team.bare)], cwd=team.repo).stdout
    assert "refs/tags/alexnet@v0.1.0" in tags and "refs/tags/alexnet#staging#1" in tags, tags
    # A person promotes the staged AlexNet to prod (from a clone of their own), as docs/orchestration.md says.
    person = tmp_path / "person"
    run(["git", "clone", "-q", str(team.bare), str(person)], cwd=tmp_path)
    run(["gto", "assign", "alexnet", "--version", "v0.1.0", "--stage", "prod", "--push"], cwd=person)
    shown = run(["gto", "show"], cwd=person).stdout
    print(f"\ngto show after the promotion:\n{shown}")
    assert re.search(r"alexnet\s*│\s*v0\.1\.0\s*│\s*v0\.1\.0\s*│\s*v0\.1\.0", shown), shown
    fetched = tmp_path / "prod-alexnet.keras"
    credentials = [f"access_key_id={team.s3.access_key}", f"secret_access_key={team.s3.secret_key}"]
    dvc(
        "artifacts",
        "get",
        str(team.bare),
        "alexnet",
        "--stage",
        "prod",
        "-o",
        str(fetched),
        "--remote-config",
        *credentials,
        cwd=tmp_path,
    )
    assert fetched.stat().st_size > 0

    again = team.start()  # the same commit, nothing to run
    assert team.finished(again).state.is_completed(), team.explain(again)
    md = team.summary(again)
    assert "**Nothing changed** since the last recorded run" in md and f"**{exp1}**" in md, md
    assert "| ran |" not in md, md
    assert team.experiments() == [exp1]


def test_a_killed_run_restarts_by_itself_resumes_is_compared_and_stops_after_n_crashes(
    team: Team, tmp_path: Path
) -> None:
    [exp1] = team.experiments()
    changed = team.push(
        "alexnet: lower peak learning rate, longer training",
        alexnet={"learning_rate": 0.01, "epochs": 12, "warmup_epochs": 1},  # 12 epochs: time to kill it
    )
    first = team.start()
    state = team.workspace / "checkpoints" / "alexnet" / "state.json"

    def trained_an_epoch() -> bool:
        try:
            return json.loads(state.read_text()).get("epochs_done", 0) >= 1
        except (OSError, ValueError):
            return False

    wait_for(trained_an_epoch, 400, "alexnet's first checkpoint", 0.1)
    killed = team.kill(first)
    restart = team.restart_of(first)
    started = wait_for(lambda: team.flow_run(restart.id).start_time, 60, "the restart to start", 0.2)
    created, running = restart.created.timestamp() - killed, started.timestamp() - killed
    print(f"\nkill -> restart created after {created:.1f} s, running after {running:.1f} s")
    assert team.flow_run(first).state.is_crashed()
    done = team.finished(restart.id)
    assert done.state.is_completed(), team.explain(restart.id)
    meta = json.loads((team.workspace / "models/alexnet.meta.json").read_text())
    assert meta["resumed_from_epochs"] and meta["resumed_from_epochs"][0] >= 1, meta
    [exp2] = set(team.experiments()) - {exp1}
    note = team.receiver.notice(team.flow_run(first).name)  # the crash, from the alert automation
    assert "Crashed" in note and str(first) in note, note
    restarted = logs(restart.id, team.server.url)
    assert "crashed in stage train_alexnet" in restarted and "restart 1 of at most 1" in restarted, restarted[-3000:]

    # The restart's record, against the last recorded run and against prod as the person left it.
    md = team.summary(restart.id)
    assert f"Recorded as DVC experiment **{exp2}**" in md and f"**{exp1}**" in md, md
    assert changed[:7] in md and "alexnet: lower peak learning rate" in md and "stashed" not in md, md
    assert "| alexnet | v0.1.0 |" in md and "| vgg16 | none assigned |" in md, md
    params_section = md.split("## Params changed")[1].split("##")[0]
    assert "alexnet.learning_rate" in params_section and "0.02" in params_section and "0.01" in params_section, md
    assert "| alexnet |" in md and " pp |" in md, md
    assert "metrics/evaluate.json" in md.split("## Metrics changed")[1], md
    outcomes = {name: r.state.is_completed() for name, r in stage_runs(restart.id, team.server.url).items()}
    assert all(outcomes.values()), outcomes
    assert "| train_alexnet | ran |" in md and "| preprocess | ran |" not in md, md

    # A reviewer's clone, credentials in its own .dvc/config.local: pull the recorded experiments (their
    # models come from the bucket) and compare them.
    reviewer = tmp_path / "reviewer"
    run(["git", "clone", "-q", str(team.bare), str(reviewer)], cwd=tmp_path)
    dvc("remote", "modify", "--local", "storage", "access_key_id", team.s3.access_key, cwd=reviewer)
    dvc("remote", "modify", "--local", "storage", "secret_access_key", team.s3.secret_key, cwd=reviewer)
    dvc("exp", "pull", "origin", exp1, exp2, cwd=reviewer)
    shown = dvc("exp", "show", "-A", "--csv", "--drop", "data.*|validate.*|vgg16.*", cwd=reviewer).stdout
    assert exp1 in shown and exp2 in shown, shown
    diff = dvc("metrics", "diff", exp1, exp2, "--md", cwd=reviewer).stdout
    # The commit's change, and the evaluation of both runs (the tiny models' test accuracy may well tie).
    lr_row = next((line for line in diff.splitlines() if "| learning_rate " in line), "")
    assert "0.02" in lr_row and "0.01" in lr_row, diff
    assert "metrics/evaluate.json" in diff and "alexnet." in diff, diff
    print(f"\nreviewer's dvc exp show -A --csv (narrowed):\n{shown}\ndvc metrics diff {exp1} {exp2}:\n{diff}")
    dvc("exp", "apply", exp2, cwd=reviewer)  # the restarted run's model, from the reviewer's cache alone
    assert (reviewer / "models/alexnet.keras").stat().st_size > 0

    # Crash twice in a row: one restart, then the next refuses.
    second = team.start()
    wait_for(lambda: (s := team.flow_run(second).state) and s.is_running(), 120, "the run to start", 0.1)
    team.kill(second)
    again = team.restart_of(second)
    wait_for(lambda: (s := team.flow_run(again.id).state) and s.is_running(), 120, "the restart to start", 0.1)
    team.kill(again.id)
    last = team.restart_of(again.id)
    refused = team.finished(last.id, timeout=120)
    assert refused.state.is_failed() and "2 crashes in a row" in (refused.state.message or ""), team.explain(last.id)
    # Failed is no crash: the automation (Crashed only, as the deployment test shows) starts nothing after it.
    assert not [r for r in team.runs() if str(last.id) in (r.parameters.get("restart_of") or "")]
    assert "2 crashes in a row" in team.receiver.notice(refused.name)


def test_a_bad_param_is_refused_before_any_stage_and_the_alert_carries_its_error_line(team: Team) -> None:
    team.push("a bad param", alexnet={"optimizer": "adamm"})
    run_id = team.start()
    failed = team.finished(run_id)
    assert failed.state.is_failed(), team.explain(run_id)
    assert stage_runs(run_id, team.server.url) == {}  # refused before any stage: DVC removed no output
    assert (team.workspace / "models/alexnet.keras").is_file()
    note = team.receiver.notice(failed.name)  # from the alert automation
    assert "cifar10-nightly" in note and "Failed" in note and str(run_id) in note, note
    assert "params failed (not retried): error: params.yaml: 'alexnet.optimizer'" in note, note
