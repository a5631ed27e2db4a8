"""Sweeps (docs/sweeps.md): ``cifar10-sweep`` expands a sweep file, settles what exists or failed for
good, runs the stages all experiments share once, then one task per experiment that starts a
``cifar10-sweep-point/point`` flow run (``run_deployment``: an idle worker of the pool takes it) and
waits for it, and publishes the comparison. A point runs ``dvc exp run -n <experiment> -S ...`` in a
clone of its own at the sweep's baseline, restoring from the run-cache what others ran, and pushes it::

    python -m flows.sweep sweeps/learning-rate.yaml --local        # one experiment after another, here
    python -m flows.sweep sweeps/alexnet-variants.yaml             # on the gpu pool's workers
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.client.orchestration import get_client
from prefect.states import Completed, Failed

from flows import access
from flows.cli import run_flow
from flows.pipeline import QUIET, exp_run, report_host, retry_options, share_results
from flows.stages import DeterministicFailure, StageFailure, dvc_out, run_dvc, shared_stages
from flows.sweep import spec as sweep_spec
from flows.sweep import table as sweep_table
from flows.sweep.table import DONE, DONE_EARLIER, FAILED, Outcome
from tools.overrides import check_overrides
from flows.workspace import cache_dir_of, default_remote, git, has_experiment, params_at, prepare, read_at

POINT_DEPLOYMENT = "cifar10-sweep-point/point"
POINT_FLOW = "cifar10-sweep-point"
RESULTS_DIR = Path("reports/sweeps")
#: Where the experiments' workspaces live, under the checkout the worker runs in.
WORKSPACES = Path(".dvc/tmp/sweeps")


class SweepFailed(RuntimeError):
    """Some experiments of a sweep failed (the others finished); ``summary`` holds the table."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


@task(name="workspace", **QUIET, retries=1, retry_delay_seconds=5)
def prepare_workspace(ws: str, git_url: str, rev: str, cache_dir: str | None, dvc_remote: str | None) -> str:
    """A clone of the sweep's repository at its baseline commit, with the shared cache and remote."""
    how = prepare(Path(ws), git_url, rev, cache_dir=cache_dir, dvc_remote=dvc_remote)
    get_run_logger().info("workspace %s (%s from %s at %s); DVC cache %s", ws, how, git_url, rev[:12], cache_dir)
    return how


@flow(name=POINT_FLOW, persist_result=False)
def sweep_point(
    experiment: str | None,
    overrides: list[str],
    git_url: str,
    rev: str,
    workspace: str,
    stages: list[str] | None = None,
    dvc_remote: str | None = None,
    remote: bool = False,
    cache_dir: str | None = None,
    host_cache: bool = True,
    workspace_root: str | None = None,
    retries: int = 1,
    retry_delay_seconds: float = 30.0,
    keep_workspace: bool = False,
) -> Any:
    """One experiment of a sweep (with ``experiment=None``, the stages all its experiments share) in its
    workspace ``<workspace_root>/<workspace>``."""
    logger = get_run_logger()
    report_host(False)
    here = Path.cwd()
    root = Path(workspace_root).expanduser().resolve() if workspace_root else here / WORKSPACES
    ws = root / workspace
    access.check({"workspace": ws, "workspace_root": workspace_root, "cache_dir": cache_dir}, {"git_url": git_url})
    what = f"experiment {experiment!r}" if experiment else "the shared stages"
    try:
        prepare_workspace(str(ws), git_url, rev, cache_dir or (cache_dir_of(here) if host_cache else None), dvc_remote)
    except Exception as exc:
        return Failed(message=f"{what}: preparing the workspace failed: {exc}")
    try:
        if experiment and has_experiment(ws, rev, experiment):
            logger.info("%s already ran in this workspace; sharing it", what)
        else:
            name = experiment or f"{Path(workspace).parent.name}-shared-stages"
            run = exp_run.with_options(**retry_options(retries, retry_delay_seconds))
            run(name, overrides, stages or [], str(ws), remote)
        share_results(str(ws), experiment, git_url, remote)
    except StageFailure as exc:
        if remote:  # what did finish is worth sharing
            pushed = run_dvc(["push", "--run-cache"], ws).returncode
            logger.info("dvc push --run-cache after the failure: exit %s", pushed)
        return Failed(message=exc.describe())
    if not keep_workspace:
        shutil.rmtree(ws, ignore_errors=True)
    return Completed(message=f"{what} finished")


def outcome_of(flow_run: Any) -> Outcome:
    """An experiment's outcome from its point flow run."""
    wall = flow_run.total_run_time.total_seconds() if flow_run.total_run_time else None
    state = flow_run.state
    if state is None:
        return Outcome(FAILED, "no state", wall)
    if state.is_completed():
        return Outcome(DONE, wall_seconds=wall)
    message = (state.message or state.name).removeprefix("Flow run encountered an exception: ")
    return Outcome(FAILED, message if state.name == "Failed" else f"{state.name}: {message}", wall)


def read_experiments(repo: Path, baseline: str) -> dict[str, dict[str, Any]]:
    """The experiments of ``baseline`` as ``dvc exp show --json`` in ``repo`` lists them."""
    show = dvc_out(["exp", "show", "--json", "--rev", baseline, "--no-fetch"], repo)
    return sweep_table.experiments_from_show(json.loads(show or "[]"), baseline)


def refuse_bad_overrides(repo: Path, sweep: str, experiments: list[sweep_spec.Experiment], baseline: str) -> None:
    """Refuse the whole sweep, before anything runs, when DVC would refuse an override of one of its
    experiments (a key params.yaml lacks, a file that is not there)."""
    problems = dict.fromkeys(
        p for e in experiments for p in check_overrides(lambda path: read_at(repo, baseline, path), e.overrides)
    )
    if problems:
        shown = "; ".join(list(problems)[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise DeterministicFailure("sweep file", [f"error: {sweep}: {shown}"])


@task(name="plan-sweep", **QUIET)
def plan_sweep(repo: str, sweep: sweep_spec.Sweep, baseline: str) -> dict[str, Outcome]:
    """What is already settled: experiments that exist on this commit, with the params the sweep gives
    them (done earlier) or with others (failed: the name is taken)."""
    root, experiments = Path(repo), sweep.experiments()
    existing = read_experiments(root, baseline)
    settled: dict[str, Outcome] = {}
    for e in (e for e in experiments if e.name in existing):
        if wrong := sweep_table.mismatched_params(e, existing[e.name]["params"]):
            why = f"an experiment named {e.name} exists on this commit with other params: {'; '.join(wrong)}"
            settled[e.name] = Outcome(FAILED, f"{why}. Remove it (dvc exp remove {e.name}) or rename the point")
        else:
            settled[e.name] = Outcome(DONE_EARLIER)
    summary = ", ".join(f"{n}: {o.status}" for n, o in settled.items()) or "none"
    logged = (sweep.name, baseline[:12], len(experiments), summary)
    get_run_logger().info("sweep %s at %s: %d experiments, settled before running: %s", *logged)
    return settled


@task(name="experiment", task_run_name="{name}", **QUIET)
def run_point(deployment: str, name: str, parameters: dict[str, Any], tags: list[str], poll_seconds: float) -> Outcome:
    """One experiment as a flow run of ``deployment`` (the pool's next idle worker takes it); waits for it to end."""
    from prefect.deployments import run_deployment

    run = run_deployment(deployment, parameters=parameters, flow_run_name=name, tags=tags, poll_interval=poll_seconds)
    outcome = outcome_of(run)
    log = get_run_logger().info if outcome.status == DONE else get_run_logger().error
    log("%s: %s (%.0f s)", name, outcome.message or outcome.status, outcome.wall_seconds or 0)
    return outcome


def _run_here(parameters: dict[str, Any]) -> Outcome:
    """One experiment as a subflow in this process (``executor="local"``)."""
    state = sweep_point(**parameters, return_state=True)
    with get_client(sync_client=True) as client:
        return outcome_of(client.read_flow_run(state.state_details.flow_run_id))


@task(name="publish-sweep", **QUIET)
def publish_sweep(repo: str, sweep: sweep_spec.Sweep, baseline: str, outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The comparison: a markdown artifact, ``reports/sweeps/<name>.md``, ``.csv`` and ``-groups.csv``."""
    root = Path(repo)
    baseline_params = sweep_table.flat(params_at(root, baseline))
    table = sweep_table.build(sweep, outcomes, read_experiments(root, baseline), baseline_params)
    (root / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    stem = RESULTS_DIR / sweep.name
    files = {"md": Path(f"{stem}.md"), "csv": Path(f"{stem}.csv"), "groups": Path(f"{stem}-groups.csv")}
    md = sweep_table.markdown(sweep, table, baseline=baseline, files=[str(p) for p in files.values()])
    texts = {"md": md, "csv": sweep_table.to_csv(table.rows), "groups": sweep_table.to_csv(table.groups)}
    for kind, path in files.items():
        (root / path).write_text(texts[kind])
    key = "sweep-" + re.sub(r"[^a-z0-9-]+", "-", sweep.name.lower()).strip("-")
    create_markdown_artifact(markdown=md, key=key, description=f"Comparison of the experiments of sweep {sweep.name}")
    get_run_logger().info("comparison published: artifact %s, %s", key, ", ".join(map(str, files.values())))
    return {"rows": table.rows, "markdown": md, "files": {k: str(root / v) for k, v in files.items()}}


@flow(name="cifar10-sweep", persist_result=False)
def run_sweep(
    sweep: str,
    set_params: list[str] | None = None,
    repo_dir: str | None = None,
    executor: str = "workers",
    point_deployment: str = POINT_DEPLOYMENT,
    git_url: str | None = None,
    dvc_remote: str | None = None,
    host_cache: bool = True,
    workspace_root: str | None = None,
    point_retries: int = 1,
    retry_delay_seconds: float = 30.0,
    keep_workspaces: bool = False,
    poll_seconds: float = 2.0,
) -> Any:
    """Run every experiment of a sweep as a DVC experiment and compare them; the parameters are described
    in docs/sweeps.md."""
    logger = get_run_logger()
    access.check({"repo_dir": repo_dir, "workspace_root": workspace_root}, {"git_url": git_url})
    repo = Path(repo_dir or ".").resolve()
    if executor not in ("workers", "local"):
        raise ValueError(f"executor must be 'workers' or 'local', not {executor!r}")
    try:
        spec = sweep_spec.load(sweep, repo, set_params or [])
    except sweep_spec.SweepError as exc:
        raise DeterministicFailure("sweep file", [f"error: {exc}"]) from None
    experiments = spec.experiments()
    baseline = git(["rev-parse", "HEAD"], repo).stdout.strip()
    if dirty := git(["status", "--porcelain", "--untracked-files=no"], repo).stdout.strip():
        logger.warning("uncommitted changes are not part of the sweep (commit %s):\n%s", baseline[:12], dirty)
    url = git_url or str(repo)
    remote_url, remote_in_git = default_remote(repo)
    if not (remote := bool(dvc_remote or remote_url)):
        logger.warning("no DVC remote: experiments share stages only through the host's cache")
    refuse_bad_overrides(repo, sweep, experiments, baseline)
    outcomes = dict(plan_sweep(str(repo), spec, baseline))
    pending = [e for e in experiments if e.name not in outcomes]
    common = {
        "git_url": url,
        "rev": baseline,
        "stages": spec.stages,
        "dvc_remote": dvc_remote or (None if remote_in_git else remote_url),
        "remote": remote,
        "host_cache": host_cache,
        "workspace_root": workspace_root or (str(repo / WORKSPACES) if executor == "local" else None),
        "cache_dir": cache_dir_of(repo) if executor == "local" and host_cache else None,
        "retries": point_retries,
        "retry_delay_seconds": retry_delay_seconds,
    }
    tag_list = ["sweep", f"sweep:{spec.name}"]
    if executor == "workers" and pending:
        from prefect.exceptions import ObjectNotFound

        try:
            with get_client(sync_client=True) as client:
                client.read_deployment_by_name(point_deployment)
        except ObjectNotFound:
            why = f"deployment {point_deployment!r} not found: `prefect --no-prompt deploy --all`, or executor='local'"
            raise DeterministicFailure("sweep", [f"error: {why}"]) from None

    def launch(points: dict[str, dict[str, Any]]) -> dict[str, Outcome]:
        """The experiments' outcomes: run here one after another, or as concurrent tasks each waiting on a flow run."""
        if executor == "local":
            with tags(*tag_list):
                return {name: _run_here(params) for name, params in points.items()}
        futures = run_point.map(point_deployment, list(points), list(points.values()), unmapped(tag_list), poll_seconds)
        return {name: future.result() for name, future in zip(points, futures)}

    # Stages no experiment changes run once, first; the experiments then restore them.
    shared = shared_stages(repo, {k for e in pending for k in e.own}, spec.stages) if len(pending) >= 2 else []
    if shared:
        logger.info("running the stages every experiment shares once, first: %s", ", ".join(shared))
        name, overrides = f"{spec.name}-shared-stages", sweep_spec.to_overrides(spec.base)
        base = dict(common, experiment=None, overrides=overrides, stages=shared, workspace=f"{spec.name}/_shared")
        first = launch({name: base})[name]
        if first.status != DONE:  # after its retries: each experiment would only fail the same way
            why = f"not run: the shared stages failed: {first.message}"
            outcomes.update({e.name: Outcome(FAILED, why) for e in pending})
            pending = []
    own = {"keep_workspace": keep_workspaces}
    points = {e.name: {**common, **own, "experiment": e.name, "overrides": e.overrides} for e in pending}
    outcomes.update(launch({n: {**p, "workspace": f"{spec.name}/{n}"} for n, p in points.items()}))

    if url != str(repo) and (names := [e.name for e in experiments if outcomes[e.name].status == DONE]):
        if run_dvc(["exp", "pull", "--no-cache", url, *names], repo, logger).returncode != 0:
            logger.warning("dvc exp pull from %s failed; the experiments are there", url)
    summary = publish_sweep(str(repo), spec, baseline, outcomes)
    statuses = [r["status"] for r in summary["rows"]]
    failed = [r for r in summary["rows"] if r["status"] not in (DONE, DONE_EARLIER)]
    message = (
        f"sweep {spec.name}: {len(experiments)} experiments, {statuses.count(DONE)} ran now, "
        f"{statuses.count(DONE_EARLIER)} finished before, {len(failed)} failed"
    )
    if failed:
        message += ": " + "; ".join(f"{r['experiment']} ({r['message'][:300]})" for r in failed)
        return Failed(message=message, data=SweepFailed(message, summary))
    return Completed(message=message, data=summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.sweep", description="Run a sweep of DVC experiments as a Prefect flow."
    )
    parser.add_argument("sweep", help="sweep file, e.g. sweeps/alexnet-variants.yaml")
    parser.add_argument("-S", "--set-param", action="append", dest="set_params", help="as in dvc exp run -S")
    parser.add_argument("--local", action="store_true", help="run the experiments here, one after another")
    parser.add_argument("--repo-dir", help="the checkout whose HEAD is the baseline (default: the working directory)")
    parser.add_argument("--git-url", help="where workspaces clone from and experiments go (default: the checkout)")
    parser.add_argument("--dvc-remote", help="the DVC remote the workspaces share results through")
    parser.add_argument("--keep-workspaces", action="store_true", help="keep each experiment's clone after it succeeds")
    args = vars(parser.parse_args(argv))
    executor = "local" if args.pop("local") else "workers"
    state, status = run_flow(run_sweep, **args, executor=executor)
    summary = state.result(raise_on_failure=False)
    summary = summary.summary if isinstance(summary, SweepFailed) else summary
    if isinstance(summary, dict):
        print(summary["markdown"])
    if state.is_completed():
        print(state.message, file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
