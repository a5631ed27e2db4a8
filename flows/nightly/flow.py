"""The nightly deployment: the head of a branch in, the pipeline run, the run recorded as a DVC
experiment and compared with the last one, and someone told when it fails or crashes.

Each run fetches the branch of the project's git remote into a worker-owned clone (shared DVC cache,
outputs linked rather than copied), runs the stages through the pipeline flow's own tasks, saves the
result as experiment ``<deployment>-<UTC time>`` and pushes it (``dvc exp push``) to the git remote
and, when one is configured, its outputs to the DVC remote. The summary artifact compares the run
with the previous recorded run of the same deployment.

A failed run sends the notification block named by ``notify_block``. A crashed run -- its process
killed, its machine gone -- cannot speak for itself: the deployment's trigger (prefect.yaml) starts a
new run with ``restart_of`` set, which reports the crash through the same block, resumes from the
training checkpoints in the workspace, and refuses to go on after ``max_crash_restarts`` crashes in a
row.

Run it once from the repository root against a server (PREFECT_API_URL set)::

    python -m flows.nightly --branch main --notify-block custom-webhook/cifar10-nightly
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import deployment as current_deployment
from prefect.runtime import flow_run as current_flow_run

from flows import access
from flows.nightly import summary as nightly_summary
from flows.nightly import workspace as nws
from flows.pipeline import pipeline, save_experiment, share_results, workspace_lock
from flows.stages import DeterministicFailure, StageFailure, run_dvc
from flows.workspace import WorkspaceError, cache_dir_of, default_remote, git
from tasks.core.paths import EVALUATE_METRICS

ARTIFACT = "cifar10-nightly-summary"
#: Where the workspace clones live by default, inside the deployment's checkout (DVC ignores .dvc/).
WORKSPACES = Path(".dvc/tmp/nightly")
#: DVC links outputs to the shared cache instead of copying them, where the filesystem allows.
LINK_TYPE = "reflink,hardlink,copy"
_STAGE = re.compile(r"stage '([^']+)'")


class CrashLoop(RuntimeError):
    """The deployment crashed more times in a row than it may be restarted."""


@dataclass(frozen=True)
class Crash:
    """A crashed run of the deployment, as the API recorded it."""

    flow_run_id: UUID
    name: str
    stage: str | None  # the stage task that was running when it died
    message: str
    restart_of: str | None  # the crashed run it restarted, if it was itself a restart


# -- telling someone ------------------------------------------------------------------------------


def notify(block: str | None, subject: str, body: str) -> bool:
    """Send through the Prefect notification block ``<block-type-slug>/<name>`` (e.g.
    ``custom-webhook/cifar10-nightly``); a notification that cannot be sent is logged, never raised,
    so it cannot hide the failure it reports."""
    logger = get_run_logger()
    if not block:
        logger.info("no notify_block set; not sending: %s", subject)
        return False
    from prefect.blocks.core import Block

    try:
        if "/" not in block:
            raise ValueError(f"notify_block {block!r} must be '<block-type-slug>/<block-name>'")
        Block.load(block).notify(body=body, subject=subject)
    except Exception as exc:
        logger.warning("could not send the notification through %r: %s", block, exc)
        return False
    logger.info("notified through %r: %s", block, subject)
    return True


def _this_run() -> str:
    name, run_id = current_flow_run.get_name(), current_flow_run.get_id()
    url = current_flow_run.get_flow_run_ui_url()
    return f"flow run {name} ({run_id})" + (f", {url}" if url else "")


def failure_message(deployment: str, exc: BaseException, commit: str | None) -> tuple[str, str]:
    """(subject, body) for a failed run: the flow run, the failed stage and its ``error:`` line."""
    if isinstance(exc, StageFailure):
        what = exc.what
        error = exc.errors[0] if exc.errors else exc.describe()
    else:
        what, error = "the nightly run", f"error: {type(exc).__name__}: {exc}"
    stage = m.group(1) if (m := _STAGE.search(what)) else what
    subject = f"cifar10 {deployment}: {current_flow_run.get_name()} failed in {stage}"
    body = "\n".join(
        [
            f"{_this_run()} failed.",
            f"stage: {stage}",
            error if error.startswith("error:") else f"error: {error}",
            *([f"commit: {commit}"] if commit else []),
            "not retried: a deterministic failure (bad params or data)"
            if isinstance(exc, DeterministicFailure)
            else "after its retries",
        ]
    )
    return subject, body


# -- crashes -----------------------------------------------------------------------------------------


def _flow_run_id(ref: str) -> UUID:
    return UUID(ref.removeprefix("prefect.flow-run."))


def crash_chain(restart_of: str) -> list[Crash]:
    """The crashed run this one restarts and, while each was itself a restart, the ones before it:
    the crashes in a row, newest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    chain: list[Crash] = []
    ref: str | None = restart_of
    with get_client(sync_client=True) as client:
        while ref and len(chain) < 100:
            run = client.read_flow_run(_flow_run_id(ref))
            if not (run.state and run.state.is_crashed()):
                break
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            unfinished = [
                t for t in tasks if t.task_key.startswith("run_stage") and not (t.state and t.state.is_completed())
            ]
            stage = unfinished[-1].name if unfinished else None
            ref = (run.parameters or {}).get("restart_of")
            chain.append(Crash(run.id, run.name, stage, run.state.message or "crashed", ref))
    return chain


def crash_report(chain: list[Crash], limit: int) -> tuple[bool, str, str]:
    """(go on?, subject, body) for a run started because ``chain[0]`` crashed."""
    crash = chain[0]
    where = f"in stage {crash.stage}" if crash.stage else "before its first stage"
    go_on = len(chain) <= limit
    verdict = (
        f"restarted as {current_flow_run.get_name()}: restart {len(chain)} of at most {limit} in a row; "
        "training resumes from its checkpoints"
        if go_on
        else f"not restarted again: {len(chain)} crashes in a row, more than max_crash_restarts={limit}"
    )
    subject = f"cifar10 nightly: {crash.name} crashed {where}" + ("" if go_on else "; giving up")
    body = "\n".join(
        [
            f"flow run {crash.name} ({crash.flow_run_id}) crashed {where}.",
            f"error: {crash.message}",
            *[f"earlier crash: {c.name} ({c.stage or 'no stage'})" for c in chain[1:]],
            verdict,
        ]
    )
    return go_on, subject, body


# -- tasks -------------------------------------------------------------------------------------------


@task(name="checkout", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[10, 30])
def checkout(
    ws: str, git_url: str, branch: str, cache_dir: str | None, dvc_remote: str | None, prefix: str
) -> nws.Sync:
    """The branch head in the workspace clone (see :func:`flows.nightly.workspace.sync`)."""
    logger = get_run_logger()
    synced = nws.sync(
        Path(ws),
        git_url,
        branch,
        cache_dir=cache_dir,
        dvc_remote=dvc_remote,
        link_type=LINK_TYPE,
        recorded_prefix=prefix,
    )
    if synced.stash:
        logger.warning("%s: local changes no recorded run holds were stashed (%s)", ws, synced.stash)
    logger.info(
        "workspace %s %s: %s of %s at %s (was %s); DVC cache %s",
        ws,
        synced.how,
        branch,
        git_url,
        synced.commit[:12],
        (synced.previous or "-")[:12],
        cache_dir or "its own",
    )
    return synced


def _diff(kind: str, old: nws.RecordedRun, new: nws.RecordedRun, ws: Path) -> str:
    """``dvc <kind> diff`` of two recorded runs as a markdown table, its columns named after the runs."""
    result = run_dvc([kind, "diff", old.ref, new.ref, "--md"], ws, lambda line: None)
    if result.returncode != 0:
        return f"_`dvc {kind} diff` failed:_\n\n```\n{result.output}\n```"
    return result.output.replace(old.ref, old.name).replace(new.ref, new.name)


@task(name="publish-nightly", cache_policy=NO_CACHE, persist_result=False)
def publish_nightly(
    ws: str,
    run_name: str,
    branch: str,
    git_url: str,
    synced: nws.Sync,
    previous: nws.RecordedRun | None,
    stages: list[dict[str, Any]],
    experiment: str | None,
    pushed_to: str | None,
    nothing_changed: bool,
) -> str:
    """The summary artifact: this run against the previous recorded run of the deployment."""
    root = Path(ws)
    recorded = next((r for r in nws.recorded_runs(root, experiment or "") if r.name == experiment), None)
    params_diff = metrics_diff = ""
    if previous and recorded and not nothing_changed:
        params_diff = _diff("params", previous, recorded, root)
        metrics_diff = _diff("metrics", previous, recorded, root)
    current = nws.read_at(root, recorded.ref, EVALUATE_METRICS) if recorded else _read(root / EVALUATE_METRICS)
    before = nws.read_at(root, previous.ref, EVALUATE_METRICS) if previous else None
    markdown = nightly_summary.render(
        run_name=run_name,
        branch=branch,
        git_url=git_url,
        commit=synced.commit,
        subject=git(["log", "-1", "--format=%s", synced.commit], root).stdout.strip(),
        workspace=ws,
        how=synced.how,
        stash=synced.stash,
        previous=previous,
        commits=nws.commits_between(root, previous.baseline, synced.commit) if previous else [],
        stages=stages,
        experiment=experiment,
        pushed_to=pushed_to,
        nothing_changed=nothing_changed,
        accuracy=nightly_summary.accuracy_rows(before, current),
        params_diff=params_diff,
        metrics_diff=metrics_diff,
    )
    create_markdown_artifact(markdown=markdown, key=ARTIFACT, description=f"Nightly run {run_name} against the last")
    return markdown


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


# -- the flow ----------------------------------------------------------------------------------------


@flow(name="cifar10-nightly", persist_result=False)
def nightly(
    branch: str = "main",
    git_url: str | None = None,
    workspace: str | None = None,
    cache_dir: str | None = None,
    dvc_remote: str | None = None,
    require_gpu: bool = False,
    notify_block: str | None = None,
    max_crash_restarts: int = 2,
    restart_of: str | None = None,
    stage_retries: int = 2,
    retry_delay_seconds: float = 30.0,
) -> dict[str, Any]:
    """Run the pipeline on the head of ``branch`` and record the run.

    Args:
        branch: the branch of the project's git remote to run.
        git_url: that remote (default: ``origin`` of the checkout the deployment runs in).
        workspace: the worker-owned clone (default ``.dvc/tmp/nightly/<deployment>`` of that checkout);
            it persists between runs, so training checkpoints survive a crash.
        cache_dir: the DVC cache the clone uses (default: the checkout's, shared by every run on the host).
        dvc_remote: URL of the DVC remote to pull from and push to (default: the one the committed
            ``.dvc/config`` names; with none, only the experiment's git ref is pushed).
        require_gpu: fail at once, before any stage, unless a GPU is usable.
        notify_block: the Prefect notification block ``<block-type-slug>/<name>`` told about failures
            and crashes, e.g. ``custom-webhook/cifar10-nightly``.
        max_crash_restarts: how many times in a row a crashed run is restarted (by the deployment's trigger).
        restart_of: set by that trigger: the crashed flow run this run restarts.
        stage_retries, retry_delay_seconds: as in the pipeline flow, for transient stage failures.
    """
    logger = get_run_logger()
    access.check({"workspace": workspace, "cache_dir": cache_dir}, {"git_url": git_url})
    checkout_dir = Path.cwd()
    deployment = current_deployment.name or "nightly"
    prefix = f"{deployment}-"
    run_name = current_flow_run.get_name() or "nightly"

    if restart_of:
        chain = crash_chain(restart_of)
        if chain:
            go_on, subject, body = crash_report(chain, max_crash_restarts)
            (logger.info if go_on else logger.error)("%s\n%s", subject, body)
            notify(notify_block, subject, body)
            if not go_on:
                raise CrashLoop(body.splitlines()[-1])

    commit: str | None = None
    try:
        url = git_url or git(["remote", "get-url", "origin"], checkout_dir).stdout.strip()
        ws = Path(workspace).expanduser().resolve() if workspace else checkout_dir / WORKSPACES / deployment
        cache = cache_dir or cache_dir_of(checkout_dir)
        synced = checkout(str(ws), url, branch, cache, dvc_remote, prefix)
        commit = f"{synced.commit[:12]} on {branch}"
        remote = bool(dvc_remote or default_remote(ws)[0])
        with workspace_lock(ws):
            runs = nws.recorded_runs(ws, prefix)
            previous = runs[-1] if runs else None
            result = pipeline.fn(
                repo_dir=str(ws),
                require_gpu=require_gpu,
                share_cache=remote,
                stage_retries=stage_retries,
                retry_delay_seconds=retry_delay_seconds,
                serialize=False,
            )
            stages = result["stages"]
            ran = [r["stage"] for r in stages if r["outcome"] == "ran"]
            nothing_changed = previous is not None and previous.baseline == synced.commit and not ran
            experiment = pushed_to = None
            if nothing_changed:
                logger.info("nothing changed since %s (same commit, no stage ran): nothing recorded", previous.name)
            else:
                experiment = f"{prefix}{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
                save_experiment(str(ws), experiment)
                share_results(str(ws), experiment, "origin", remote)
                pushed_to = url + (" and the DVC remote" if remote else "")
            publish_nightly(
                str(ws), run_name, branch, url, synced, previous, stages, experiment, pushed_to, nothing_changed
            )
    except Exception as exc:
        subject, body = failure_message(deployment, exc, commit)
        logger.error("%s\n%s", subject, body)
        notify(notify_block, subject, body)
        if isinstance(exc, WorkspaceError):
            raise DeterministicFailure("checkout", [f"error: {exc}"]) from None
        raise
    return {"workspace": str(ws), "commit": synced.commit, "experiment": experiment, "stages": stages}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.nightly", description="Run the nightly CIFAR-10 flow once, here."
    )
    parser.add_argument("--branch", default="main")
    parser.add_argument("--git-url")
    parser.add_argument("--workspace")
    parser.add_argument("--notify-block")
    parser.add_argument("--require-gpu", action="store_true")
    args = parser.parse_args(argv)
    nightly(
        branch=args.branch,
        git_url=args.git_url,
        workspace=args.workspace,
        notify_block=args.notify_block,
        require_gpu=args.require_gpu,
    )


if __name__ == "__main__":
    main()
