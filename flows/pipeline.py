"""The Prefect flow that runs the DVC pipeline (docs/orchestration.md): one task per stage in DVC's
order, each ``dvc repro --single-item <stage>`` (DVC decides what reruns or comes from the run-cache;
Prefect schedules, retries and records, caching nothing), or with ``set_params`` one ``dvc exp run``::

    python -m flows.pipeline --stages validate
    python -m flows.pipeline -S data.limit_train=5000 --experiment-name small
"""

from __future__ import annotations

import argparse
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import chdir, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run
from prefect.runtime import task_run as current_task_run
from prefect.tasks import exponential_backoff

from flows import access, host, registry
from flows.cli import run_flow
from flows.stages import DeterministicFailure, outcomes, push_uncached_outputs
from flows.stages import markdown_diff, read_lock, retry_unless_deterministic, run_dvc, stage_order, up_to_date
from flows.summary import REPORT, pipeline_summary
from tasks.core.errors import ParamsError
from tasks.core.params import check_sections, read_params
from tasks.core.paths import EVALUATE_METRICS, MODELS, PARAMS
from tools.overrides import applied, check_overrides, override_files

ARTIFACT_SUMMARY = "cifar10-pipeline-summary"
ARTIFACT_REPORT = "cifar10-report"
QUIET = {"cache_policy": NO_CACHE, "persist_result": False}
#: Every task that runs ``dvc`` retries only what may pass (:func:`flows.stages.classify`).
DVC_TASK = {**QUIET, "retry_condition_fn": retry_unless_deterministic}


def retry_options(retries: int, first_delay: float) -> dict[str, Any]:
    """``Task.with_options`` arguments: exponential backoff from ``first_delay``, jittered so that the
    retries of many runs do not align."""
    delays = exponential_backoff(first_delay)
    return {"retries": max(retries, 0), "retry_delay_seconds": delays, "retry_jitter_factor": 0.2}


@task(name="host", **QUIET)
def report_host(require_gpu: bool) -> dict[str, Any]:
    """Log where this run executes and what accelerators it has; fail at once for ``require_gpu`` without one."""
    logger = get_run_logger()
    info = host.describe(require_gpu)  # Prefect logs the GPUUnavailable that fails the task
    logger.info(
        "host %s: %s, Python %s, %s CPUs, %s GiB RAM; nvidia-smi: %s%s",
        *(info[k] for k in ("host", "platform", "python", "cpu_count", "memory_gib", "nvidia_smi")),
        "".join(f"\n  {g}" for g in info["nvidia_gpus"]),
    )
    backend = info["backend"]  # what the probe saw, why it failed, or why it was not asked
    seen = backend.get("backend") or backend.get("error") or backend.get("skipped")
    logger.info("keras backend: %s; accelerators: %s", seen, ", ".join(info["gpus"]) or "none (CPU only)")
    return info


@task(name="plan", **QUIET)
def plan_stages(repo: str, stages: list[str] | None) -> list[str]:
    """The stages to run, upstream first, as ``dvc dag`` draws the pipeline."""
    try:  # DVC reads it to draw the graph, and would call a broken file a failure to retry
        if (Path(repo) / PARAMS).is_file():
            read_params(Path(repo) / PARAMS)
    except ParamsError as exc:
        raise DeterministicFailure("params", [f"error: {exc}"]) from None
    order = stage_order(Path(repo), stages)
    get_run_logger().info("stages to run, in order: %s", " -> ".join(order))
    return order


@task(name="check-params", **QUIET)
def check_params(repo: str, order: list[str], set_params: list[str]) -> None:
    """The params sections the planned stages read (``dvc.api.params_show``), ``set_params`` applied, checked
    as each stage checks its own when it starts: a typo fails the run here, before DVC removes the outputs
    of a stage it is about to rerun."""
    import dvc.api

    root = Path(repo)
    try:
        with chdir(root):  # dvc.api reads params files relative to the working directory
            sections = list(dvc.api.params_show(stages=order))
        doc = read_params(root / PARAMS) if (root / PARAMS).is_file() else {}  # a project may have none
        check_sections(applied(doc or {}, set_params), sections, PARAMS)
    except ParamsError as exc:
        raise DeterministicFailure("params", [f"error: {exc}"]) from None
    except Exception as exc:  # an unreadable file: each stage reports its own problem when it starts
        get_run_logger().warning("params not checked before the stages: %s", exc)


@task(name="stage", task_run_name="{stage}", **DVC_TASK)
def run_stage(stage: str, repo: str, pull: bool = False, unchanged: bool = False) -> dict[str, Any]:
    """``dvc repro --single-item <stage>``: DVC skips it when nothing changed, or restores it from the
    run-cache; its output goes to the run log line by line. ``unchanged``: ``dvc status`` found it and
    everything upstream up to date (:func:`flows.stages.up_to_date`), so it is skipped without DVC."""
    logger = get_run_logger()
    started = time.monotonic()
    if unchanged:
        outcome, how = "skipped", " (dvc status: it and its upstream unchanged)"
    else:
        before, pulling = read_lock(Path(repo)), ["--pull"] if pull else []
        result = run_dvc(["repro", "--single-item", stage, *pulling], Path(repo), logger, what=f"stage '{stage}'")
        outcome, how = outcomes(before, read_lock(Path(repo)), [stage], result.lines)[stage], ""
    seconds = time.monotonic() - started
    logger.info("stage '%s' %s in %.1f s%s", stage, outcome, seconds, how)
    return {"stage": stage, "outcome": outcome, "seconds": seconds, "attempt": current_task_run.get_run_count()}


@task(name="dvc-exp-run", task_run_name="dvc exp run {experiment}", **DVC_TASK)
def exp_run(experiment: str, overrides: list[str], stages: list[str], repo: str, pull: bool) -> dict[str, str]:
    """``dvc exp run -n <experiment> -S ... <stages>`` in the workspace; what it did to each stage."""
    logger, root = get_run_logger(), Path(repo)
    before = read_lock(root)
    sets = [f"--set-param={o}" for o in overrides]
    args = ["exp", "run", *(["--pull"] if pull else []), "-n", experiment, *sets, *stages]
    result = run_dvc(args, root, logger, what=f"dvc exp run {experiment}")
    done = outcomes(before, read_lock(root), stages, result.lines)
    logger.info("experiment %s: %s", experiment, ", ".join(f"{s} {o}" for s, o in done.items()) or "nothing to do")
    return done


@task(name="dvc", task_run_name="dvc {command}", **DVC_TASK)
def dvc_command(command: str, args: list[str], repo: str) -> str:
    """A DVC housekeeping command (pull, exp save, ...) with its output in the run log."""
    return run_dvc([command, *args], Path(repo), get_run_logger(), what=f"dvc {command}").output


def save_experiment(repo: str, name: str) -> None:
    """``dvc exp save`` of the workspace as experiment ``name``, with every untracked file git does not
    ignore (``cache: false`` metrics and plots, the .gitignore files DVC writes), so it holds the
    workspace whole."""
    untracked = subprocess.run(
        ["git", "ls-files", "--others", "--exclude-standard"], cwd=repo, capture_output=True, text=True
    ).stdout
    dvc_command(
        "exp", ["save", "--name", name, *(a for p in untracked.split() for a in ("--include-untracked", p))], repo
    )


@task(name="share", **QUIET, **retry_options(2, 5))
def share_results(ws: str, experiment: str | None, git_url: str, remote: bool) -> None:
    """The experiment's git ref to ``git_url``; with a DVC ``remote``, the outputs and run-cache too, and
    the ``cache: false`` outputs the run-cache refers to (sweeps, the nightly run and ``share_cache``
    share their results this way)."""
    logger = get_run_logger()
    if remote:
        logger.info("pushed %d cache: false output(s) the run-cache refers to", push_uncached_outputs(Path(ws)))
    if experiment:
        args = ["exp", "push", "--run-cache" if remote else "--no-cache", git_url, experiment]
    elif remote:
        args = ["push", "--run-cache"]
    else:
        return
    run_dvc(args, Path(ws), logger, what=f"dvc {' '.join(args[:2])}")


def registry_view(root: Path) -> dict[str, Any]:
    """The run's models against the registry's prod versions, and what ``HEAD`` is registered as; a registry
    that cannot be read is reported in the summary, never fails the run."""
    evaluate = (root / EVALUATE_METRICS).read_text() if (root / EVALUATE_METRICS).is_file() else None
    standings, head, problem = registry.view(root, evaluate, MODELS)
    if problem:
        get_run_logger().warning("model registry: %s", problem)
    return {"standings": standings, "registered": head, "registry_problem": problem}


@task(name="publish", **QUIET)
def publish(repo: str, results: list[dict[str, Any]], experiment: str | None, host: str) -> str:
    """Artifacts: the stages' outcomes, both models' test metrics, ``dvc metrics diff HEAD``, the report."""
    root = Path(repo)
    diff = markdown_diff(["metrics", "diff", "HEAD"], root)
    markdown = pipeline_summary(root, results, diff, experiment=experiment, host=host, **registry_view(root))
    create_markdown_artifact(
        markdown=markdown, key=ARTIFACT_SUMMARY, description="Stages, test metrics and metrics diff of this run"
    )
    if (root / REPORT).is_file():
        create_link_artifact(
            link=(root / REPORT).as_uri(),
            link_text=str(REPORT),
            key=ARTIFACT_REPORT,
            description=f"The report on {host}",
        )
    return markdown


@contextmanager
def workspace_lock(repo: Path, logger: Any) -> Iterator[None]:
    """Make runs of one workspace take turns, from planning to publishing: an exclusive ``flock`` on
    ``.dvc/tmp/prefect-flow.lock``, which the OS releases the moment its holder dies, so a killed run
    never blocks the next. (A Prefect concurrency limit is kept per deployment or work queue, not per
    checkout, and a dead holder's lease blocks until it lapses.)"""
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
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, flow run {current_flow_run.get_name() or '-'}\n")
        handle.flush()
        yield  # closing the file releases the lock


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
    """Run the DVC pipeline stage by stage, or with ``set_params`` as one named DVC experiment; the
    parameters are described in docs/orchestration.md."""
    logger = get_run_logger()
    access.check({"repo_dir": repo_dir})
    repo = Path(repo_dir or os.getcwd()).resolve()
    if not (repo / "dvc.yaml").is_file():
        problem = f"{repo} holds no dvc.yaml; set repo_dir or the deployment's working directory"
        raise DeterministicFailure("pipeline", [f"error: {problem}"])
    where = report_host(require_gpu)["host"]
    retry = retry_options(stage_retries, retry_delay_seconds)
    experiment = (experiment_name or current_flow_run.get_name() or "prefect-run") if set_params else None
    results: list[dict[str, Any]] = []
    shared = False

    with workspace_lock(repo, logger) if serialize else nullcontext():
        order = plan_stages(str(repo), stages)
        files = override_files(set_params or [])
        originals = {p: (repo / p).read_text() if (repo / p).is_file() else None for p in files}
        if experiment:
            if experiment in dvc_command("exp", ["list", "--name-only"], str(repo)).split():
                problem = f"a DVC experiment named {experiment!r} already exists on this commit; pick another"
                raise DeterministicFailure("experiment", [f"error: {problem}"])
            if problems := check_overrides(originals.get, set_params):
                raise DeterministicFailure(f"set_params {set_params}", [f"error: {'; '.join(problems)}"])
        check_params(str(repo), order, set_params or [])
        if share_cache:
            dvc_command.with_options(**retry_options(2, 10))("pull", ["--run-cache", "--allow-missing"], str(repo))
        try:
            if experiment:
                done = exp_run.with_options(**retry)(experiment, set_params, order, str(repo), share_cache)
                results = [{"stage": s, "outcome": o, "seconds": None} for s, o in done.items()]
            else:
                unchanged = up_to_date(repo, order)
                for stage in order:  # appended one by one: what finished is shared even after a failure
                    stage_run = run_stage.with_options(**retry)
                    results.append(stage_run(stage, str(repo), pull=share_cache, unchanged=stage in unchanged))
            publish(str(repo), results, experiment, where)
        finally:
            for path, text in originals.items():  # dvc exp run leaves its params in the workspace
                if text is None:
                    (repo / path).unlink(missing_ok=True)
                else:
                    (repo / path).write_text(text)
            if share_cache and results:
                try:
                    share_results(str(repo), None, "", True)
                    shared = True
                except Exception as exc:  # results stay local; the run's own outcome stands
                    logger.warning("sharing through the DVC remote failed: %s", exc)
    return {"repo": str(repo), "stages": results, "experiment": experiment, "host": where, "shared": shared}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Run the CIFAR-10 DVC pipeline as a Prefect flow (parameters: docs/orchestration.md).",
    )
    parser.add_argument("--stages", nargs="*", help="stages to run with their upstream (default: all)")
    parser.add_argument("-S", "--set-param", action="append", dest="set_params", help="as in dvc exp run -S")
    parser.add_argument("--experiment-name", help="the DVC experiment's name with -S (default: the flow run's)")
    parser.add_argument("--require-gpu", action="store_true", help="fail at once unless a GPU is usable")
    parser.add_argument(
        "--share-cache", action="store_true", help="pull from the default DVC remote before, push after"
    )
    parser.add_argument("--repo-dir", help="the DVC workspace (default: the working directory)")
    parser.add_argument(
        "--no-serialize", dest="serialize", action="store_false", help="do not queue behind other runs of the workspace"
    )
    args = vars(parser.parse_args(argv))
    return run_flow(pipeline, **{**args, "stages": args["stages"] or None})[1]


if __name__ == "__main__":
    sys.exit(main())
