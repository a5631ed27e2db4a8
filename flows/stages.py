"""DVC for the Prefect flows, through its command line and files only: ``dvc`` run with its output
streamed, the stage order, what a run did to each stage (``dvc.lock`` before and after), and the
rule that tells a transient failure from a deterministic one. No Prefect here: DVC judges what
reruns, ``dvc.lock`` records what ran."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from flows import remotes
from tasks.core.errors import StageError

#: Exit status of a stage that failed for good, for a reason its ``error:`` line explains (bad input, bad
#: params, failed validation: tasks.core.cli.run_stage); the stage decides, the flow obeys.
FINAL_EXIT = StageError.exit_status
#: How many output lines a failure keeps for its message.
TAIL_LINES = 40
#: DVC reports a stage's exit status, and a run-cache restore, only in these lines of its log.
_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (-?\d+)")
_RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run")
_DOT_EDGE = re.compile(r'^"(?P<a>[^"]+)" -> "(?P<b>[^"]+)";$')
_DOT_NODE = re.compile(r'^"(?P<a>[^"]+)";$')
#: How an interrupted ``dvc`` and its stage are stopped: each signal, then how long to wait for it.
STOP_SIGNALS = ((signal.SIGINT, 10.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


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


def classify(what: str, lines: Sequence[str]) -> StageFailure:
    """The failure a non-zero ``dvc`` run stands for: deterministic only when the stage exited 2 with its
    own ``error:`` line. A signal, a traceback, any other exit status (75, sysexits' EX_TEMPFAIL: the stage
    asks for another try) or a DVC lock held too long may pass on its own."""
    errors = error_messages(lines)
    codes = [int(m.group(1)) for ln in lines if (m := _STAGE_EXIT.search(ln))]
    exit_code = codes[-1] if codes else None
    kind = DeterministicFailure if exit_code == FINAL_EXIT and errors else TransientFailure
    return kind(what, errors, exit_code=exit_code, tail=list(lines)[-TAIL_LINES:])


def error_messages(lines: Sequence[str], limit: int = 1500) -> list[str]:
    """The ``error: ...`` lines, each joined with the indented lines that continue it (validate
    lists each failed expectation that way)."""
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
    return not isinstance(state.result(raise_on_failure=False) if state else None, DeterministicFailure)


# -- running dvc ----------------------------------------------------------------------------------------


@dataclass
class CommandResult:
    returncode: int
    lines: list[str]

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``dvc`` and git: this interpreter's bin first, so ``python`` in dvc.yaml is ours."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env["PYTHONUNBUFFERED"] = "1"  # stage output reaches the run log as it happens
    return {**env, **(extra or {})}


def run_dvc(args: Sequence[str], cwd: Path, logger: Any = None, *, what: str | None = None) -> CommandResult:
    """``dvc --wait-for-lock <args>`` in ``cwd``, each output line to ``logger`` as it arrives (``error:``
    and ``ERROR`` lines at error level); with ``what``, a failure raises :func:`classify`'s exception.
    Interrupted (a Prefect cancellation, Ctrl-C), ``dvc`` and its stage are stopped by :func:`_stop_tree`."""
    lines: deque[str] = deque(maxlen=2000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "--wait-for-lock", *args],
        cwd=cwd,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        # A worker started in the background passes SIGINT on as ignored; DVC and its stage would then
        # shrug off the SIGINT that stops them cleanly. No process group of their own: a killed flow
        # run's group takes dvc and its stage with it, so they cannot block the next run.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        for raw in proc.stdout or ():  # text mode turns tqdm's \r updates into lines of their own
            if line := raw.rstrip():
                lines.append(line)
                if logger is not None:
                    (logger.error if line.startswith(("error: ", "ERROR")) else logger.info)(line)
        proc.wait()
    finally:
        if proc.poll() is None:
            _stop_tree(proc)
    result = CommandResult(proc.returncode, list(lines))
    if what and result.returncode != 0:
        if refused := remotes.refusal(result.lines):  # no retry can mend credentials
            raise DeterministicFailure(what, [remotes.describe(dvc_config(cwd)[0], refused)], tail=result.lines)
        raise classify(what, result.lines)
    return result


def _stop_tree(proc: subprocess.Popen) -> None:
    """Stop ``dvc`` and its descendants, one signal of :data:`STOP_SIGNALS` after the other, each also
    to a child spawned meanwhile (DVC ignores SIGINT while its stage runs, the stage does not, and DVC
    then releases its locks); whatever outlived ``dvc`` is killed at the end."""
    seen: dict[int, psutil.Process] = {}
    for sig, wait in STOP_SIGNALS:
        sent: set[int] = set()
        deadline = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(psutil.NoSuchProcess):
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    seen.setdefault(p.pid, p)
                    if p.pid not in sent:
                        sent.add(p.pid)
                        with contextlib.suppress(psutil.NoSuchProcess):
                            p.send_signal(sig)
            time.sleep(0.05)
    proc.wait()
    for p in seen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running():
                p.kill()


def markdown_diff(args: Sequence[str], cwd: Path) -> str:
    """The table ``dvc <args> --md`` prints (``metrics diff``, ``params diff``), or a note holding its
    output where it failed."""
    result = run_dvc([*args, "--md"], cwd)
    return result.output if result.returncode == 0 else f"_`dvc {' '.join(args)}` failed:_\n\n```\n{result.output}\n```"


def dvc_out(args: Sequence[str], cwd: Path) -> str:
    """The standard output of a quick ``dvc`` query; :class:`TransientFailure` if it fails."""
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=child_env(), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise TransientFailure(f"dvc {' '.join(args)}", [], tail=(proc.stdout + proc.stderr).splitlines()[-TAIL_LINES:])
    return proc.stdout


def dvc_config(repo: Path) -> tuple[dict[str, str], dict[str, str]]:
    """``dvc config --list --show-origin`` of ``repo``: ``{key: value}`` and ``{key: file it comes from}``."""
    values: dict[str, str] = {}
    origins: dict[str, str] = {}
    for line in dvc_out(["config", "--list", "--show-origin"], repo).splitlines():
        origin, _, setting = line.partition("\t")
        key, _, value = setting.partition("=")
        values[key], origins[key] = value, Path(origin).as_posix()
    return values, origins


# -- the stages: their order, and what a run did to them ----------------------------------------------


def dag(repo: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """``dvc dag --dot``: the stages in DVC's order and the edges between them (upstream first);
    data sources (``.dvc`` files) are left out."""
    lines = [ln.strip() for ln in dvc_out(["dag", "--dot"], repo).splitlines()]
    stages = [m.group("a") for ln in lines if (m := _DOT_NODE.match(ln)) and not m.group("a").endswith(".dvc")]
    edges = [(m.group("a"), m.group("b")) for ln in lines if (m := _DOT_EDGE.match(ln))]
    return stages, [(a, b) for a, b in edges if a in stages and b in stages]


def up_to_date(repo: Path, order: Sequence[str]) -> set[str]:
    """The leading stages of ``order`` that ``dvc status`` finds unchanged. ``dvc repro`` would skip each
    (no stage upstream of them runs), so they need no DVC process of their own; one status query stands in
    for a process per stage. Empty when the status cannot be read: then each stage asks DVC itself."""
    try:
        changed = json.loads(dvc_out(["status", "--json", *order], repo) or "{}")
    except (TransientFailure, ValueError):
        return set()
    return set(itertools.takewhile(lambda stage: stage not in changed, order))


def stage_order(repo: Path, targets: Sequence[str] | None = None) -> list[str]:
    """The stages ``dvc repro <targets>`` runs (all without targets), each after the ones it depends
    on, ties in DVC's order; the graph is DVC's (``dvc dag``)."""
    return order_of(*dag(repo), targets)


def order_of(stages: Sequence[str], edges: Sequence[tuple[str, str]], targets: Sequence[str] | None) -> list[str]:
    """:func:`stage_order` in the graph ``stages``, ``edges`` (as :func:`dag` gives them)."""
    if unknown := [t for t in targets or [] if t not in stages]:
        problem = f"unknown stage(s) {', '.join(map(repr, unknown))}; the pipeline has: {', '.join(stages)}"
        raise DeterministicFailure("plan", [f"error: {problem}"])
    wanted = set(targets or stages)
    while upstream := {a for a, b in edges if b in wanted} - wanted:
        wanted |= upstream
    order: list[str] = []
    while len(order) < len(wanted):  # DVC refuses cyclic pipelines, so a stage is always ready
        ready = (s for s in stages if s in wanted and s not in order)
        order.append(next(s for s in ready if all(a in order for a, b in edges if b == s)))
    return order


def shared_stages(repo: Path, varied: Iterable[str], targets: Sequence[str] | None = None) -> list[str]:
    """The stages of ``targets``' pipeline that no experiment of a sweep changes: neither their params
    (``dvc.api.params_show``) nor those of a stage upstream are among ``varied``, in ``dvc repro`` order."""
    import dvc.api

    varied = [k.split(":", 1)[-1] for k in varied]
    stages, edges = dag(repo)
    order = order_of(stages, edges, targets)
    changed: set[str] = set()
    for stage in order:  # upstream first: downstream of a changed stage changes too
        with contextlib.chdir(repo):  # dvc.api reads params files relative to the working directory
            keys = _keys(dvc.api.params_show(stages=stage))
        touched = any(v == k or v.startswith(f"{k}.") or k.startswith(f"{v}.") for k in keys for v in varied)
        if touched or any(a in changed for a, b in edges if b == stage):
            changed.add(stage)
    return [s for s in order if s not in changed]


def _keys(params: Any, prefix: str = "") -> list[str]:
    if not isinstance(params, dict) or not params:
        return [prefix.rstrip(".")]
    return [k for key, value in params.items() for k in _keys(value, f"{prefix}{key}.")]


def read_lock(repo: Path) -> dict[str, Any]:
    """``dvc.lock``'s stages (empty before the first run)."""
    path = repo / "dvc.lock"
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {}) if path.is_file() else {}


def outcomes(
    before: dict[str, Any], after: dict[str, Any], stages: Iterable[str], lines: Iterable[str]
) -> dict[str, str]:
    """What a ``dvc repro`` / ``dvc exp run`` did to each stage: ``restored`` when DVC took it from the
    run-cache (also where that put back outputs changed by hand and left ``dvc.lock`` as it was), else
    ``skipped`` when its ``dvc.lock`` entry did not change, else ``ran``."""
    restored = {m.group("stage") for ln in lines if (m := _RESTORED.match(ln))}
    return {s: "restored" if s in restored else "skipped" if before.get(s) == after.get(s) else "ran" for s in stages}


def uncached_outputs(repo: Path) -> list[str]:
    """The outputs ``dvc.lock`` lists that git, not the DVC cache, carries (``cache: false`` metrics
    and plots): those DVC did not add to a ``.gitignore``."""
    paths = [
        o["path"] for entry in read_lock(repo).values() for o in entry.get("outs", []) if (repo / o["path"]).exists()
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", "--stdin"], cwd=repo, input="\n".join(paths), capture_output=True, text=True
    ).stdout.split()
    return [p for p in paths if p not in ignored]


def push_uncached_outputs(repo: Path) -> int:
    """Push the ``cache: false`` outputs to the workspace's default DVC remote; return how many went.
    ``dvc push --run-cache`` sends the run-cache records but not their objects, so another host would
    run the stage again; ``dvc add`` of copies in a scratch DVC project with the workspace's config
    makes the same objects, and its ``dvc push`` sends them."""
    if not (paths := uncached_outputs(repo)):
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        subprocess.run(["git", "init", "-q"], cwd=scratch, check=True)
        dvc_out(["init", "-q"], scratch)
        for name in ("config", "config.local"):
            if (repo / ".dvc" / name).is_file():
                shutil.copy2(repo / ".dvc" / name, scratch / ".dvc" / name)
        for path in paths:
            (scratch / path).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (repo / path).is_dir() else shutil.copy2)(repo / path, scratch / path)
        dvc_out(["add", "-q", *paths], scratch)
        dvc_out(["push", "-q", *[f"{p}.dvc" for p in paths]], scratch)
    return len(paths)
