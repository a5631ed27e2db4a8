"""DVC for the Prefect flows, through its command line and machine-readable files only: running a
``dvc`` command with its output streamed line by line, the stage order (``dvc dag --dot``), what a
run did to each stage (``dvc.lock`` before and after), checking ``-S`` overrides before DVC gets
them, and the rule that tells a transient failure from a deterministic one.

Nothing here imports Prefect, so the pipeline, sweep and nightly flows share one copy. DVC stays
the judge of what reruns: ``dvc repro`` skips an unchanged stage or restores it from the run-cache,
and ``dvc.lock`` stays the record of what ran.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# -- which failures may pass on another attempt: the one place this rule lives --------------------------

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
#: DVC reports a stage's exit status only in this line of its log; no machine-readable form has it.
_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
#: ...and a run-cache restore only in this one (``dvc.lock`` changes the same way as when it runs).
_RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run")


class StageFailure(RuntimeError):
    """A ``dvc`` command failed; ``errors`` holds the stage's own ``error:`` lines."""

    retryable = True

    def __init__(self, what: str, errors: list[str], *, exit_code: int | None = None, tail: Sequence[str] = ()):
        self.what, self.errors, self.exit_code, self.tail = what, errors, exit_code, list(tail)
        super().__init__(self.describe())

    def describe(self) -> str:
        how = [f"the stage exited with {self.exit_code}"] if self.exit_code is not None else []
        how.append("may be transient" if self.retryable else "not retried")
        detail = "; ".join(self.errors) or next((ln for ln in reversed(self.tail) if ln.startswith("ERROR")), "")
        return f"{self.what} failed ({'; '.join(how)})" + (f": {detail}" if detail else "")


class DeterministicFailure(StageFailure):
    """Bad input, bad params or failed validation: retrying cannot help."""

    retryable = False


class TransientFailure(StageFailure):
    """A crash, a lost connection, a held lock: another attempt may succeed."""


class PlanError(ValueError):
    """The requested stages are not in the pipeline."""


def classify(what: str, lines: Sequence[str]) -> StageFailure:
    """The failure a non-zero ``dvc`` run stands for: deterministic only when the stage said so.

    A stage reports bad input by exiting 2 with a line ``error: ...`` (tasks/core/cli.py); DVC then
    prints ``failed to run: <cmd>, exited with 2``. Everything else -- a signal, a traceback, any
    other exit status (75, sysexits' EX_TEMPFAIL, is the one to use for "try again"), a DVC lock
    held too long, an ``error:`` naming exhausted network retries -- may pass on its own.
    """
    errors = error_messages(lines)
    codes = [int(m.group(1)) for ln in lines if (m := _STAGE_EXIT.search(ln))]
    exit_code = codes[-1] if codes else None
    transient = any(marker in e for e in errors for marker in TRANSIENT_ERROR_MARKERS)
    kind = DeterministicFailure if exit_code == EXIT_STAGE_ERROR and errors and not transient else TransientFailure
    return kind(what, errors, exit_code=exit_code, tail=list(lines)[-TAIL_LINES:])


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


def retry_unless_deterministic(task: Any, task_run: Any, state: Any) -> bool:
    """A Prefect ``retry_condition_fn``: retry anything but a :class:`DeterministicFailure`."""
    exc = state.result(raise_on_failure=False) if state is not None else None
    return not isinstance(exc, DeterministicFailure)


# -- running dvc ----------------------------------------------------------------------------------------


@dataclass
class CommandResult:
    returncode: int
    lines: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``dvc``: this interpreter's bin first, so ``python`` in dvc.yaml is ours."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PYTHONUNBUFFERED"] = "1"  # stage output reaches the run log as it happens
    env.update(extra or {})
    return env


def _default_sigint() -> None:
    # A worker started in the background (``&``, nohup, some service managers) passes SIGINT on as
    # ignored; DVC and its stage would then shrug off the SIGINT that stops them cleanly.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def log_lines(logger: Any) -> Callable[[str], None]:
    """``run_dvc``'s ``log`` for a logger: ``error:`` and ``ERROR`` lines at error level, the rest at info."""
    return lambda line: (logger.error if line.startswith(("error: ", "ERROR")) else logger.info)(line)


def run_dvc(
    args: Sequence[str], cwd: Path, log: Callable[[str], None] = print, *, wait_for_lock: bool = True, keep: int = 2000
) -> CommandResult:
    """Run ``dvc <args>`` in ``cwd``, passing each output line to ``log`` as it arrives.

    ``--wait-for-lock`` makes DVC queue behind another DVC process in the same workspace instead of
    failing. If this process is interrupted (a Prefect cancellation, Ctrl-C), ``dvc`` and the stage
    it runs get SIGINT, as Ctrl-C in a terminal would (DVC stops the stage and releases its locks),
    then SIGTERM and SIGKILL if they linger (``STOP_SIGNALS``).
    """
    cmd = [sys.executable, "-m", "dvc", *(["--wait-for-lock"] if wait_for_lock else []), *args]
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
        preexec_fn=_default_sigint if os.name == "posix" else None,  # noqa: PLW1509 -- no threads touched
    )
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:  # text mode turns tqdm's \r updates into lines of their own
            if line := raw.rstrip():
                lines.append(line)
                log(line)
        proc.wait()
    finally:
        if proc.poll() is None:
            _stop_tree(proc)
    return CommandResult(proc.returncode, list(lines))


def dvc_out(args: Sequence[str], cwd: Path) -> str:
    """The output of a quick ``dvc`` query; :class:`TransientFailure` if it fails."""
    result = run_dvc(args, cwd, lambda line: None, wait_for_lock=False)
    if result.returncode != 0:
        raise TransientFailure(f"dvc {' '.join(args)}", [], tail=result.lines)
    return result.output


#: How an interrupted ``dvc`` and its stage are stopped: each signal, then how long to wait for it.
STOP_SIGNALS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def _stop_tree(proc: subprocess.Popen) -> str:
    """Stop ``proc`` and all its descendants; return the signal that did it.

    SIGINT first (DVC ignores it while its stage runs, the stage does not, and DVC then releases its
    locks), re-scanning the tree so a child spawned meanwhile gets it too; SIGTERM if that was not
    enough, then SIGKILL. Whatever outlived ``proc`` is killed at the end.
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


# -- the stages: their order, and what a run did to them ----------------------------------------------

_DOT_EDGE = re.compile(r'^"(?P<a>[^"]+)" -> "(?P<b>[^"]+)";$')
_DOT_NODE = re.compile(r'^"(?P<a>[^"]+)";$')


def dag(repo: Path, target: str | None = None) -> tuple[list[str], list[tuple[str, str]]]:
    """``dvc dag --dot [target]``: the stages (``target`` and its upstream; all without one) in DVC's
    order, and the edges between them (upstream first). Data sources (``.dvc`` files) are left out."""
    result = run_dvc(["dag", "--dot", *([target] if target else [])], repo, lambda line: None, wait_for_lock=False)
    if result.returncode != 0:
        raise PlanError(f"dvc dag {target or ''} failed: {result.output.strip()[-500:]}")
    nodes = [m.group("a") for ln in result.lines if (m := _DOT_NODE.match(ln.strip()))]
    edges = [(m.group("a"), m.group("b")) for ln in result.lines if (m := _DOT_EDGE.match(ln.strip()))]
    keep = [n for n in nodes if not n.endswith(".dvc")]
    return keep, [(a, b) for a, b in edges if a in keep and b in keep]


def stage_order(repo: Path, targets: Sequence[str] | None = None) -> list[str]:
    """The stages ``dvc repro <targets>`` runs (all when empty), each after the ones it depends on;
    ties keep DVC's order. The graph and the upstream sets are DVC's (``dvc dag``)."""
    everything, _ = dag(repo)
    unknown = [t for t in targets or [] if t not in everything]
    if unknown:
        raise PlanError(f"unknown stage(s) {', '.join(map(repr, unknown))}; the pipeline has: {', '.join(everything)}")
    wanted: set[str] = set()
    edges: set[tuple[str, str]] = set()
    for target in targets or [None]:
        nodes, found = dag(repo, target) if target else dag(repo)
        wanted.update(nodes)
        edges.update(found)
    order: list[str] = []
    while len(order) < len(wanted):
        ready = [s for s in everything if s in wanted and s not in order]
        ready = [s for s in ready if all(a in order for a, b in edges if b == s)]
        order.append(ready[0])  # DVC refuses cyclic pipelines, so there always is one
    return order


def read_lock(repo: Path) -> dict[str, Any]:
    """``dvc.lock``'s stages (empty before the first run)."""
    path = repo / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.is_file() else {}


def outcomes(
    before: dict[str, Any], after: dict[str, Any], stages: Iterable[str], lines: Iterable[str]
) -> dict[str, str]:
    """What a ``dvc repro`` / ``dvc exp run`` did to each of ``stages``: ``skipped`` when its
    ``dvc.lock`` entry did not change, ``restored`` when DVC took it from the run-cache, else ``ran``."""
    restored = {m.group("stage") for ln in lines if (m := _RESTORED.match(ln))}
    return {s: "skipped" if before.get(s) == after.get(s) else "restored" if s in restored else "ran" for s in stages}


def uncached_outputs(repo: Path, stages: Iterable[str] | None = None) -> list[str]:
    """The outputs of ``stages`` (default: all) that git, not the DVC cache, carries: ``cache: false``
    metrics and plots, the ones ``dvc.lock`` lists that DVC did not add to a ``.gitignore``."""
    lock = read_lock(repo)
    paths = [o["path"] for s, e in lock.items() if stages is None or s in stages for o in e.get("outs", [])]
    paths = [p for p in paths if (repo / p).exists()]
    ignored = subprocess.run(
        ["git", "check-ignore", "--stdin"], cwd=repo, input="\n".join(paths), capture_output=True, text=True
    ).stdout.split()
    return [p for p in paths if p not in ignored]


def push_uncached_outputs(repo: Path, stages: Iterable[str] | None = None) -> int:
    """Push the ``cache: false`` outputs of ``stages`` to the workspace's default DVC remote; return
    how many paths went.

    DVC's run-cache records them, so a stage with metrics in git can still be restored, but
    ``dvc push --run-cache`` sends only the records and the cached outputs: another host would find
    the entry, miss the metrics file, and run the stage again. ``dvc add`` of copies in a scratch
    DVC project with the workspace's config gives the same objects, which its ``dvc push`` sends.
    """
    paths = uncached_outputs(repo, stages)
    if not paths:
        return 0
    import shutil

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
        dvc_out(["init", "-q"], scratch)
        for name in ("config", "config.local"):
            if (repo / ".dvc" / name).is_file():
                shutil.copy2(repo / ".dvc" / name, scratch / ".dvc" / name)
        for path in paths:
            target = scratch / path
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (repo / path).is_dir() else shutil.copy2)(repo / path, target)
        dvc_out(["add", "-q", *paths], scratch)
        dvc_out(["push", "-q", *[f"{p}.dvc" for p in paths]], scratch)
    return len(paths)


# -- params overrides (-S) ------------------------------------------------------------------------------


def split_override(item: str) -> tuple[str, str, str]:
    """``"sub/params.yaml:+a.b=2"`` -> ``("sub/params.yaml", "+a.b", "2")``; the file defaults to params.yaml."""
    key, _, value = item.partition("=")
    path, sep, key = key.rpartition(":")
    return (path if sep else "params.yaml"), key.strip(), value


def override_files(overrides: Sequence[str]) -> list[str]:
    """The params files (relative paths) that ``-S`` ``overrides`` change, in first-named order."""
    return list(dict.fromkeys(split_override(o)[0] for o in overrides))


def override_problem(params_text: str | None, item: str) -> str | None:
    """Why ``dvc exp run -S item`` would refuse to change a params file holding ``params_text``
    (Hydra's rule: a plain ``key=value`` changes an existing key, ``+key`` adds a new one, ``++key``
    either, ``~key`` removes one); None when it would accept it."""
    path, key, value = split_override(item)
    if "=" not in item and not key.startswith("~"):
        return f"{item!r} is not KEY=VALUE"
    try:
        node: Any = yaml.safe_load(params_text or "") or {}
    except yaml.YAMLError as exc:
        return f"{path} is not valid YAML: {exc}"
    bare = key.lstrip("+~")
    for part in bare.split("."):
        node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
    exists = node is not KeyError
    if key.startswith("++"):
        return None
    if key.startswith("+") and exists:
        return f"could not add {bare!r} to {path}: it is already there (override it with {bare}={value})"
    if not key.startswith("+") and not exists:
        return f"could not override {bare!r} in {path}: no such key (add it with +{bare}={value})"
    return None


def check_overrides(read: Callable[[str], str | None], overrides: Sequence[str]) -> list[str]:
    """Every problem :func:`override_problem` finds, reading each params file through ``read``."""
    texts = {path: read(path) for path in override_files(overrides)}
    return [p for item in overrides if (p := override_problem(texts[split_override(item)[0]], item))]
