"""The nightly deployment (docs/orchestration.md): a branch head in a worker-owned clone, run by the
pipeline flow's tasks, recorded as DVC experiment ``<deployment>-<UTC time>``, pushed, compared with
the last and with each model's ``prod`` version in the registry (``promote_staging``: a run that beats
it is registered and assigned ``staging``). The deployment's trigger restarts a crashed run with
``restart_of``; the restart logs the crash and resumes (up to ``max_crash_restarts`` in a row). Failures
and crashes are announced by the project's alert automation (:mod:`flows.alerts`)::

    python -m flows.nightly --branch main
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run

from flows import access, registry
from flows.cli import run_flow
from flows.pipeline import QUIET, pipeline, save_experiment, share_results, workspace_lock
from flows.stages import DeterministicFailure, markdown_diff
from flows.summary import accuracy_rows, percent, render
from flows.workspace import (
    RecordedRun,
    Sync,
    WorkspaceError,
    cache_dir_of,
    default_remote,
    git,
    read_at,
    recorded_runs,
    sync,
)
from tasks.core.paths import EVALUATE_METRICS, MODELS

ARTIFACT = "cifar10-nightly-summary"
#: Where the workspace clones live by default, inside the deployment's checkout (DVC ignores .dvc/).
WORKSPACES = Path(".dvc/tmp/nightly")
#: DVC links outputs to the shared cache instead of copying them, where the filesystem allows.
LINK_TYPE = "reflink,hardlink,copy"


class CrashLoop(RuntimeError):
    """The deployment crashed more times in a row than it may be restarted."""


@dataclass(frozen=True)
class Crash:
    """A crashed run of the deployment, as the API recorded it."""

    flow_run_id: UUID
    name: str
    stage: str | None  # the stage task that was running when it died
    message: str


def crash_chain(restart_of: str) -> list[Crash]:
    """The crashed run this one restarts and, while each was itself a restart, the ones before it:
    the crashes in a row, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    chain: list[Crash] = []
    ref: str | None = restart_of
    with get_client(sync_client=True) as client:
        while ref and len(chain) < 100:
            run = client.read_flow_run(UUID(ref.removeprefix("prefect.flow-run.")))
            if not (run.state and run.state.is_crashed()):
                break
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            unfinished = [
                t.name for t in tasks if t.task_key.startswith("run_stage") and not (t.state and t.state.is_completed())
            ]
            chain.append(Crash(run.id, run.name, (unfinished or [None])[-1], run.state.message or "crashed"))
            ref = (run.parameters or {}).get("restart_of")
    return chain


def crash_report(chain: list[Crash], limit: int) -> tuple[bool, str]:
    """(go on?, what to log) for a run started because ``chain[0]`` crashed."""
    crash, go_on = chain[0], len(chain) <= limit
    where = f"in stage {crash.stage}" if crash.stage else "before its first stage"
    verdict = (
        f"restarted as {current_flow_run.get_name()}: restart {len(chain)} of at most {limit} in a row; "
        "training resumes from its checkpoints"
        if go_on
        else f"not restarted again: {len(chain)} crashes in a row, more than max_crash_restarts={limit}"
    )
    lines = [
        f"flow run {crash.name} ({crash.flow_run_id}) crashed {where}: {crash.message}",
        *(f"earlier crash: {c.name} ({c.stage or 'no stage'})" for c in chain[1:]),
        verdict,
    ]
    return go_on, "\n".join(lines)


@task(name="checkout", **QUIET, retries=2, retry_delay_seconds=[10, 30])
def checkout(ws: str, git_url: str, branch: str, cache_dir: str | None, dvc_remote: str | None, prefix: str) -> Sync:
    """The branch head in the workspace clone (:func:`flows.workspace.sync`)."""
    logger = get_run_logger()
    synced = sync(Path(ws), git_url, branch, cache_dir, dvc_remote, LINK_TYPE, prefix)
    if synced.stash:
        logger.warning("%s: local changes no recorded run holds were stashed (%s)", ws, synced.stash)
    was = (synced.previous or "-")[:12]
    logger.info("workspace %s %s: %s of %s at %s (was %s)", ws, synced.how, branch, git_url, synced.commit[:12], was)
    return synced


def _diff(kind: str, old: RecordedRun, new: RecordedRun, ws: Path) -> str:
    """``dvc <kind> diff`` of two recorded runs as a markdown table, its columns named after the runs."""
    return markdown_diff([kind, "diff", old.ref, new.ref], ws).replace(old.ref, old.name).replace(new.ref, new.name)


def weigh_against_prod(
    root: Path, evaluate: str | None, recorded: RecordedRun | None, promote: bool
) -> tuple[list[registry.Standing], dict[str, str], str | None]:
    """Each model of this run against its prod version; with ``promote``, the recorded run registered and
    staged for each model it beats prod on (``{model: "v0.2.0 (staging)"}``). A registry that cannot be
    read or written is reported in the summary, never fails the recorded run."""
    promoted: dict[str, str] = {}
    try:
        registry.refresh(root)
    except WorkspaceError as exc:
        standings, problem = [], str(exc)
    else:
        standings, _, problem = registry.view(root, evaluate, MODELS)
    try:
        if promote and recorded and not problem:
            commit = git(["rev-parse", recorded.ref], root).stdout.strip()
            for s in (s for s in standings if s.beats_prod):
                promoted[s.model] = f"{registry.promote_to_staging(root, s.model, commit)} ({registry.STAGING})"
    except (registry.RegistryError, WorkspaceError) as exc:
        standings, problem = [], str(exc)
    if problem:
        get_run_logger().warning("model registry: %s", problem)
    return standings, promoted, problem


@task(name="publish-nightly", **QUIET)
def publish_nightly(
    ws: str, previous: RecordedRun | None, experiment: str | None, nothing_changed: bool, **context: Any
) -> str:
    """The summary artifact: this run against the previous recorded run of the deployment and against the
    registry's prod versions; with ``promote_staging``, a recorded run that beats prod is registered and staged."""
    root, synced = Path(ws), context["synced"]
    recorded = next((r for r in recorded_runs(root, experiment) if r.name == experiment), None) if experiment else None
    compare = previous and recorded and not nothing_changed
    evaluate = (root / EVALUATE_METRICS).read_text() if (root / EVALUATE_METRICS).is_file() else None
    standings, promoted, problem = weigh_against_prod(root, evaluate, recorded, context["promote_staging"])
    log = ["log", "--max-count=20", "--format=%h %s", f"{previous.baseline}..{synced.commit}"] if previous else None
    markdown = render(
        "nightly_summary.md.j2",
        **context,
        workspace=ws,
        commit=synced.commit,
        how=synced.how,
        stash=synced.stash,
        subject=git(["log", "-1", "--format=%s", synced.commit], root).stdout.strip(),
        previous=previous,
        commits=git(log, root, check=False).stdout.splitlines() if log else [],
        experiment=experiment,
        nothing_changed=nothing_changed,
        accuracy=accuracy_rows(read_at(root, previous.ref, EVALUATE_METRICS) if previous else None, evaluate),
        params_diff=_diff("params", previous, recorded, root) if compare else "",
        metrics_diff=_diff("metrics", previous, recorded, root) if compare else "",
        standings=standings,
        promoted=promoted,
        registry_problem=problem,
        pct=percent,
    )
    create_markdown_artifact(
        markdown=markdown, key=ARTIFACT, description=f"Nightly run {context['run_name']} against the last"
    )
    return markdown


@flow(name="cifar10-nightly", persist_result=False)
def nightly(
    branch: str = "main",
    git_url: str | None = None,
    workspace: str | None = None,
    cache_dir: str | None = None,
    dvc_remote: str | None = None,
    require_gpu: bool = False,
    max_crash_restarts: int = 2,
    restart_of: str | None = None,
    stage_retries: int = 2,
    retry_delay_seconds: float = 30.0,
    promote_staging: bool = False,
) -> dict[str, Any]:
    """Run the pipeline on the head of ``branch`` and record the run; the parameters are described in
    docs/orchestration.md."""
    logger = get_run_logger()
    access.check({"workspace": workspace, "cache_dir": cache_dir}, {"git_url": git_url})
    here, deployment = Path.cwd(), current_deployment.name or "nightly"
    prefix, run_name = f"{deployment}-", current_flow_run.get_name() or "nightly"
    if restart_of and (chain := crash_chain(restart_of)):
        go_on, report = crash_report(chain, max_crash_restarts)
        (logger.info if go_on else logger.error)("%s", report)
        if not go_on:
            raise CrashLoop(report.splitlines()[-1])

    try:
        url = git_url or git(["remote", "get-url", "origin"], here).stdout.strip()
        ws = Path(workspace).expanduser().resolve() if workspace else here / WORKSPACES / deployment
        synced = checkout(str(ws), url, branch, cache_dir or cache_dir_of(here), dvc_remote, prefix)
        remote = bool(dvc_remote or default_remote(ws)[0])
        if not remote:
            logger.warning("no DVC remote: a recorded run's git ref is pushed, its outputs stay in this host's cache")
        with workspace_lock(ws, logger):
            previous = (recorded_runs(ws, prefix) or [None])[-1]
            retry = {"stage_retries": stage_retries, "retry_delay_seconds": retry_delay_seconds}
            run = pipeline.fn(repo_dir=str(ws), require_gpu=require_gpu, share_cache=remote, serialize=False, **retry)
            stages, ran = run["stages"], any(r["outcome"] == "ran" for r in run["stages"])
            nothing_changed = previous is not None and previous.baseline == synced.commit and not ran
            experiment = pushed_to = None
            if nothing_changed:
                logger.info("nothing changed since %s (same commit, no stage ran): nothing recorded", previous.name)
            else:
                experiment = f"{prefix}{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
                save_experiment(str(ws), experiment)
                # The pipeline has pushed the outputs and run-cache the experiment refers to: only its git ref goes.
                share_results(str(ws), experiment, "origin", remote and not run["shared"])
                pushed_to = f"{url} and the DVC remote" if remote else url
            context = dict(
                run_name=run_name,
                branch=branch,
                git_url=url,
                synced=synced,
                stages=stages,
                pushed_to=pushed_to,
                dvc_remote=remote,
                promote_staging=promote_staging,
            )
            publish_nightly(str(ws), previous, experiment, nothing_changed, **context)
    except WorkspaceError as exc:
        raise DeterministicFailure("checkout", [f"error: {exc}"]) from None
    return {"workspace": str(ws), "commit": synced.commit, "experiment": experiment, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.nightly", description="Run the nightly CIFAR-10 flow once, here."
    )
    parser.add_argument("--branch", default="main", help="the branch whose head runs (default: main)")
    parser.add_argument("--git-url", help="the git remote to fetch it from (default: this checkout's origin)")
    parser.add_argument("--workspace", help="the clone it runs in (default: .dvc/tmp/nightly/nightly)")
    parser.add_argument("--require-gpu", action="store_true", help="fail at once unless a GPU is usable")
    parser.add_argument("--promote-staging", action="store_true", help="stage a run that beats prod")
    return run_flow(nightly, **vars(parser.parse_args(argv)))[1]


if __name__ == "__main__":
    sys.exit(main())
