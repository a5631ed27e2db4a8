"""The Prefect flow that runs the DVC pipeline: one task per dvc.yaml stage, in DVC's order.

DVC owns the graph and decides what reruns; Prefect schedules, retries and records. Each stage task
runs ``dvc repro --single-item <stage>`` in the workspace, so an unchanged stage costs one DVC
start-up, a stage whose inputs ran before (here or, with ``share_cache``, on another host) is restored
from the run-cache, and ``dvc.lock`` stays the record of what ran. With ``set_params`` the run is a
named DVC experiment instead: one ``dvc exp run -n NAME -S ...`` task. Tasks pass stage names and
paths, never arrays, and Prefect caches and persists nothing.

Run it once from the repository root (ephemeral Prefect API, no server needed)::

    python -m flows.pipeline --stages validate
    python -m flows.pipeline --set-param data.limit_train=5000 --experiment-name small

or deploy it (prefect.yaml; docs/orchestration.md).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run
from prefect.tasks import exponential_backoff

from flows import access
from flows import host as host_info
from flows.stages import (
    DeterministicFailure,
    PlanError,
    check_overrides,
    classify,
    log_lines,
    outcomes,
    override_files,
    push_uncached_outputs,
    read_lock,
    retry_unless_deterministic,
    run_dvc,
    stage_order,
)
from flows.summary import REPORT, render

ARTIFACT_SUMMARY = "cifar10-pipeline-summary"
ARTIFACT_REPORT = "cifar10-report"
#: Every task that runs ``dvc`` retries only what may pass (:func:`flows.stages.classify`).
DVC_TASK = {"cache_policy": NO_CACHE, "persist_result": False, "retry_condition_fn": retry_unless_deterministic}


def retry_options(retries: int, first_delay: float) -> dict[str, Any]:
    """``Task.with_options`` arguments: ``retries`` attempts after the first, Prefect's exponential
    backoff from ``first_delay`` seconds, with jitter so retries of many runs do not align."""
    return {
        "retries": max(retries, 0),
        "retry_delay_seconds": exponential_backoff(first_delay),
        "retry_jitter_factor": 0.2,
    }


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
        "host %s: %s, Python %s, %s CPUs, %s GiB RAM; nvidia-smi: %s%s",
        info["host"],
        info["platform"],
        info["python"],
        info["cpu_count"],
        info.get("memory_gib", "?"),
        info["nvidia_smi"],
        "".join(f"\n  {g}" for g in info["nvidia_gpus"]),
    )
    logger.info("keras backend: %s; accelerators: %s", info["backend"], ", ".join(info["gpus"]) or "none (CPU only)")
    return info


@task(name="plan", cache_policy=NO_CACHE, persist_result=False)
def plan_stages(repo: str, stages: list[str] | None) -> list[str]:
    """The stages to run, upstream first, as ``dvc dag`` draws the pipeline."""
    try:
        order = stage_order(Path(repo), stages)
    except PlanError as exc:
        raise DeterministicFailure("plan", [f"error: {exc}"]) from None
    get_run_logger().info("stages to run, in order: %s", " -> ".join(order))
    return order


@task(name="stage", task_run_name="{stage}", **DVC_TASK)
def run_stage(stage: str, repo: str, pull: bool = False) -> dict[str, Any]:
    """``dvc repro --single-item <stage>``: DVC skips it when nothing changed, or restores it from
    the run-cache; its output goes to the run log line by line."""
    logger = get_run_logger()
    started, before = time.monotonic(), read_lock(Path(repo))
    result = run_dvc(["repro", "--single-item", stage, *(["--pull"] if pull else [])], Path(repo), log_lines(logger))
    if result.returncode != 0:
        failure = classify(f"stage '{stage}'", result.lines)
        logger.error("%s", failure)
        raise failure
    done = {
        "stage": stage,
        "outcome": outcomes(before, read_lock(Path(repo)), [stage], result.lines)[stage],
        "seconds": time.monotonic() - started,
        "attempt": current_task_run.get_run_count(),
    }
    logger.info("stage '%s' %s in %.1f s", stage, done["outcome"], done["seconds"])
    return done


@task(name="dvc-exp-run", task_run_name="dvc exp run {experiment}", **DVC_TASK)
def exp_run(experiment: str, overrides: list[str], stages: list[str], repo: str, pull: bool) -> dict[str, str]:
    """``dvc exp run -n <experiment> -S ... <stages>`` in the workspace; what it did to each stage."""
    logger = get_run_logger()
    root = Path(repo)
    before = read_lock(root)
    args = ["exp", "run", *(["--pull"] if pull else []), "-n", experiment]
    result = run_dvc([*args, *(f"--set-param={o}" for o in overrides), *stages], root, log_lines(logger))
    if result.returncode != 0:
        raise classify(f"dvc exp run {experiment}", result.lines)
    done = outcomes(before, read_lock(root), stages, result.lines)
    logger.info("experiment %s: %s", experiment, ", ".join(f"{s} {o}" for s, o in done.items()) or "nothing to do")
    return done


@task(name="dvc", task_run_name="dvc {command}", **DVC_TASK)
def dvc_command(command: str, args: list[str], repo: str) -> str:
    """A DVC housekeeping command (pull, push, exp save, ...) with its output in the run log."""
    result = run_dvc([command, *args], Path(repo), log_lines(get_run_logger()))
    if result.returncode != 0:
        raise classify(f"dvc {command}", result.lines)
    return result.output


#: pull and push talk to remote storage: worth retrying
sync_command = dvc_command.with_options(**retry_options(2, 10))


def save_experiment(repo: str, name: str) -> None:
    """``dvc exp save`` of the workspace as experiment ``name``, with every untracked file git does not
    ignore (the ``cache: false`` metrics and plots, the .gitignore files DVC writes), included even
    before their first commit -- so the experiment holds the workspace whole."""
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=repo, capture_output=True, text=True
    ).stdout.split()
    dvc_command("exp", ["save", "--name", name, *(a for p in untracked for a in ("--include-untracked", p))], repo)
    _run_logger().info("saved DVC experiment %r: dvc exp show / dvc exp apply %s", name, name)


@task(name="share", cache_policy=NO_CACHE, persist_result=False, **retry_options(2, 5))
def share_results(ws: str, experiment: str | None, git_url: str, remote: bool) -> None:
    """The experiment's git ref to ``git_url`` (a sweep's repository, the nightly checkout's origin), its
    outputs and run-cache to the DVC remote (sweeps and the nightly run share their results this way)."""
    logger = get_run_logger()
    if remote:
        logger.info("pushed %d cache: false output(s) the run-cache refers to", push_uncached_outputs(Path(ws)))
    if experiment:
        args = ["exp", "push", *(["--run-cache"] if remote else ["--no-cache"]), git_url, experiment]
    elif remote:
        args = ["push", "--run-cache"]
    else:
        return
    result = run_dvc(args, Path(ws), log_lines(logger))
    if result.returncode != 0:
        raise classify(f"dvc {' '.join(args[:2])}", result.lines)


@task(name="publish", cache_policy=NO_CACHE, persist_result=False)
def publish(repo: str, results: list[dict[str, Any]], experiment: str | None, host: str) -> str:
    """Artifacts: the stages' outcomes, both models' test metrics, ``dvc metrics diff HEAD``, the report."""
    root = Path(repo)
    diff = run_dvc(["metrics", "diff", "HEAD", "--md"], root, lambda line: None)
    diff_text = diff.output if diff.returncode == 0 else f"_`dvc metrics diff HEAD` failed:_\n\n```\n{diff.output}\n```"
    markdown = render(root, results, diff_text, experiment=experiment, host=host)
    create_markdown_artifact(
        markdown=markdown, key=ARTIFACT_SUMMARY, description="Stages, test metrics and metrics diff of this run"
    )
    report = root / REPORT
    if report.is_file():
        create_link_artifact(
            link=report.as_uri(), link_text=str(REPORT), key=ARTIFACT_REPORT, description=f"The report on {host}"
        )
    return markdown


# -- serialising runs of one workspace ----------------------------------------------------------------


@contextmanager
def workspace_lock(repo: Path) -> Iterator[None]:
    """Make runs of one workspace take turns, from planning to publishing.

    An exclusive ``flock`` on ``.dvc/tmp/prefect-flow.lock``: the OS releases it the moment its holder
    dies, so a killed run never blocks the next, in a deployment's run and in ``python -m
    flows.pipeline`` alike. (A Prefect concurrency limit is kept per deployment, work queue or lease,
    not per checkout, and a dead holder's lease blocks the next run until it lapses.) DVC's own lock
    (``--wait-for-lock``) still guards each ``dvc`` command against ``dvc`` run by hand.
    """
    import fcntl

    logger = _run_logger()
    path = repo / ".dvc" / "tmp" / "prefect-flow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            logger.info("waiting for %s, held by %s", path, handle.read().strip() or "another run")
            fcntl.flock(handle, fcntl.LOCK_EX)
        logger.info("workspace lock %s acquired after %.1f s", path, time.monotonic() - started)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, flow run {current_flow_run.get_name() or '-'}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
            ``params.yaml:alexnet.epochs=3``). The run is then ``dvc exp run -n <experiment_name>``, a
            named DVC experiment, and the params files are put back afterwards.
        experiment_name: name of that experiment (default: this flow run's name).
        require_gpu: fail at once, before any stage, unless a GPU is usable.
        share_cache: pull from the workspace's default DVC remote before (with the run-cache),
            let each stage pull what it can restore, and push after.
        repo_dir: the DVC workspace (default: the working directory the deployment's pull step sets).
        stage_retries: attempts after the first for a transient stage failure.
        retry_delay_seconds: the first retry's delay; each further one doubles it.
        serialize: queue behind other runs of this workspace (a file lock the OS drops with its holder).
    """
    logger = get_run_logger()
    access.check({"repo_dir": repo_dir})
    repo = Path(repo_dir or os.getcwd()).resolve()
    if not (repo / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{repo} holds no dvc.yaml; set repo_dir or the deployment's working directory")
    host = report_host(require_gpu)
    retry = retry_options(stage_retries, retry_delay_seconds)
    experiment = (experiment_name or current_flow_run.get_name() or "prefect-run") if set_params else None
    results: list[dict[str, Any]] = []

    with workspace_lock(repo) if serialize else _nothing():
        order = plan_stages(str(repo), stages)
        originals = {
            p: (repo / p).read_text() if (repo / p).is_file() else None for p in override_files(set_params or [])
        }
        if experiment and set_params:
            if experiment in dvc_command("exp", ["list", "--name-only"], str(repo)).split():
                raise DeterministicFailure(
                    "experiment",
                    [f"error: a DVC experiment named {experiment!r} already exists on this commit; pick another"],
                )
            problems = check_overrides(originals.get, set_params)
            if problems:
                raise DeterministicFailure(f"set_params {set_params}", [f"error: {'; '.join(problems)}"])
        if share_cache:
            sync_command("pull", ["--run-cache", "--allow-missing"], str(repo))
        try:
            if experiment and set_params:
                started = time.monotonic()
                done = exp_run.with_options(**retry)(experiment, set_params, order, str(repo), share_cache)
                seconds = time.monotonic() - started
                results = [{"stage": s, "outcome": o, "seconds": None} for s, o in done.items()]
                logger.info("experiment %s took %.1f s", experiment, seconds)
            else:
                stage_task = run_stage.with_options(**retry)
                for stage in order:
                    results.append(stage_task(stage, str(repo), pull=share_cache))
            publish(str(repo), results, experiment, host["host"])
        finally:
            for path, text in originals.items():  # dvc exp run leaves its params in the workspace
                if text is None:
                    (repo / path).unlink(missing_ok=True)
                else:
                    (repo / path).write_text(text)
            if share_cache and results:
                try:
                    sync_command("push", ["--run-cache"], str(repo))
                    logger.info("pushed %d cache: false output(s)", push_uncached_outputs(repo))
                except Exception as exc:  # results stay local; the run's own outcome stands
                    logger.warning("sharing through the DVC remote failed: %s", exc)
    return {"repo": str(repo), "stages": results, "experiment": experiment, "host": host["host"]}


@contextmanager
def _nothing() -> Iterator[None]:
    yield


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
