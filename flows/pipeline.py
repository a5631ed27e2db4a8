"""The Prefect flow that runs the DVC pipeline: one task per dvc.yaml stage, in dependency order.

DVC owns the graph and decides what reruns; Prefect schedules, retries, serialises and records.
Each stage task runs ``dvc repro --single-item <stage>`` in the workspace, so an unchanged stage
costs about half a second, a stage whose inputs ran before (here or, with ``share_cache``, on
another host) is restored from the run-cache, and ``dvc.lock`` stays the record of what ran.
Tasks pass stage names and paths, never arrays, and Prefect caches and persists nothing.

Run it once from the repository root (ephemeral Prefect API, no server needed)::

    python -m flows.pipeline --stages validate
    python -m flows.pipeline --set-param data.limit_train=5000 --experiment-name small

or deploy it (prefect.yaml; see README, "Orchestration with Prefect").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run

from flows import access
from flows import host as host_info
from flows.stages import (
    DeterministicFailure,
    OverrideError,
    PlanError,
    apply_overrides,
    classify,
    log_lines,
    outcome,
    plan,
    push_uncached_outputs,
    restore_files,
    retry_options,
    retry_unless_deterministic,
    run_dvc,
    stage_graph,
    uncached_outputs,
)
from flows.summary import REPORT, render

#: A held workspace lock outlives a killed worker by at most this long (Prefect renews it every
#: 3/4 of it while the run is alive; the server's minimum is 60 s).
LEASE_SECONDS = 120
ARTIFACT_SUMMARY = "cifar10-pipeline-summary"
ARTIFACT_REPORT = "cifar10-report"


def _run_logger() -> Any:
    """The run logger inside a flow or task; the module logger elsewhere."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger(__name__)


# -- tasks -------------------------------------------------------------------------------------------


@task(name="host", cache_policy=NO_CACHE, persist_result=False)
def report_host(require_gpu: bool) -> dict[str, Any]:
    """Log where this run executes and what accelerators it has; fail at once for ``require_gpu`` without one."""
    logger = get_run_logger()
    try:
        info = host_info.describe(require_gpu)
    except host_info.GPUUnavailable as exc:
        logger.error(str(exc))
        raise
    logger.info(
        "host %s: %s, Python %s, %s CPUs, %s GiB RAM",
        info["host"],
        info["platform"],
        info["python"],
        info["cpu_count"],
        info.get("memory_gib", "?"),
    )
    logger.info("nvidia-smi: %s%s", info["nvidia_smi"], "".join(f"\n  {g}" for g in info["nvidia_gpus"]))
    logger.info("keras backend: %s", info["backend"])
    logger.info("accelerators: %s", ", ".join(info["gpus"]) or "none (CPU only)")
    return info


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_stages(repo: str, stages: list[str] | None) -> list[str]:
    """The stages to run, upstream first, read from the pipeline's own graph (``dvc dag``)."""
    order = plan(stage_graph(Path(repo)), stages)
    get_run_logger().info("stages to run, in order: %s", " -> ".join(order))
    return order


@task(
    name="stage",
    task_run_name="{stage}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_unless_deterministic,
    retry_jitter_factor=0.2,
)
def run_stage(stage: str, repo: str, pull: bool = False) -> dict[str, Any]:
    """``dvc repro --single-item <stage>``: DVC skips it when nothing changed, or restores it from
    the run-cache; its output goes to the run log line by line."""
    logger = get_run_logger()
    started = time.monotonic()
    args = ["repro", "--single-item", stage, *(["--pull"] if pull else [])]
    result = run_dvc(args, Path(repo), log_lines(logger))
    if result.returncode != 0:
        failure = classify(f"stage '{stage}'", result.returncode, result.lines)
        logger.error("%s", failure)
        raise failure
    done = {
        "stage": stage,
        "outcome": outcome(stage, result.lines),
        "seconds": time.monotonic() - started,
        "attempt": current_task_run.get_run_count(),
    }
    logger.info("stage '%s' %s in %.1f s", stage, done["outcome"], done["seconds"])
    return done


@task(
    name="dvc",
    task_run_name="dvc {command}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_unless_deterministic,
)
def dvc_command(command: str, args: list[str], repo: str) -> str:
    """A DVC housekeeping command (pull, push, exp save, ...) with its output in the run log."""
    logger = get_run_logger()
    result = run_dvc([command, *args], Path(repo), log_lines(logger))
    if result.returncode != 0:
        raise classify(f"dvc {command}", result.returncode, result.lines)
    return result.output


def save_experiment(repo: str, name: str, stages: list[str]) -> None:
    """``dvc exp save`` of the workspace as experiment ``name``: dvc.lock, params, the stages'
    ``cache: false`` outputs (metrics, plots) and the .gitignore files DVC writes for the cached
    ones, included even before their first commit -- so the experiment holds the workspace whole."""
    root = Path(repo)
    ignores = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard", "--", ":(glob)**/.gitignore", ".gitignore"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout.split()
    include = [
        arg
        for path in ["dvc.lock", *uncached_outputs(root, stages), *ignores]
        if (root / path).exists()
        for arg in ("--include-untracked", path)
    ]
    dvc_command("exp", ["save", "--name", name, *include, *stages], repo)
    _run_logger().info("saved DVC experiment %r: dvc exp show / dvc exp apply %s", name, name)


@task(name="share", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[5, 20])
def share_results(ws: str, experiment: str | None, git_url: str, remote: bool) -> None:
    """The experiment's git ref to ``git_url`` (a sweep's repository, the nightly checkout's origin), its
    outputs and run-cache to the DVC remote (sweeps and the nightly run share their results this way)."""
    logger = get_run_logger()
    if remote:
        sent = push_uncached_outputs(Path(ws))
        logger.info("pushed %d object(s) of cache: false outputs that the run-cache refers to", sent)
    if experiment:
        args = ["exp", "push", *(["--run-cache"] if remote else ["--no-cache"]), git_url, experiment]
    elif remote:
        args = ["push", "--run-cache"]
    else:
        return
    result = run_dvc(args, Path(ws), log_lines(logger))
    if result.returncode != 0:
        raise classify(f"dvc {' '.join(args[:2])}", result.returncode, result.lines)


#: pull and push talk to remote storage: worth retrying
sync_command = dvc_command.with_options(retries=2, retry_delay_seconds=[10, 30])


@task(name="push-uncached", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[10, 30])
def push_uncached(repo: str, stages: list[str]) -> int:
    """The stages' ``cache: false`` outputs (metrics, plots) to the remote, so the run-cache
    entries ``dvc push --run-cache`` sent can be restored on another host."""
    pushed = push_uncached_outputs(Path(repo), stages)
    get_run_logger().info("pushed %d uncached output object(s) for the run-cache", pushed)
    return pushed


@task(name="set-params", cache_policy=NO_CACHE, persist_result=False)
def apply_params(repo: str, overrides: list[str]) -> dict[str, str | None]:
    """Apply ``-S`` overrides exactly as ``dvc exp run -S`` does (:func:`flows.stages.apply_overrides`);
    return the original text of each file touched so the flow can put it back."""
    try:
        return apply_overrides(Path(repo), overrides, get_run_logger().info)
    except OverrideError as exc:  # bad syntax or an unknown key: the user's to fix
        raise DeterministicFailure(f"set_params {exc.items}", [f"error: {exc}"]) from None


@task(name="publish", cache_policy=NO_CACHE, persist_result=False)
def publish(repo: str, results: list[dict[str, Any]], experiment: str | None, host: str) -> str:
    """Artifacts: the stages' outcomes, both models' test metrics, ``dvc metrics diff HEAD``, the report."""
    logger = get_run_logger()
    root = Path(repo)
    diff = run_dvc(["metrics", "diff", "HEAD", "--md"], root, lambda line: None)
    diff_text = diff.output if diff.returncode == 0 else f"_`dvc metrics diff HEAD` failed:_\n\n```\n{diff.output}\n```"
    markdown = render(root, results, diff_text, experiment=experiment, host=host)
    create_markdown_artifact(
        markdown=markdown,
        key=ARTIFACT_SUMMARY,
        description="Stages, test metrics and metrics diff of this CIFAR-10 pipeline run",
    )
    report = root / REPORT
    if report.is_file():
        create_link_artifact(
            link=report.as_uri(),
            link_text=str(REPORT),
            key=ARTIFACT_REPORT,
            description=f"The comparison report on {host}: {report}",
        )
    logger.info("artifacts published: %s%s", ARTIFACT_SUMMARY, f", {ARTIFACT_REPORT}" if report.is_file() else "")
    return markdown


# -- serialising runs of one workspace ----------------------------------------------------------------


def workspace_lock_name(repo: Path) -> str:
    """One Prefect global concurrency limit per workspace (host + path): runs of other
    checkouts proceed in parallel, runs of this one queue."""
    hostname = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:40] or "host"
    digest = hashlib.sha1(f"{socket.gethostname()}:{repo}".encode()).hexdigest()[:10]
    return f"dvc-workspace-{hostname}-{digest}"


@contextmanager
def workspace_lock(repo: Path, enabled: bool) -> Iterator[None]:
    """Make runs of one workspace take turns, from planning to publishing.

    Two locks, held together: an exclusive ``flock`` on ``.dvc/tmp/prefect-flow.lock``, which the
    OS releases the moment the holder dies, so a killed run never blocks the next one; and, when
    a Prefect server is configured, the workspace's global concurrency limit (limit 1, created on
    first use), which shows in the UI and in ``prefect gcl ls`` who holds the workspace and who
    waits. That slot is a lease the run renews while alive; a dead run's lease lapses after
    ``LEASE_SECONDS`` (the server's repossessor revokes it). The ephemeral API that
    ``python -m flows.pipeline`` starts without a server revokes nothing, so there the file lock
    serialises alone. DVC's own lock (``--wait-for-lock``) still guards each ``dvc`` command
    against anyone running ``dvc`` by hand.
    """
    if not enabled:
        yield
        return
    from prefect.settings import PREFECT_API_URL

    with _global_limit(repo) if PREFECT_API_URL.value() else _nothing(), file_lock(repo):
        yield


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def file_lock(repo: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows: the global concurrency limit and DVC's lock remain
        yield
        return
    logger = _run_logger()
    path = repo / ".dvc" / "tmp" / "prefect-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            logger.info("waiting for %s, held by %s", path, handle.read().strip() or "another run")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, flow run {current_flow_run.get_name() or '-'}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _global_limit(repo: Path) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    logger = get_run_logger()
    name = workspace_lock_name(repo)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
                logger.info("created global concurrency limit %r (limit 1) for %s", name, repo)
            except ObjectAlreadyExists:
                pass
    run_id = current_flow_run.get_id()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    logger.info("waiting for workspace lock %r", name)
    started = time.monotonic()
    with concurrency(
        name, occupy=1, strict=True, lease_duration=LEASE_SECONDS, holder=holder, raise_on_lease_renewal_failure=False
    ):
        logger.info("workspace lock %r acquired after %.1f s", name, time.monotonic() - started)
        yield


# -- the flow ----------------------------------------------------------------------------------------


@flow(name="cifar10-pipeline", persist_result=False)
def pipeline(
    stages: list[str] | None = None,
    set_params: list[str] | None = None,
    experiment_name: str | None = None,
    require_gpu: bool = False,
    share_cache: bool = False,
    repo_dir: str | None = None,
    stage_retries: int = 2,
    retry_delay_seconds: float = 30.0,
    serialize: bool = True,
) -> dict[str, Any]:
    """Run the DVC pipeline stage by stage.

    Args:
        stages: stages to run, with everything upstream of them (default: the whole pipeline).
        set_params: overrides in ``dvc exp run -S`` syntax (``data.limit_train=5000``,
            ``params.yaml:alexnet.epochs=3``). The run is then saved as a named DVC experiment
            (``dvc exp save``), and the params files are put back afterwards.
        experiment_name: name of that experiment (default: this flow run's name).
        require_gpu: fail at once, before any stage, unless a GPU is usable.
        share_cache: pull from the workspace's default DVC remote before (with the run-cache),
            let each stage pull what it can restore, and push after.
        repo_dir: the DVC workspace (default: the working directory the deployment's pull step sets).
        stage_retries: attempts after the first for a transient stage failure.
        retry_delay_seconds: the first retry's delay; each further one doubles it.
        serialize: queue behind other runs of this workspace (a Prefect global concurrency limit).
    """
    logger = get_run_logger()
    access.check({"repo_dir": repo_dir})
    repo = Path(repo_dir or os.getcwd()).resolve()
    if not (repo / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{repo} holds no dvc.yaml; set repo_dir or the deployment's working directory")
    host = report_host(require_gpu)

    stage_task = run_stage.with_options(**retry_options(stage_retries, retry_delay_seconds))
    experiment = (experiment_name or current_flow_run.get_name() or "prefect-run") if set_params else None
    results: list[dict[str, Any]] = []

    with workspace_lock(repo, serialize):
        try:
            order = plan_stages(str(repo), stages)
        except PlanError as exc:
            raise DeterministicFailure("plan", [f"error: {exc}"]) from None
        if experiment:
            existing = dvc_command("exp", ["list", "--name-only"], str(repo)).split()
            if experiment in existing:
                raise DeterministicFailure(
                    "experiment",
                    [
                        f"error: a DVC experiment named {experiment!r} already exists on this commit; "
                        "pick another experiment_name"
                    ],
                )
        if share_cache:
            sync_command("pull", ["--run-cache", "--allow-missing"], str(repo))
        originals = apply_params(str(repo), set_params) if set_params else {}
        try:
            for stage in order:
                results.append(stage_task(stage, str(repo), pull=share_cache))
            if experiment:
                save_experiment(str(repo), experiment, order)
            publish(str(repo), results, experiment, host["host"])
        finally:
            restore_files(repo, originals)
            if originals:
                logger.info("restored %s to its state before the run", ", ".join(originals))
            if share_cache and results:
                try:
                    sync_command("push", ["--run-cache"], str(repo))
                    push_uncached(str(repo), [r["stage"] for r in results])
                except Exception as exc:  # results stay local; the run's own outcome stands
                    logger.warning("sharing through the DVC remote failed: %s", exc)
    return {"repo": str(repo), "stages": results, "experiment": experiment, "host": host["host"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the CIFAR-10 DVC pipeline as a Prefect flow.")
    parser.add_argument("--stages", nargs="*", default=None, help="stages to run with their upstream (default: all)")
    parser.add_argument("-S", "--set-param", action="append", dest="set_params", help="as in dvc exp run -S")
    parser.add_argument("--experiment-name")
    parser.add_argument("--require-gpu", action="store_true")
    parser.add_argument("--share-cache", action="store_true")
    parser.add_argument("--repo-dir")
    parser.add_argument("--no-serialize", dest="serialize", action="store_false")
    args = parser.parse_args(argv)
    pipeline(
        stages=args.stages or None,
        set_params=args.set_params,
        experiment_name=args.experiment_name,
        require_gpu=args.require_gpu,
        share_cache=args.share_cache,
        repo_dir=args.repo_dir,
        serialize=args.serialize,
    )


if __name__ == "__main__":
    main()
