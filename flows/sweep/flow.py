"""Sweeps: many DVC experiments -- a grid or list of params overrides times seeds -- fanned out
over the ``gpu`` pool's workers, then compared in one table.

Two flows:

- ``cifar10-sweep`` (:func:`run_sweep`) reads a sweep file (``sweeps/*.yaml``, see
  :mod:`flows.sweep.spec`), skips the experiments that already exist, runs the stages every
  experiment shares once, starts one ``cifar10-sweep-point`` flow run per remaining experiment
  through the ``cifar10-sweep-point/point`` deployment (any idle worker of the pool picks each
  up), waits for all of them -- a failed one does not stop the others -- and publishes the
  comparison (:mod:`flows.sweep.table`) as a Prefect artifact and as ``reports/sweeps/<name>.md``
  and ``.csv``.
- ``cifar10-sweep-point`` (:func:`sweep_point`) runs one experiment in a git clone of its own at
  the sweep's baseline commit: ``dvc exp run -n <experiment> -S ...``, restoring every stage some
  other workspace already ran from DVC's run-cache (a shared cache directory on the host, the DVC
  remote across hosts), then ``dvc exp push`` of the experiment back to the repository the
  sweep started from, with its data and run-cache to the DVC remote.

Run a sweep from the repository root::

    python -m flows.sweep sweeps/learning-rate.yaml --local        # one experiment after another, here
    python -m flows.sweep sweeps/alexnet-variants.yaml             # on the gpu pool's workers

or through the ``cifar10-sweep/sweep`` deployment (prefect.yaml; README, "Sweeps").
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed

from flows import access
from flows.pipeline import report_host, share_results
from flows.sweep import spec as sweep_spec
from flows.sweep import table as sweep_table
from flows.sweep import workspace as sweep_workspace
from flows.stages import (
    DeterministicFailure,
    OverrideError,
    StageFailure,
    apply_overrides,
    child_env,
    classify,
    log_lines,
    override_files,
    retry_options,
    retry_unless_deterministic,
    run_dvc,
    stage_outcomes,
)
from flows.sweep.table import DONE, DONE_EARLIER, FAILED, FAILED_EARLIER, Outcome
from flows.workspace import cache_dir_of, default_remote, git

#: The deployment (prefect.yaml) whose flow runs execute the experiments on the pool's workers.
POINT_DEPLOYMENT = "cifar10-sweep-point/point"
#: Where the comparison goes, in the repository the sweep started from.
RESULTS_DIR = Path("reports/sweeps")
#: Where the experiments' workspaces live, under the checkout the worker runs in.
WORKSPACES = Path(".dvc/tmp/sweeps")
#: The last word of a failed experiment's message: whether running it again could change anything.
DETERMINISTIC, TRANSIENT = "[deterministic]", "[transient]"


class PointFailure(RuntimeError):
    """An experiment failed; ``deterministic`` when running it again would fail the same way."""

    def __init__(self, detail: str, deterministic: bool):
        self.deterministic = deterministic
        super().__init__(f"{detail} {DETERMINISTIC if deterministic else TRANSIENT}")


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
    get_run_logger().info(
        "workspace %s (%s from %s at %s); DVC cache %s; DVC remote %s",
        ws,
        how,
        git_url,
        rev[:12],
        cache_dir or "its own",
        dvc_remote or "the one its .dvc/config names, if any",
    )
    return how


@task(
    name="dvc-exp-run",
    task_run_name="dvc exp run {experiment}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_unless_deterministic,
    retry_jitter_factor=0.2,
)
def exp_run(experiment: str, overrides: list[str], stages: list[str] | None, ws: str, pull: bool) -> dict[str, str]:
    """``dvc exp run -n <experiment> -S ...`` in the workspace, its output in the run log."""
    logger = get_run_logger()
    args = ["exp", "run", *(["--pull"] if pull else []), "-n", experiment]
    for item in overrides:
        args += ["-S", item]
    result = run_dvc([*args, *(stages or [])], Path(ws), log_lines(logger))
    if result.returncode != 0:
        raise classify(f"dvc exp run {experiment}", result.returncode, result.lines)
    outcomes = stage_outcomes(result.lines)
    logger.info("experiment %s: %s", experiment, ", ".join(f"{s} {o}" for s, o in outcomes.items()) or "nothing to do")
    return outcomes


@task(
    name="dvc-repro",
    task_run_name="shared stages",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_unless_deterministic,
    retry_jitter_factor=0.2,
)
def repro_shared(overrides: list[str], stages: list[str], ws: str, pull: bool) -> dict[str, str]:
    """The stages every experiment shares, once, with the sweep's common overrides applied (the
    workspace is a clone that is checked out afresh each attempt, so nothing is put back)."""
    logger = get_run_logger()
    try:
        apply_overrides(Path(ws), overrides)
    except OverrideError as exc:  # an unknown key or bad syntax: the sweep file's to fix
        raise DeterministicFailure("the sweep's overrides", [f"error: {exc}"]) from None
    result = run_dvc(["repro", *(["--pull"] if pull else []), *stages], Path(ws), log_lines(logger))
    if result.returncode != 0:
        raise classify("the shared stages", result.returncode, result.lines)
    return stage_outcomes(result.lines)


def _workspace_root(workspace_root: str | None) -> Path:
    if workspace_root:
        return Path(workspace_root).expanduser().resolve()
    here = Path.cwd()
    return (here / WORKSPACES) if (here / ".dvc").is_dir() else Path.home() / ".cache" / "cifar10-sweeps"


@flow(name="cifar10-sweep-point", persist_result=False)
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
) -> dict[str, Any]:
    """One experiment of a sweep (or, with ``experiment=None``, the stages all its experiments share).

    Args:
        experiment: the DVC experiment's name; None runs ``dvc repro <stages>`` instead.
        overrides: ``-S`` values, in order.
        git_url: the repository the sweep started from: cloned here, and the experiment is pushed back to it.
        rev: the sweep's baseline commit.
        workspace: the workspace's path under ``workspace_root`` (``<sweep>/<experiment>``).
        stages: ``dvc exp run`` / ``dvc repro`` targets (default: the whole pipeline).
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
    """
    logger = get_run_logger()
    started = time.monotonic()
    host = report_host(False)
    ws = _workspace_root(workspace_root) / workspace
    access.check({"workspace": ws, "workspace_root": workspace_root, "cache_dir": cache_dir}, {"git_url": git_url})
    shared = cache_dir or (cache_dir_of(Path.cwd()) if host_cache else None)
    what = f"experiment {experiment!r}" if experiment else "the shared stages"
    try:
        prepare_workspace(str(ws), git_url, rev, shared, dvc_remote)
    except Exception as exc:
        raise PointFailure(f"{what}: preparing the workspace failed: {exc}", deterministic=False) from None
    options = retry_options(retries, retry_delay_seconds)
    outcomes: dict[str, str] = {}
    try:
        if experiment and sweep_workspace.has_experiment(ws, rev, experiment):
            logger.info("%s already ran in this workspace; sharing it", what)
        elif experiment:
            outcomes = exp_run.with_options(**options)(experiment, overrides, stages, str(ws), remote)
        else:
            outcomes = repro_shared.with_options(**options)(overrides, stages or [], str(ws), remote)
        share_results(str(ws), experiment, git_url, remote)
    except StageFailure as exc:
        if remote:  # what did finish is worth sharing
            result = run_dvc(["push", "--run-cache"], ws, lambda line: None)
            logger.info("dvc push --run-cache after the failure: exit %s", result.returncode)
        raise PointFailure(exc.describe(), deterministic=not exc.retryable) from None
    if not keep_workspace:
        sweep_workspace.remove(ws)
    seconds = time.monotonic() - started
    logger.info(
        "%s finished in %.1f s on %s: %s",
        what,
        seconds,
        host["host"],
        ", ".join(f"{s} {o}" for s, o in outcomes.items()) or "nothing ran",
    )
    return {"experiment": experiment, "host": host["host"], "seconds": seconds, "stages": outcomes}


# -- the sweep: plan, fan out, compare -------------------------------------------------------------------


def _invalid_override(
    repo: Path, rev: str, overrides: list[str], cache: dict[tuple[str, ...], str | None]
) -> str | None:
    """Why ``dvc exp run -S`` would refuse these overrides (an unknown key, bad syntax), judged on
    the params files of the baseline commit; None when it would accept them."""
    key = tuple(overrides)
    if key in cache:
        return cache[key]
    problem = None
    with tempfile.TemporaryDirectory() as tmp:
        for path in override_files(overrides):
            target = Path(tmp) / path
            target.parent.mkdir(parents=True, exist_ok=True)
            shown = git(["show", f"{rev}:{path}"], repo, check=False)
            target.write_text(shown.stdout if shown.returncode == 0 else "")
        try:
            apply_overrides(Path(tmp), overrides)
        except OverrideError as exc:
            problem = f"bad override: {exc}"
    cache[key] = problem
    return problem


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


def _record_path(repo: Path, name: str) -> Path:
    return repo / RESULTS_DIR / f"{name}.json"


def _load_record(repo: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads(_record_path(repo, name).read_text())
    except (OSError, ValueError):
        return {}


@task(name="plan-sweep", cache_policy=NO_CACHE, persist_result=False)
def plan_sweep(repo: str, sweep: sweep_spec.Sweep, baseline: str, retry_failed: bool) -> dict[str, Outcome]:
    """What is already settled: experiments that exist (with the params the sweep gives them), that
    failed for good before on this commit with these params, or whose overrides DVC would refuse.
    Everything else still has to run."""
    logger = get_run_logger()
    root = Path(repo)
    existing = read_experiments(root, baseline)
    previous = _load_record(root, sweep.name)
    previous = previous.get("experiments", {}) if previous.get("baseline") == baseline else {}
    settled: dict[str, Outcome] = {}
    checked: dict[tuple[str, ...], str | None] = {}
    for e in sweep.experiments():
        before = previous.get(e.name) or {}
        if e.name in existing:
            wrong = sweep_table.mismatched_params(e, existing[e.name]["params"])
            if wrong:
                settled[e.name] = Outcome(
                    FAILED,
                    f"an experiment named {e.name} exists on this commit with other "
                    f"params: {'; '.join(wrong)}. Remove it (dvc exp remove {e.name}) or "
                    "rename the point",
                )
            else:
                settled[e.name] = Outcome(
                    DONE_EARLIER,
                    wall_seconds=before.get("wall_seconds") if before.get("status") in (DONE, DONE_EARLIER) else None,
                    host=before.get("host"),
                )
        elif before.get("deterministic") and before.get("overrides") == list(e.overrides) and not retry_failed:
            settled[e.name] = Outcome(FAILED_EARLIER, before.get("message", ""), deterministic=True)
        elif problem := _invalid_override(root, baseline, list(e.overrides), checked):
            settled[e.name] = Outcome(FAILED, f"{problem} {DETERMINISTIC}", deterministic=True)
    counts = {s: sum(o.status == s for o in settled.values()) for s in (DONE_EARLIER, FAILED_EARLIER, FAILED)}
    logger.info(
        "sweep %s at %s: %d experiments; %d finished before, %d failed before for good, %d refused "
        "without running; %d to run",
        sweep.name,
        baseline[:12],
        len(sweep.experiments()),
        counts[DONE_EARLIER],
        counts[FAILED_EARLIER],
        counts[FAILED],
        len(sweep.experiments()) - len(settled),
    )
    return settled


def _outcome(state: Any, wall: float | None, host: str | None) -> Outcome:
    """An experiment's outcome from the final state of its flow run."""
    if state is not None and state.is_completed():
        return Outcome(DONE, wall_seconds=wall, host=host)
    message = (state.message if state else "") or (state.name if state else "no state")
    message = message.removeprefix("Flow run encountered an exception: ").removeprefix("PointFailure: ")
    name = state.name if state else "no state"
    return Outcome(
        FAILED,
        message if name == "Failed" else f"{name}: {message}",
        wall_seconds=wall,
        deterministic=message.rstrip().endswith(DETERMINISTIC),
        host=host,
    )


def _outcome_of(flow_run: Any) -> Outcome:
    wall = flow_run.total_run_time.total_seconds() if flow_run.total_run_time else None
    host = (flow_run.infrastructure_pid or "").rsplit(":", 1)[0] or None  # a process worker's "host:pid"
    return _outcome(flow_run.state, wall, host)


def _run_here(parameters: dict[str, Any]) -> Outcome:
    """One experiment as a subflow in this process (``executor="local"``)."""
    started = time.monotonic()
    state = sweep_point(**parameters, return_state=True)
    return _outcome(state, time.monotonic() - started, socket.gethostname())


def _submit(deployment: str, name: str, parameters: dict[str, Any], tags: list[str]) -> UUID:
    """One experiment as a flow run of ``deployment``, for the pool's next idle worker."""
    from prefect.deployments import run_deployment

    return run_deployment(deployment, parameters=parameters, timeout=0, flow_run_name=name, tags=tags).id


def _wait(ids: dict[UUID, str], poll_seconds: float, logger: Any) -> dict[str, Outcome]:
    """Poll the flow runs until each is final; log each as it ends."""
    from prefect.client.orchestration import get_client

    outcomes: dict[str, Outcome] = {}
    waiting = dict(ids)
    last_states: dict[UUID, str] = {}
    with get_client(sync_client=True) as client:
        while waiting:
            for run_id, name in list(waiting.items()):
                flow_run = client.read_flow_run(run_id)
                state_name = flow_run.state.name if flow_run.state else "?"
                if last_states.get(run_id) != state_name:
                    last_states[run_id] = state_name
                    if flow_run.state and not flow_run.state.is_final():
                        logger.info("%s: %s", name, state_name)
                if flow_run.state and flow_run.state.is_final():
                    outcome = outcomes[name] = _outcome_of(flow_run)
                    (logger.info if outcome.status == DONE else logger.error)(
                        "%s: %s%s",
                        name,
                        outcome.status if outcome.status == DONE else outcome.message,
                        f" ({outcome.wall_seconds:.0f} s)" if outcome.wall_seconds else "",
                    )
                    del waiting[run_id]
            if waiting:
                time.sleep(poll_seconds)
    return outcomes


def _cancel(ids: list[UUID]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        for run_id in ids:
            try:
                flow_run = client.read_flow_run(run_id)
                if flow_run.state and not flow_run.state.is_final():
                    client.set_flow_run_state(run_id, Cancelling(), force=True)
            except Exception:  # best effort: the sweep is going down anyway
                pass


@task(name="publish-sweep", cache_policy=NO_CACHE, persist_result=False)
def publish_sweep(repo: str, sweep: sweep_spec.Sweep, baseline: str, outcomes: dict[str, Outcome]) -> dict[str, Any]:
    """The comparison table: a markdown artifact, ``reports/sweeps/<name>.md`` and ``.csv``
    (``-groups.csv`` for the per-point means), and the record a rerun reads."""
    logger = get_run_logger()
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
    record = {
        "sweep": sweep.name,
        "source": sweep.source,
        "baseline": baseline,
        "experiments": {
            e.name: {
                "status": outcomes[e.name].status,
                "message": outcomes[e.name].message,
                "deterministic": outcomes[e.name].deterministic,
                "wall_seconds": outcomes[e.name].wall_seconds,
                "host": outcomes[e.name].host,
                "overrides": list(e.overrides),
            }
            for e in experiments
        },
    }
    _record_path(root, sweep.name).write_text(json.dumps(record, indent=2) + "\n")
    key = "sweep-" + re.sub(r"[^a-z0-9-]+", "-", sweep.name.lower()).strip("-")
    create_markdown_artifact(markdown=md, key=key, description=f"Comparison of the experiments of sweep {sweep.name}")
    logger.info("comparison published: artifact %s, %s", key, ", ".join(str(p) for p in files.values()))
    missing = [r.experiment for r in rows if r.status in (DONE, DONE_EARLIER) and r.experiment not in recorded]
    if missing:
        logger.warning("dvc exp show does not list %s", ", ".join(missing))
    return {
        "rows": [r.__dict__ for r in rows],
        "groups": [g.__dict__ for g in groups],
        "markdown": md,
        "files": {k: str(v) for k, v in files.items()},
        "artifact": key,
    }


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
    dirty = sweep_workspace.dirty_pipeline_files(repo)
    if dirty:
        logger.warning(
            "uncommitted changes in %s are not part of the sweep: the experiments run the commit %s",
            ", ".join(dirty),
            baseline[:12],
        )
    url = git_url or str(repo)
    remote_url, remote_in_git = default_remote(repo)
    remote = bool(dvc_remote or remote_url)
    remote_param = dvc_remote or (None if remote_in_git else remote_url)
    if not remote:
        logger.warning(
            "no DVC remote: experiments share stages only through the host's cache; "
            "add one (dvc remote add -d ...) for workers on several hosts"
        )
    settled = plan_sweep(str(repo), spec, baseline, retry_failed)
    pending = [e for e in experiments if e.name not in settled]
    outcomes: dict[str, Outcome] = dict(settled)

    common = {
        "git_url": url,
        "rev": baseline,
        "stages": spec.stages,
        "dvc_remote": remote_param,
        "remote": remote,
        "host_cache": host_cache,
        "workspace_root": workspace_root,
        "retries": point_retries,
        "retry_delay_seconds": retry_delay_seconds,
    }
    if executor == "local":
        common["workspace_root"] = workspace_root or str(repo / WORKSPACES)
        common["cache_dir"] = cache_dir_of(repo) if host_cache else None

    # Stages no experiment changes run once, first; the experiments then restore them.
    varied = {k for e in pending for k in e.own}
    shared = sweep_workspace.shared_stages(repo, varied, spec.stages) if len(pending) >= 2 else []
    tags = ["sweep", f"sweep:{spec.name}"]
    launched: list[UUID] = []
    if executor == "workers" and pending:
        from prefect.client.orchestration import get_client
        from prefect.exceptions import ObjectNotFound

        with get_client(sync_client=True) as client:
            try:
                client.read_deployment_by_name(point_deployment)
            except ObjectNotFound:
                raise DeterministicFailure(
                    "sweep",
                    [
                        f"error: deployment {point_deployment!r} not found: run `prefect --no-prompt deploy --all` "
                        "from the repository root, or run the sweep with executor='local'"
                    ],
                ) from None
    try:
        if shared:
            name = f"{spec.name}-shared-stages"
            logger.info("running the stages every experiment shares once, first: %s", ", ".join(shared))
            params = {
                **common,
                "experiment": None,
                "overrides": sweep_spec.to_overrides(spec.base),
                "workspace": f"{spec.name}/_shared",
                "stages": shared,
            }
            if executor == "local":
                first = _run_here(params)
            else:
                launched.append(run_id := _submit(point_deployment, name, params, tags))
                first = _wait({run_id: name}, poll_seconds, logger)[name]
            if first.status != DONE and first.deterministic:
                for e in pending:
                    outcomes[e.name] = Outcome(FAILED, f"not run: the shared stages failed: {first.message}")
                pending = []
        ids: dict[UUID, str] = {}
        for e in pending:
            params = {
                **common,
                "experiment": e.name,
                "overrides": list(e.overrides),
                "workspace": f"{spec.name}/{e.name}",
                "keep_workspace": keep_workspaces,
            }
            if executor == "local":
                outcomes[e.name] = _run_here(params)
            else:
                launched.append(run_id := _submit(point_deployment, e.name, params, tags))
                ids[run_id] = e.name
        if ids:
            logger.info("started %d experiment flow run(s) of %s; waiting for the workers", len(ids), point_deployment)
            outcomes.update(_wait(ids, poll_seconds, logger))
    except BaseException:
        _cancel(launched)
        raise

    if url != str(repo):
        names = [e.name for e in experiments if outcomes[e.name].status == DONE]
        if names:
            result = run_dvc(["exp", "pull", "--no-cache", url, *names], repo, log_lines(logger))
            if result.returncode != 0:
                logger.warning("dvc exp pull from %s failed; the experiments are there", url)
    summary = publish_sweep(str(repo), spec, baseline, outcomes)
    failed = [r for r in summary["rows"] if r["status"] not in (DONE, DONE_EARLIER)]
    ran = sum(r["status"] == DONE for r in summary["rows"])
    message = (
        f"sweep {spec.name}: {len(experiments)} experiments, {ran} ran now, "
        f"{sum(r['status'] == DONE_EARLIER for r in summary['rows'])} finished before, {len(failed)} failed"
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
