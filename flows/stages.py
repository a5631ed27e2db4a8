"""DVC plumbing for the Prefect flows: the stage graph, running a ``dvc`` command with its output
streamed line by line, reading what it did to each stage, applying ``-S`` overrides, and telling
a transient failure from a deterministic one (and so whether a task retries).

Nothing here imports Prefect, so it can be tested and reused on its own; the pipeline, sweep and
nightly flows all take these from here rather than keep copies that could drift apart. DVC stays the judge of
what reruns: every stage goes through ``dvc repro --single-item``, which skips an unchanged stage
(or restores it from the run-cache) and keeps ``dvc.lock`` the record of what ran.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Exit status of a stage that failed for a reason its message explains (tasks/core/cli.py): bad input,
#: bad params, failed validation. Another attempt would fail the same way.
EXIT_STAGE_ERROR = 2
#: ``error:`` messages that exit 2 but name a condition another attempt may not meet: the
#: download gave up after its own retries (server down, network gone), or the disk was full
#: (tasks/core/errors.py, DISK_FULL: space may be freed meanwhile), so a later attempt can win.
#: A damaged checkpoint needs no retry: the stage moves it aside and starts afresh by itself.
TRANSIENT_ERROR_MARKERS = ("giving up after", "error: disk full")
#: How many output lines a failure keeps for its message.
TAIL_LINES = 40

_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
#: The lines ``dvc repro`` and ``dvc exp run`` print about each stage, and what each means.
_OUTCOMES = (
    (re.compile(r"^Running stage '(?P<stage>[^']+)'"), "ran"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run"), "restored"),
    (re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping"), "skipped"),
)


class PlanError(ValueError):
    """The requested stages are not in the pipeline."""


class OverrideError(ValueError):
    """DVC refused a ``-S`` override (an unknown key, bad syntax); the message is DVC's, with its cause."""

    def __init__(self, message: str, path: str, items: list[str]):
        self.path, self.items = path, items
        super().__init__(message)


class StageFailure(RuntimeError):
    """A ``dvc`` command failed; ``errors`` holds the stage's own ``error:`` lines."""

    retryable = True

    def __init__(
        self,
        what: str,
        errors: list[str],
        *,
        returncode: int | None = None,
        exit_code: int | None = None,
        tail: list[str] | None = None,
    ):
        self.what, self.errors, self.returncode, self.exit_code = what, errors, returncode, exit_code
        self.tail = tail or []
        super().__init__(self.describe())

    def describe(self) -> str:
        how = []
        if self.exit_code is not None:
            how.append(f"the stage exited with {self.exit_code}")
        elif self.returncode is not None:
            how.append(f"dvc exited with {self.returncode}")
        how.append("may be transient" if self.retryable else "not retried")
        detail = "; ".join(self.errors) or next((ln for ln in reversed(self.tail) if ln.startswith("ERROR")), "")
        return f"{self.what} failed ({'; '.join(how)})" + (f": {detail}" if detail else "")


class DeterministicFailure(StageFailure):
    """Bad input, bad params or failed validation: retrying cannot help."""

    retryable = False


class TransientFailure(StageFailure):
    """A crash, a lost connection, a held lock: another attempt may succeed."""


@dataclass
class CommandResult:
    returncode: int
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def classify(what: str, returncode: int, lines: Sequence[str]) -> StageFailure:
    """The failure a non-zero ``dvc`` run stands for: deterministic only when the stage said so.

    A stage reports bad input by exiting 2 with a line ``error: ...`` (tasks/core/cli.py); DVC then
    prints ``failed to run: <cmd>, exited with 2``. Everything else -- a signal, a traceback, any
    other exit status (75, sysexits' EX_TEMPFAIL, is the one to use for "try again"), a DVC lock
    held too long, an ``error:`` naming exhausted network retries -- may pass on its own.
    """
    errors = error_messages(lines)
    codes = [int(m.group(1)) for ln in lines if (m := _STAGE_EXIT.search(ln))]
    exit_code = codes[-1] if codes else None
    tail = list(lines)[-TAIL_LINES:]
    transient_message = any(marker in e for e in errors for marker in TRANSIENT_ERROR_MARKERS)
    if exit_code == EXIT_STAGE_ERROR and errors and not transient_message:
        return DeterministicFailure(what, errors, returncode=returncode, exit_code=exit_code, tail=tail)
    return TransientFailure(what, errors, returncode=returncode, exit_code=exit_code, tail=tail)


def error_messages(lines: Sequence[str], limit: int = 1500) -> list[str]:
    """The stages' ``error: ...`` lines, each with the indented lines that continue it
    (validate lists each failed expectation that way)."""
    found: list[str] = []
    in_block = False
    for line in lines:
        if line.startswith("error: "):
            found.append(line)
            in_block = True
        elif in_block and line[:1].isspace():
            found[-1] = f"{found[-1]} {line.strip()}"
        else:
            in_block = False
    return [e if len(e) <= limit else e[:limit] + " ..." for e in found]


def stage_outcomes(lines: Iterable[str]) -> dict[str, str]:
    """What DVC did with each stage it names in ``lines``: ``ran``, ``restored`` (run-cache) or
    ``skipped`` (unchanged), in the order it got to them. DVC prints one such line a stage; should
    there be more, the first counts."""
    found: dict[str, str] = {}
    for line in lines:
        for pattern, name in _OUTCOMES:
            if m := pattern.match(line):
                found.setdefault(m.group("stage"), name)
    return found


def outcome(stage: str, lines: Iterable[str]) -> str:
    """What ``dvc repro --single-item <stage>`` did: ``ran``, ``restored`` (run-cache) or ``skipped``."""
    return stage_outcomes(lines).get(stage, "skipped")


def retry_unless_deterministic(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn`` for every task that runs ``dvc``: retry anything but a
    failure the stage itself called final (:class:`DeterministicFailure`). Only the state is read,
    so Prefect need not be imported here."""
    exc = state.result(raise_on_failure=False) if state is not None else None
    return not isinstance(exc, DeterministicFailure)


def log_lines(logger: Any) -> Callable[[str], None]:
    """``run_dvc``'s ``log`` for a logger: the stages' ``error:`` lines and DVC's ``ERROR`` lines at
    error level, everything else at info."""

    def log(line: str) -> None:
        (logger.error if line.startswith(("error: ", "ERROR")) else logger.info)(line)

    return log


def retry_options(retries: int, first_delay: float) -> dict[str, Any]:
    """``Task.with_options`` arguments for ``retries`` attempts after the first, the first after
    ``first_delay`` seconds and each further one after twice the one before."""
    retries = max(retries, 0)
    return {"retries": retries, "retry_delay_seconds": [first_delay * 2**i for i in range(retries)] or 0}


# -- params overrides (-S) -------------------------------------------------------------------------


def override_files(overrides: Sequence[str]) -> list[str]:
    """The params files (relative paths) that ``-S`` ``overrides`` change: ``params.yaml`` unless an
    override names another (``path/params.yaml:key=value``)."""
    from dvc.utils.cli_parse import to_path_overrides

    return list(to_path_overrides(list(overrides)))


def apply_overrides(
    root: Path, overrides: Sequence[str], log: Callable[[str], None] | None = None
) -> dict[str, str | None]:
    """Apply ``-S`` overrides to the params files under ``root`` exactly as ``dvc exp run -S`` does
    (same syntax, same code); return the original text of each file touched (None where it did not
    exist), so a caller can put it back with :func:`restore_files`.

    An override DVC refuses raises :class:`OverrideError` with DVC's message, after the files
    already changed are put back. ``log`` hears ``<file>: <overrides>`` for each file changed.
    """
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import apply_overrides as dvc_apply_overrides

    originals: dict[str, str | None] = {}
    for path, items in to_path_overrides(list(overrides)).items():
        target = root / path
        originals[path] = target.read_text() if target.exists() else None
        try:
            dvc_apply_overrides(target, items)
        except Exception as exc:  # bad syntax or an unknown key: the user's to fix
            restore_files(root, originals)
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            raise OverrideError(f"{exc}{cause}", path, items) from None
        if log is not None:
            log(f"{path}: {', '.join(items)}")
    return originals


def restore_files(root: Path, originals: dict[str, str | None]) -> None:
    """Put back files under ``root`` as :func:`apply_overrides` found them (None: remove it)."""
    for path, text in originals.items():
        target = root / path
        if text is None:
            target.unlink(missing_ok=True)
        else:
            target.write_text(text)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``dvc``: this interpreter's bin first, so ``python`` in dvc.yaml is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PYTHONUNBUFFERED"] = "1"  # stage output reaches the run log as it happens
    env.update(extra or {})
    return env


#: ``python -m dvc``, but with Ctrl-C restored first: a worker started in the background (``&``,
#: nohup, some service managers) passes SIGINT on as ignored, and DVC and its stage would then
#: shrug off the SIGINT that stops them cleanly.
_DVC_MAIN = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from dvc.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run_dvc(
    args: Sequence[str], cwd: Path, log: Callable[[str], None] = print, *, wait_for_lock: bool = True, keep: int = 2000
) -> CommandResult:
    """Run ``dvc <args>`` in ``cwd``, passing each output line to ``log`` as it arrives.

    ``--wait-for-lock`` makes DVC queue behind another DVC process in the same workspace instead
    of failing. If this process is interrupted (a Prefect cancellation, Ctrl-C), ``dvc`` and the
    stage it runs get SIGINT, as Ctrl-C in a terminal would (DVC stops the stage and releases its
    locks), then SIGTERM and SIGKILL if they linger (``STOP_SIGNALS``). They stay in this process
    group, so a signal to the whole group (a worker tearing the run down) reaches them too.
    """
    cmd = [sys.executable, "-c", _DVC_MAIN, *(["--wait-for-lock"] if wait_for_lock else []), *args]
    lines: deque[str] = deque(maxlen=keep)
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:  # text mode turns tqdm's \r updates into lines of their own
            line = raw.rstrip()
            if line:
                lines.append(line)
                log(line)
        proc.wait()
    finally:
        if proc.poll() is None:
            _stop_tree(proc)
    return CommandResult(proc.returncode, list(lines))


#: How an interrupted ``dvc`` and its stage are stopped: each signal, then how long to wait for it.
STOP_SIGNALS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def _stop_tree(proc: subprocess.Popen) -> str:
    """Stop ``proc`` and all its descendants; return the signal that did it.

    SIGINT first, as Ctrl-C in a terminal would (DVC ignores it while its stage runs, the stage
    does not, and DVC then releases its locks), re-scanning the tree so a child spawned meanwhile
    gets it too; SIGTERM if that was not enough (a process that ignores SIGINT), then SIGKILL.
    Whatever outlived ``proc`` is killed at the end.
    """
    import psutil

    def tree() -> list[psutil.Process]:
        try:
            root = psutil.Process(proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    seen: dict[int, psutil.Process] = {}
    stopped_by = "none"
    for sig, wait in STOP_SIGNALS:
        if proc.poll() is not None:
            break
        stopped_by = signal.Signals(sig).name
        sent: set[int] = set()
        deadline = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < deadline:
            for p in tree():
                seen.setdefault(p.pid, p)
                if p.pid not in sent:
                    sent.add(p.pid)
                    try:
                        p.send_signal(sig)
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.05)
    proc.wait()
    for p in seen.values():  # a stage process DVC left behind
        try:
            if p.is_running():
                p.kill()
        except psutil.NoSuchProcess:
            pass
    return stopped_by


# -- the stage graph --------------------------------------------------------------------------------


def stage_graph(repo: Path) -> dict[str, list[str]]:
    """``{stage: [stages it depends on]}`` for every stage with a command, in dvc.yaml order.

    Read through DVC itself (``Repo.index.graph``, the graph ``dvc dag`` draws), so foreach/matrix
    stages, ``vars`` and stages in other dvc.yaml files come out as DVC sees them, and a stage
    added to dvc.yaml joins the flow without touching it.
    """
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph
        stages = [s for s in dvc_repo.index.stages if s.cmd]
        names = {s: stage_name(s, dvc_repo.root_dir) for s in stages}

        def upstream(stage: object) -> list[str]:
            found: list[str] = []
            for dep in graph.successors(stage):
                if dep in names:  # a stage with a command
                    found.append(names[dep])
                else:  # a data source (.dvc file): look through it
                    found.extend(upstream(dep))
            return found

        return {names[s]: sorted(set(upstream(s))) for s in stages}


def uncached_outputs(repo: Path, stages: Sequence[str]) -> list[str]:
    """Paths of the ``cache: false`` outputs (metrics, plots, small reports) of ``stages``: git,
    not the DVC cache, carries them, so an experiment must include them even before their first
    commit (``dvc exp save -I``)."""
    from dvc.repo import Repo

    wanted = set(stages)
    with Repo(str(repo)) as dvc_repo:
        return [
            os.path.relpath(out.fs_path, dvc_repo.root_dir)
            for stage in dvc_repo.index.stages
            if stage.cmd and stage_name(stage, dvc_repo.root_dir) in wanted
            for out in stage.outs
            if not out.use_cache
        ]


def push_uncached_outputs(repo: Path, stages: Sequence[str] | None = None) -> int:
    """Push the ``cache: false`` outputs (metrics, plots) of ``stages`` (default: every stage) to
    the default remote; return how many objects went.

    DVC's run-cache records them (and keeps a copy in the local cache) so a stage with metrics in
    git can still be restored, but ``dvc push --run-cache`` sends only the records and the cached
    outputs: another host would find the run-cache entry, miss the metrics file, and run the stage
    again. This pushes those objects the way ``repro --pull`` later looks for them. An output whose
    object is not in the local cache (the stage never ran with this cache: its run-cache record
    is elsewhere, if anywhere) has nothing to send and is passed over; an upload that fails raises
    :class:`TransientFailure`.
    """
    from dvc.repo import Repo

    wanted = None if stages is None else set(stages)
    objs: set = set()
    with Repo(str(repo)) as dvc_repo:
        for stage in dvc_repo.index.stages:
            if not stage.cmd or (wanted is not None and stage_name(stage, dvc_repo.root_dir) not in wanted):
                continue
            for out in stage.outs:
                if out.use_cache or not out.hash_info or not out.hash_info.value:
                    continue
                if not dvc_repo.cache.local.exists(out.hash_info.value):
                    continue
                out.use_cache = True  # as the run-cache's copy of the stage sees it
                try:
                    for hashes in out.get_used_objs().values():
                        objs.update(hashes)
                finally:
                    out.use_cache = False
        if not objs:
            return 0
        result = dvc_repo.cloud.push(objs)
    if result.failed:
        raise TransientFailure("push of uncached outputs", [f"{len(result.failed)} object(s) failed to upload"])
    return len(result.transferred)


def stage_name(stage: object, root: str) -> str:
    """How ``dvc repro`` run from the repository root names the stage: ``name`` for the root
    dvc.yaml, ``path/to/dvc.yaml:name`` for another."""
    dvcfile = os.path.relpath(stage.path, root)  # type: ignore[attr-defined]
    name = getattr(stage, "name", None)
    if name is None:
        return dvcfile
    return name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"


def plan(graph: dict[str, list[str]], targets: Sequence[str] | None = None) -> list[str]:
    """The stages to run for ``targets`` (all when empty) and everything upstream of them, ordered
    so each comes after its dependencies; ties keep dvc.yaml order."""
    unknown = [t for t in targets or [] if t not in graph]
    if unknown:
        raise PlanError(f"unknown stage(s) {', '.join(map(repr, unknown))}; the pipeline has: {', '.join(graph)}")
    wanted: set[str] = set()
    todo = list(targets) if targets else list(graph)
    while todo:
        stage = todo.pop()
        if stage not in wanted:
            wanted.add(stage)
            todo.extend(graph[stage])
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(wanted):
        ready = [s for s in graph if s in wanted and s not in done and all(d in done for d in graph[s])]
        if not ready:  # DVC refuses cyclic pipelines, so this is a bug here
            raise PlanError(f"cannot order stages {sorted(wanted - done)}")
        order.append(ready[0])
        done.add(ready[0])
    return order
