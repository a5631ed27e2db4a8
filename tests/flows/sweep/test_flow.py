"""A tiny sweep for real: `prefect server start`, the `gpu` pool, `prefect --no-prompt deploy --all`,
two GPU-style process workers (`--work-queue default --limit 1`) and one for the coordinator
(`--work-queue sweeps`), an S3 bucket (SeaweedFS on 127.0.0.1) as the DVC remote between the experiments'
workspaces, committed as a team commits it, the credentials in the workers' environment.

A point x 2 seeds on the fixture data with tiny widths (seed 42 is the test run's trained pipeline, which
the bucket holds: restored from its run-cache; seed 1 trains), plus a point with an invalid param value:
every finished experiment is in `dvc exp show`, the table's per-point means and standard deviations
match the ones computed here from `dvc exp show --json`, the broken point is reported while the
others complete, and a second run of the same sweep starts nothing.
"""

from __future__ import annotations

import csv
import json
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY, TrainedPipeline, commit_all, dvc, run, tiny_training
from tests.s3_server import S3Server, credentials_env
from tests.flows.conftest import PREFECT, WITH_SIGINT, PrefectServer, artifacts, logs, stop

pytestmark = [pytest.mark.server, pytest.mark.e2e]

SWEEP = """\
name: tiny
description: AlexNet over two seeds on the fixture data, and a point DVC runs but the stage refuses.
grid:
  alexnet.variant: [paper]
points:
  - name: broken
    params: {alexnet.variant: no-such-variant}
seeds: [42, 1]
seed_params: [alexnet.seed]
compare: [alexnet]
"""
SEEDS = (42, 1)  # 42: the tiny pipeline's own seed, so that point is in the run-cache already
GOOD = [f"tiny-variant-paper-s{s}" for s in SEEDS]
BROKEN = [f"tiny-broken-s{s}" for s in SEEDS]


def start_worker(server: PrefectServer, s3: S3Server, repo: Path, name: str, *args: str) -> subprocess.Popen:
    log = open(repo.parent / f"{name}.log", "w")
    return subprocess.Popen(
        [*WITH_SIGINT, PREFECT, "worker", "start", "--pool", "gpu", "--name", name, *args],
        cwd=repo,
        env=server.env(PREFECT_WORKER_QUERY_SECONDS="1", **credentials_env(s3)),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def sweep_repo(deployed: Path, trained_pipeline: TrainedPipeline, s3: S3Server) -> Path:
    """The deployed fixture pipeline with tiny training, the tiny sweep file and the team's S3 remote, whose
    bucket holds the test run's trained pipeline (a remote's layout is the cache's): the stages the sweep's
    experiments share come from its run-cache."""
    tiny_training(deployed)
    (deployed / "sweeps").mkdir()
    (deployed / "sweeps/tiny.yaml").write_text(SWEEP)
    s3.make_bucket("sweep")
    s3.upload(trained_pipeline.cache, "sweep/dvc")
    dvc("remote", "add", "-d", "shared", "s3://sweep/dvc", cwd=deployed)
    dvc("remote", "modify", "shared", "endpointurl", s3.endpoint, cwd=deployed)
    commit_all(deployed, "tiny sweep, the team's DVC remote")
    return deployed


@pytest.fixture
def workers(sweep_repo: Path, prefect_server: PrefectServer, s3: S3Server) -> Iterator[list[str]]:
    """Two experiment workers (one run at a time each, as on a GPU each) and a coordinator worker."""
    procs = {
        name: start_worker(prefect_server, s3, sweep_repo, name, "--work-queue", "default", "--limit", "1")
        for name in ("gpu-worker-1", "gpu-worker-2")
    }
    procs["coordinator"] = start_worker(prefect_server, s3, sweep_repo, "coordinator", "--work-queue", "sweeps")
    try:
        yield list(procs)
    finally:  # SIGINT to all at once, then wait for each (one grace period, not three)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 30
        for proc in procs.values():
            stop(proc, signal.SIGINT, max(deadline - time.monotonic(), 0.1))


def run_sweep_deployment(server: PrefectServer, repo: Path, timeout: float = 1200, **parameters):
    """Trigger cifar10-sweep/sweep; wait for it; return (flow run, wall seconds)."""
    with server.client() as c:
        deployment = c.read_deployment_by_name("cifar10-sweep/sweep")
        flow_run = c.create_flow_run_from_deployment(
            deployment.id,
            parameters={
                "sweep": "sweeps/tiny.yaml",
                "host_cache": False,
                "poll_seconds": 1,
                "retry_delay_seconds": 1,
                **parameters,
            },
        )
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        with server.client() as c:
            flow_run = c.read_flow_run(flow_run.id)
        if flow_run.state and flow_run.state.is_final():
            return flow_run, time.monotonic() - started
        time.sleep(2)
    logs_tail = "\n".join((repo.parent / f"{n}.log").read_text()[-3000:] for n in ("coordinator", "gpu-worker-1"))
    raise AssertionError(
        f"the sweep did not finish in {timeout} s:\n{logs(flow_run.id, server.url)[-6000:]}\n{logs_tail}"
    )


def point_runs(server: PrefectServer) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with server.client() as c:
        deployment = c.read_deployment_by_name("cifar10-sweep-point/point")
        return c.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def exp_show(repo: Path) -> dict[str, dict]:
    """``{name: {"params": params.yaml data, "metrics": {file: data}}}`` of HEAD's experiments, read
    here from `dvc exp show --json` independently of flows/sweep/table.py."""
    head = run(["git", "rev-parse", "HEAD"], cwd=repo).stdout.strip()
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    [baseline] = [b for b in shown if b["rev"] == head]
    found = {}
    for exp in baseline.get("experiments") or []:
        [rev] = exp["revs"]
        found[rev["name"]] = {
            "params": rev["data"]["params"]["params.yaml"]["data"],
            "metrics": {f: d.get("data") for f, d in rev["data"]["metrics"].items()},
        }
    return found


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_tiny_sweep_over_two_workers_shares_stages_and_compares(
    sweep_repo: Path, prefect_server: PrefectServer, workers: list[str], s3: S3Server
) -> None:
    repo = sweep_repo
    params_before = (repo / "params.yaml").read_bytes()
    stored_before = set(s3.objects("sweep/dvc"))
    sweep_run, first_wall = run_sweep_deployment(prefect_server, repo)
    text = logs(sweep_run.id, prefect_server.url)

    # The broken point is reported; the others completed.
    assert sweep_run.state.is_failed(), f"{sweep_run.state}\n{text[-5000:]}"
    message = sweep_run.state.message
    assert "4 experiments, 2 ran now, 0 finished before, 2 failed" in message, message
    for name in BROKEN:
        assert name in message
    assert "'alexnet.variant' must be one of seed, paper; got 'no-such-variant'" in message

    # Every finished experiment is a DVC experiment of HEAD in the repository the sweep started from.
    shown = exp_show(repo)
    assert sorted(shown) == sorted(GOOD), f"{sorted(shown)}\n{text[-5000:]}"
    for name in GOOD:
        variant, seed = re.match(r"tiny-variant-(\w+)-s(\d+)", name).groups()
        assert shown[name]["params"]["alexnet"]["variant"] == variant
        assert shown[name]["params"]["alexnet"]["seed"] == int(seed)
        assert shown[name]["params"]["alexnet"]["width"] == 0.0625  # the commit's tiny params underneath
        assert shown[name]["params"]["evaluate"]["latency_repeats"] == TINY["evaluate"]["latency_repeats"]
    assert (repo / "params.yaml").read_bytes() == params_before  # the main workspace was not touched
    assert {line[3:] for line in run(["git", "status", "--porcelain"], cwd=repo).stdout.splitlines()} <= {"reports/"}

    # The table: per-point mean and sample std over the seeds, computed here from dvc exp show.
    out = repo / "reports/sweeps"
    groups = {g["point"]: g for g in read_csv(out / "tiny-groups.csv")}
    md = (out / "tiny.md").read_text()
    members = [shown[name]["metrics"]["metrics/evaluate.json"]["alexnet"] for name in GOOD]
    group = groups["variant-paper"]
    assert group["n_done"] == "2" and group["n"] == "2"
    for metric in ("test_accuracy", "test_loss"):
        values = [m[metric] for m in members]
        assert float(group[f"alexnet.{metric}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
        assert float(group[f"alexnet.{metric}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    acc = [m["test_accuracy"] for m in members]
    assert (
        f"| variant-paper | paper | 2/2 | {100 * statistics.mean(acc):.2f} % | {100 * statistics.stdev(acc):.2f} % |"
    ) in md
    assert groups["broken"]["n_done"] == "0" and groups["broken"]["alexnet.test_accuracy_mean"] == ""
    rows = {r["experiment"]: r for r in read_csv(out / "tiny.csv")}
    assert list(rows) == [*GOOD, *BROKEN]
    for name in GOOD:
        evaluated = shown[name]["metrics"]["metrics/evaluate.json"]["alexnet"]
        assert (
            rows[name]["status"] == "done" and float(rows[name]["alexnet.test_accuracy"]) == evaluated["test_accuracy"]
        )
        assert float(rows[name]["alexnet.train_seconds"]) == evaluated["train_seconds"]
        assert float(rows[name]["wall_seconds"]) > 0
    for name in BROKEN:
        assert rows[name]["status"] == "failed" and "no-such-variant" in rows[name]["message"]
    artifact = artifacts(sweep_run.id, prefect_server.url)["sweep-tiny"]
    assert artifact.type == "markdown" and artifact.data == md

    # Spread over both workers, side by side; shared stages once, then restored through the remote.
    runs = {r.name: r for r in point_runs(prefect_server)}
    assert sorted(runs) == sorted([*GOOD, *BROKEN, "tiny-shared-stages"])
    # A failure another attempt cannot mend was not retried inside the experiment.
    assert {runs[n].state.name for n in BROKEN} == {"Failed"}
    assert all("not retried" in runs[n].state.message for n in BROKEN), [runs[n].state.message for n in BROKEN]
    assert {runs[n].state.name for n in GOOD} == {"Completed"}
    by_worker: dict[str, list[str]] = {}
    for name, r in runs.items():
        submitted = re.search(r"Worker '([^']+)' submitting flow run", logs(r.id, prefect_server.url))
        assert submitted, name
        by_worker.setdefault(submitted.group(1), []).append(name)
    assert set(by_worker) == {"gpu-worker-1", "gpu-worker-2"}, by_worker
    experiments = [runs[n] for n in GOOD + BROKEN]
    assert any(
        a.start_time < b.end_time and b.start_time < a.end_time
        for i, a in enumerate(experiments)
        for b in experiments[i + 1 :]
    ), "no two experiments overlapped"
    shared = runs["tiny-shared-stages"]
    assert shared.end_time <= min(r.start_time for r in experiments)
    assert "Stage 'train_vgg16' is cached - skipping run" in logs(shared.id, prefect_server.url)
    assert "Stage 'train_alexnet' is cached - skipping run" in logs(runs[GOOD[0]].id, prefect_server.url)
    point_log = logs(runs[GOOD[1]].id, prefect_server.url)
    for stage in ("download", "preprocess", "train_vgg16"):
        assert f"Stage '{stage}' is cached - skipping run" in point_log, point_log[-4000:]
    assert "Running stage 'train_alexnet'" in point_log
    # Seed 1's training reached the bucket with its run-cache entry, for the next worker that needs it.
    pushed = set(s3.objects("sweep/dvc")) - stored_before
    assert any("/runs/" in key for key in pushed), sorted(pushed)
    assert not any((repo / ".dvc/tmp/sweeps/tiny").glob("tiny-variant-*"))  # succeeded: workspace removed
    assert sorted(p.name for p in (repo / ".dvc/tmp/sweeps/tiny").glob("tiny-broken-*")) == sorted(BROKEN)  # kept

    print(f"\ntiny sweep (4 experiments + 2 failing + shared stages) over 2 workers: {first_wall:.0f} s")


def test_local_sweep_runs_here_skips_on_rerun_and_refuses_a_bad_key(dvc_repo: Path, prefect_api: PrefectServer) -> None:
    """``executor="local"`` (``python -m flows.sweep --local``): the experiments run one after
    another in this process, still each in its own workspace; a rerun starts nothing; a sweep file with
    an override key DVC would refuse is refused whole, in one line, before anything runs."""
    from flows.sweep.flow import run_sweep

    (dvc_repo / "sweeps").mkdir()
    (dvc_repo / "sweeps/small.yaml").write_text(
        "name: small\nstages: [validate]\npoints:\n  - {name: subset, params: {data.limit_train: 200}}\n"
    )
    (dvc_repo / "sweeps/typo.yaml").write_text(
        "name: typo\nstages: [validate]\ngrid:\n  data.no_such_key: [1, 2]\n  data.limit_train: [100, 200]\n"
    )
    commit_all(dvc_repo, "small sweeps")
    state = run_sweep(sweep="sweeps/small.yaml", repo_dir=str(dvc_repo), executor="local", return_state=True)
    assert state.is_completed() and "1 experiments, 1 ran now, 0 finished before, 0 failed" in state.message, state
    shown = exp_show(dvc_repo)
    assert list(shown) == ["small-subset"] and shown["small-subset"]["params"]["data"]["limit_train"] == 200
    assert shown["small-subset"]["metrics"]["metrics/validation.json"]["sizes"]["train"] == 180
    assert not (dvc_repo / "data").exists()  # it ran in its workspace, not here
    rows = {r["experiment"]: r for r in read_csv(dvc_repo / "reports/sweeps/small.csv")}
    assert rows["small-subset"]["status"] == "done"

    def cli(sweep: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "flows.sweep", sweep, "--local", "--repo-dir", str(dvc_repo)],
            cwd=REPO,
            env=prefect_api.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    again = cli("sweeps/small.yaml")
    assert again.returncode == 0 and "1 experiments, 0 ran now, 1 finished before, 0 failed" in again.stderr, again
    assert "| small-subset | done earlier |" in again.stdout, again.stdout

    refused = cli("sweeps/typo.yaml")
    last = refused.stderr.strip().splitlines()[-2:]  # then Prefect's "Stopping temporary server", if any
    error = next(line for line in last if line.startswith("error: "))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert error.startswith("error: sweeps/typo.yaml: could not override 'data.no_such_key'"), error
    assert refused.stdout == "" and list(exp_show(dvc_repo)) == ["small-subset"]
