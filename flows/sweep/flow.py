"""Sweeps: many DVC experiments -- a grid or list of params overrides times seeds -- fanned out
over the ``gpu`` pool's workers, then compared in one table.

Two flows:

- ``cifar10-sweep`` (:func:`run_sweep`) reads a sweep file (``sweeps/*.yaml``, see
  :mod:`flows.sweep.spec`), skips the experiments that already exist, runs the stages every
  experiment shares once, then one task per remaining experiment that starts a flow run of the
  ``cifar10-sweep-point/point`` deployment (``run_deployment``; any idle worker of the pool picks it
  up) and waits for it -- a failed one does not stop the others -- and publishes the comparison
  (:mod:`flows.sweep.table`) as a Prefect artifact and as ``reports/sweeps/<name>.md`` and ``.csv``.
- ``cifar10-sweep-point`` (:func:`sweep_point`) runs one experiment in a git clone of its own at
  the sweep's baseline commit: ``dvc exp run -n <experiment> -S ...``, restoring every stage some
  other workspace already ran from DVC's run-cache (a shared cache directory on the host, the DVC
  remote across hosts), then ``dvc exp push`` of the experiment back to the repository the
  sweep started from, with its data and run-cache to the DVC remote.

DVC's own queue (``dvc exp run --queue``) runs on one machine only; Prefect's workers are what
spreads a sweep over several. Metrics come from ``dvc exp show --json``; wall times, and which
experiments failed for good before, from the point flow runs Prefect recorded.

Run a sweep from the repository root::

    python -m flows.sweep sweeps/learning-rate.yaml --local        # one experiment after another, here
    python -m flows.sweep sweeps/alexnet-variants.yaml             # on the gpu pool's workers

or through the ``cifar10-sweep/sweep`` deployment (prefect.yaml; docs/sweeps.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed

from flows import access
from flows.pipeline import exp_run, report_host, retry_options, share_results
from flows.stages import DeterministicFailure, StageFailure, check_overrides, child_env, log_lines, run_dvc
from flows.sweep import spec as sweep_spec
from flows.sweep import table as sweep_table
from flows.sweep import workspace as sweep_workspace
from flows.sweep.table import DONE, DONE_EARLIER, FAILED, FAILED_EARLIER, Outcome
from flows.workspace import cache_dir_of, default_remote, git

#: The deployment (prefect.yaml) whose flow runs execute the experiments on the pool's workers.
POINT_DEPLOYMENT = "cifar10-sweep-point/point"
POINT_FLOW = "cifar10-sweep-point"
#: Where the comparison goes, in the repository the sweep started from.
RESULTS_DIR = Path("reports/sweeps")
#: Where the experiments' workspaces live, under the checkout the worker runs in.
WORKSPACES = Path(".dvc/tmp/sweeps")
#: The name of a point's Failed state when running it again would fail the same way (bad params,
#: failed validation): a rerun of the sweep skips it unless told to retry.
DETERMINISTIC = "FailedForGood"


class SweepFailed(RuntimeError):
    """Some experiments of a sweep failed (the others finished); ``summary`` holds the table."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


# -- one experiment: the point flow --------------------------------------------------------------------


@task(name="workspace", cache_policy=NO_CACHE, persist_result=False, retries=1, retry_delay_seconds=5)
def prepare_workspace(ws: str, git_url: str, rev: str, cache_dir: str | None, dvc_remote: str | None) -> str:
    """A clone of the sweep's repository at its baseline commit, with the shared cache and remote."""
    how = sweep_workspace.prepare(Path(ws), git_url, rev, cache_dir=cache_dir, dvc_remote=dvc_remote)
    get_run_logger().info("workspace %s (%s from %s at %s); DVC cache %s", ws, how, git_url, rev[:12], cache_dir)
    return how


def _workspace_root(workspace_root: str | None) -> Path:
    if workspace_root:
        return Path(workspace_root).expanduser().resolve()
    here = Path.cwd()
    return (here / WORKSPACES) if (here / ".dvc").is_dir() else Path.home() / ".cache" / "cifar10-sweeps"


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
    """One experiment of a sweep (or, with ``experiment=None``, the stages all its experiments share).

    Args:
        experiment: the DVC experiment's name; None runs the shared ``stages`` and shares only the run-cache.
        overrides: ``-S`` values, in order.
        git_url: the repository the sweep started from: cloned here, and the experiment is pushed back to it.
        rev: the sweep's baseline commit.
        workspace: the workspace's path under ``workspace_root`` (``<sweep>/<experiment>``).
        stages: ``dvc exp run`` targets (default: the whole pipeline).
        dvc_remote: URL of the DVC remote to use; None: the one the committed ``.dvc/config`` names.
        remote: whether there is a DVC remote at all (pull and push through it).
        cache_dir: a DVC cache directory to share; default: with ``host_cache``, the cache of the
            checkout this run works in (the deployment's working directory), so experiments on one
            host restore each other's stages without a trip to the remote.
        host_cache: see ``cache_dir``.
        workspace_root: where the workspaces live (default ``.dvc/tmp/sweeps`` of that checkout).
        retries, retry_delay_seconds: attempts after the first for a transient failure, and the
            first delay (doubling); a training stage resumes from its checkpoint in the workspace.
        keep_workspace: keep the clone after success (it is kept after a failure anyway).

    Returns a Completed state, or a Failed one named :data:`DETERMINISTIC` when another attempt
    would fail the same way.
    """
    logger = get_run_logger()
    report_host(False)
    ws = _workspace_root(workspace_root) / workspace
    access.check({"workspace": ws, "workspace_root": workspace_root, "cache_dir": cache_dir}, {"git_url": git_url})
    shared = cache_dir or (cache_dir_of(Path.cwd()) if host_cache else None)
    what = f"experiment {experiment!r}" if experiment else "the shared stages"
    try:
        prepare_workspace(str(ws), git_url, rev, shared, dvc_remote)
    except Exception as exc:
        return Failed(message=f"{what}: preparing the workspace failed: {exc}")
    try:
        if experiment and sweep_workspace.has_experiment(ws, rev, experiment):
            logger.info("%s already ran in this workspace; sharing it", what)
        else:
            name = experiment or f"{Path(workspace).parent.name}-shared-stages"
            exp_run.with_options(**retry_options(retries, retry_delay_seconds))(
                name, overrides, stages or [], str(ws), remote
            )
        share_results(str(ws), experiment, git_url, remote)
    except StageFailure as exc:
        if remote:  # what did finish is worth sharing
            result = run_dvc(["push", "--run-cache"], ws, lambda line: None)
            logger.info("dvc push --run-cache after the failure: exit %s", result.returncode)
        return Failed(message=exc.describe(), name="Failed" if exc.retryable else DETERMINISTIC)
    if not keep_workspace:
        sweep_workspace.remove(ws)
    return Completed(message=f"{what} finished")


# -- the sweep: plan, fan out, compare -------------------------------------------------------------------


def read_experiments(repo: Path, baseline: str) -> dict[str, dict[str, Any]]:
    """The experiments of ``baseline`` as ``dvc exp show --json`` in ``repo`` lists them."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json", "--rev", baseline, "--no-fetch"],
        cwd=repo,
        env=child_env(),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp show failed in {repo}: {proc.stderr.strip()[-2000:]}")
    return sweep_table.experiments_from_show(json.loads(proc.stdout or "[]"), baseline)


def outcome_of(flow_run: Any) -> Outcome:
    """An experiment's outcome from its point flow run."""
    wall = flow_run.total_run_time.total_seconds() if flow_run.total_run_time else None
    state = flow_run.state
    if state is not None and state.is_completed():
        return Outcome(DONE, wall_seconds=wall)
    message = (state.message if state else "") or (state.name if state else "no state")
    message = message.removeprefix("Flow run encountered an exception: ")
    deterministic = state is not None and state.name == DETERMINISTIC
    shown = message if state is None or state.name in ("Failed", DETERMINISTIC) else f"{state.name}: {message}"
    return Outcome(FAILED, shown, wall_seconds=wall, deterministic=deterministic)


def previous_runs(sweep: str, baseline: str) -> dict[str, Any]:
    """``{experiment: its latest finished point flow run}`` of earlier runs of this sweep on ``baseline``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterTags
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[POINT_FLOW])),
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"sweep:{sweep}"])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,  # the newest first, should the API page them
        )
    return {
        r.parameters.get("experiment"): r
        for r in reversed(runs)
        if r.state and r.state.is_final() and r.parameters.get("rev") == baseline
    }


@task(name="plan-sweep", cache_policy=NO_CACHE, persist_result=False)
def plan_sweep(repo: str, sweep: sweep_spec.Sweep, baseline: str, retry_failed: bool) -> dict[str, Outcome]:
    """What is already settled: experiments that exist (with the params the sweep gives them), that
    failed for good before on this commit with these params, or whose overrides DVC would refuse.
    Everything else still has to run."""
    root = Path(repo)
    existing = read_experiments(root, baseline)
    previous = previous_runs(sweep.name, baseline)
    settled: dict[str, Outcome] = {}
    for e in sweep.experiments():
        before = outcome_of(previous[e.name]) if e.name in previous else None
        same = e.name in previous and previous[e.name].parameters.get("overrides") == list(e.overrides)
        if e.name in existing:
            wrong = sweep_table.mismatched_params(e, existing[e.name]["params"])
            settled[e.name] = (
                Outcome(
                    FAILED,
                    f"an experiment named {e.name} exists on this commit with other params: {'; '.join(wrong)}. "
                    f"Remove it (dvc exp remove {e.name}) or rename the point",
                )
                if wrong
                else Outcome(
                    DONE_EARLIER, wall_seconds=before.wall_seconds if before and before.status == DONE else None
                )
            )
        elif before and before.deterministic and same and not retry_failed:
            settled[e.name] = Outcome(FAILED_EARLIER, before.message, deterministic=True)
        elif problems := check_overrides(lambda p: _show(root, baseline, p), list(e.overrides)):
            settled[e.name] = Outcome(FAILED, f"bad override: {'; '.join(problems)}", deterministic=True)
    get_run_logger().info(
        "sweep %s at %s: %d experiments, %d settled before running (%s); %d to run",
        sweep.name,
        baseline[:12],
        len(sweep.experiments()),
        len(settled),
        ", ".join(f"{n}: {o.status}" for n, o in settled.items()) or "none",
        len(sweep.experiments()) - len(settled),
    )
    return settled


def _show(repo: Path, rev: str, path: str) -> str | None:
    proc = git(["show", f"{rev}:{path}"], repo, check=False)
    return proc.stdout if proc.returncode == 0 else None


@task(name="experiment", task_run_name="{name}", cache_policy=NO_CACHE, persist_result=False)
def run_point(deployment: str, name: str, parameters: dict[str, Any], tags: list[str], poll_seconds: float) -> Outcome:
    """One experiment as a flow run of ``deployment`` (the pool's next idle worker takes it); waits
    for it to end."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(
        deployment, parameters=parameters, flow_run_name=name, tags=tags, poll_interval=poll_seconds
    )
    outcome = outcome_of(flow_run)
    (get_run_logger().info if outcome.status == DONE else get_run_logger().error)(
        "%s: %s (%.0f s)", name, outcome.message or outcome.status, outcome.wall_seconds or 0
    )
    return outcome


def _run_here(parameters: dict[str, Any]) -> Outcome:
    """One experiment as a subflow in this process (``executor="local"``)."""
    from prefect.client.orchestration import get_client

    state = sweep_point(**parameters, return_state=True)
    with get_client(sync_client=True) as client:
        return outcome_of(client.read_flow_run(state.state_details.flow_run_id))


def _require_deployment(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise DeterministicFailure(
                "sweep",
                [
                    f"error: deployment {name!r} not found: run `prefect --no-prompt deploy --all` from the "
                    "repository root, or run the sweep with executor='local'"
                ],
            ) from None


@task(name="publish-sweep", cache_policy=NO_CACHE, persist_result=False)
def publish_sweep(repo: str, sweep: sweep_spec.Sweep, baseline: str, outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The comparison table: a markdown artifact, ``reports/sweeps/<name>.md`` and ``.csv``
    (``-groups.csv`` for the per-point means)."""
    root = Path(repo)
    experiments = sweep.experiments()
    recorded = read_experiments(root, baseline)
    rows, keys, columns = sweep_table.build_rows(sweep, experiments, outcomes, recorded)
    groups = sweep_table.build_groups(sweep, experiments, rows, keys, columns)
    out = root / RESULTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "md": out / f"{sweep.name}.md",
        "csv": out / f"{sweep.name}.csv",
        "groups": out / f"{sweep.name}-groups.csv",
    }
    md = sweep_table.markdown(
        sweep, rows, groups, keys, columns, baseline=baseline, files=[str(p.relative_to(root)) for p in files.values()]
    )
    files["md"].write_text(md)
    files["csv"].write_text(sweep_table.rows_csv(rows, keys, columns))
    files["groups"].write_text(sweep_table.groups_csv(groups, columns))
    key = "sweep-" + re.sub(r"[^a-z0-9-]+", "-", sweep.name.lower()).strip("-")
    create_markdown_artifact(markdown=md, key=key, description=f"Comparison of the experiments of sweep {sweep.name}")
    get_run_logger().info("comparison published: artifact %s, %s", key, ", ".join(str(p) for p in files.values()))
    return {"rows": [r.__dict__ for r in rows], "markdown": md, "files": {k: str(v) for k, v in files.items()}}


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
    retry_failed: bool = False,
    point_retries: int = 1,
    retry_delay_seconds: float = 30.0,
    keep_workspaces: bool = False,
    poll_seconds: float = 2.0,
) -> Any:
    """Run every experiment of a sweep as a DVC experiment and compare them.

    Args:
        sweep: the sweep file, relative to the repository (``sweeps/alexnet-variants.yaml``).
        set_params: more overrides for every experiment, ``-S`` syntax (``data.url=/path/to/archive``).
        repo_dir: the repository (default: the working directory the deployment's pull step sets).
        executor: ``workers``: one flow run per experiment through ``point_deployment``, picked up
            by the pool's idle workers; ``local``: one after another in this process.
        point_deployment: the deployment that runs one experiment.
        git_url: where the workspaces clone from and push experiments to (default: ``repo_dir``,
            which suits workers on this host; give a URL every worker can reach otherwise).
        dvc_remote: the DVC remote URL the workspaces share results through (default: the
            repository's default remote).
        host_cache: experiments on one host share the DVC cache of the checkout they run in.
        workspace_root: where the workers keep workspaces (default ``.dvc/tmp/sweeps`` of their checkout).
        retry_failed: also rerun experiments that failed for good (bad params) last time.
        point_retries, retry_delay_seconds: retries of a transient failure inside an experiment.
        keep_workspaces: keep each experiment's clone after it succeeds.
        poll_seconds: how often to look at the experiments' flow runs.
    """
    logger = get_run_logger()
    access.check({"repo_dir": repo_dir, "workspace_root": workspace_root}, {"git_url": git_url})
    repo = Path(repo_dir or ".").resolve()
    if executor not in ("workers", "local"):
        raise ValueError(f"executor must be 'workers' or 'local', not {executor!r}")
    try:
        spec = sweep_spec.load(sweep, repo, set_params or [])
        experiments = spec.experiments()
    except sweep_spec.SweepError as exc:
        raise DeterministicFailure("sweep file", [f"error: {exc}"]) from None
    baseline = sweep_workspace.head(repo)
    if dirty := sweep_workspace.dirty_pipeline_files(repo):
        logger.warning(
            "uncommitted changes in %s are not part of the sweep (commit %s)", ", ".join(dirty), baseline[:12]
        )
    url = git_url or str(repo)
    remote_url, remote_in_git = default_remote(repo)
    remote = bool(dvc_remote or remote_url)
    if not remote:
        logger.warning("no DVC remote: experiments share stages only through the host's cache")
    settled = plan_sweep(str(repo), spec, baseline, retry_failed)
    pending = [e for e in experiments if e.name not in settled]
    outcomes: dict[str, Outcome] = dict(settled)
    common = {
        "git_url": url,
        "rev": baseline,
        "stages": spec.stages,
        "dvc_remote": dvc_remote or (None if remote_in_git else remote_url),
        "remote": remote,
        "host_cache": host_cache,
        "workspace_root": workspace_root,
        "retries": point_retries,
        "retry_delay_seconds": retry_delay_seconds,
    }
    if executor == "local":
        common["workspace_root"] = workspace_root or str(repo / WORKSPACES)
        common["cache_dir"] = cache_dir_of(repo) if host_cache else None

    tag_list = ["sweep", f"sweep:{spec.name}"]
    if executor == "workers" and pending:
        _require_deployment(point_deployment)

    def launch(points: dict[str, dict[str, Any]]) -> dict[str, Outcome]:
        """Run the experiments -- here one after another, or as concurrent tasks each waiting on its
        flow run -- and return their outcomes."""
        if executor == "local":
            with tags(*tag_list):
                return {name: _run_here(params) for name, params in points.items()}
        futures = {
            name: run_point.submit(point_deployment, name, params, tag_list, poll_seconds)
            for name, params in points.items()
        }
        return {name: future.result() for name, future in futures.items()}

    # Stages no experiment changes run once, first; the experiments then restore them.
    varied = {k for e in pending for k in e.own}
    shared = sweep_workspace.shared_stages(repo, varied, spec.stages) if len(pending) >= 2 else []
    if shared:
        logger.info("running the stages every experiment shares once, first: %s", ", ".join(shared))
        base = {**common, "experiment": None, "overrides": sweep_spec.to_overrides(spec.base), "stages": shared}
        name = f"{spec.name}-shared-stages"
        first = launch({name: {**base, "workspace": f"{spec.name}/_shared"}})[name]
        if first.status != DONE and first.deterministic:
            outcomes.update(
                {e.name: Outcome(FAILED, f"not run: the shared stages failed: {first.message}") for e in pending}
            )
            pending = []
    own = {"keep_workspace": keep_workspaces}
    points = {
        e.name: {
            **common,
            **own,
            "experiment": e.name,
            "overrides": list(e.overrides),
            "workspace": f"{spec.name}/{e.name}",
        }
        for e in pending
    }
    outcomes.update(launch(points))

    if url != str(repo):
        names = [e.name for e in experiments if outcomes[e.name].status == DONE]
        if names and run_dvc(["exp", "pull", "--no-cache", url, *names], repo, log_lines(logger)).returncode != 0:
            logger.warning("dvc exp pull from %s failed; the experiments are there", url)
    summary = publish_sweep(str(repo), spec, baseline, outcomes)
    rows = summary["rows"]
    failed = [r for r in rows if r["status"] not in (DONE, DONE_EARLIER)]
    message = (
        f"sweep {spec.name}: {len(experiments)} experiments, {sum(r['status'] == DONE for r in rows)} ran now, "
        f"{sum(r['status'] == DONE_EARLIER for r in rows)} finished before, {len(failed)} failed"
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
    parser.add_argument("--repo-dir")
    parser.add_argument("--git-url")
    parser.add_argument("--dvc-remote")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--keep-workspaces", action="store_true")
    args = parser.parse_args(argv)
    state = run_sweep(
        sweep=args.sweep,
        set_params=args.set_params,
        repo_dir=args.repo_dir,
        executor="local" if args.local else "workers",
        git_url=args.git_url,
        dvc_remote=args.dvc_remote,
        retry_failed=args.retry_failed,
        keep_workspaces=args.keep_workspaces,
        return_state=True,
    )
    summary = state.result(raise_on_failure=False)
    summary = summary.summary if isinstance(summary, SweepFailed) else summary
    if isinstance(summary, dict) and "markdown" in summary:
        print(summary["markdown"])
    print(state.message or state.name, file=sys.stderr)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
