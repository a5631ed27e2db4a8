"""What the Prefect flow costs over a plain ``dvc repro`` of the same work, side by side.

    python bench/bench_flow_overhead.py [--repeat 3] [--stages validate]

Builds the fixture pipeline (the tests' 400-image CIFAR-format archive, tiny training params)
in a temporary git + DVC repo, then for each repeat times on fresh copies:

- ``dvc repro`` (cold), then again with nothing changed;
- the flow called in-process against an already running Prefect API (cold, then nothing changed);
- ``python -m flows.pipeline`` as a new process against the same API (cold), the way a
  worker's flow-run process starts, minus the worker's polling.

Needs the dev checkout (it borrows tests/ to build the archive). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_template(root: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.cifar_archive import make_archive
    from tests.conftest import TINY, copy_project, set_params

    archive = root / "cifar-10-python.tar.gz"
    sha = make_archive(archive)
    repo = copy_project(root / "template")
    set_params(repo, data={"url": str(archive), "sha256": sha}, **TINY)
    env = child_env()
    for cmd in (
        ["git", "init", "-q"],
        [sys.executable, "-m", "dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=b@example.invalid", "-c", "user.name=b", "commit", "-qm", "bench"],
    ):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo


def child_env(**extra: str) -> dict[str, str]:
    env = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PYTHONPATH="",
        **extra,
    )
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def timed(cmd: list[str], cwd: Path, **env: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(**env), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", nargs="*", default=None, help="default: the whole pipeline")
    args = parser.parse_args()
    os.environ.update(DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from common import describe_machine, machine

    print(describe_machine(machine(rates=False)), flush=True)

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    sys.path.insert(0, str(REPO))
    from flows.pipeline import pipeline

    targets = args.stages or []
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=90):
        api = PREFECT_API_URL.value()
        template = build_template(Path(tmp))
        for i in range(args.repeat):
            copies = {name: Path(tmp) / f"{name}-{i}" for name in ("dvc", "flow", "process")}
            for path in copies.values():
                shutil.copytree(template, path, symlinks=True)
            dvc = [sys.executable, "-m", "dvc", "repro", *targets]
            times.setdefault("dvc repro, cold", []).append(timed(dvc, copies["dvc"]))
            times.setdefault("dvc repro, nothing changed", []).append(timed(dvc, copies["dvc"]))
            for label in ("flow in-process, cold", "flow in-process, nothing changed"):
                started = time.perf_counter()
                state = pipeline(repo_dir=str(copies["flow"]), stages=args.stages, return_state=True)
                assert state.is_completed(), state.message
                times.setdefault(label, []).append(time.perf_counter() - started)
            cmd = [
                sys.executable,
                "-m",
                "flows.pipeline",
                "--repo-dir",
                str(copies["process"]),
                *(["--stages", *targets] if targets else []),
            ]
            times.setdefault("python -m flows.pipeline, cold", []).append(timed(cmd, REPO, PREFECT_API_URL=api))
            times.setdefault("python -m flows.pipeline, nothing changed", []).append(
                timed(cmd, REPO, PREFECT_API_URL=api)
            )
    what = ", ".join(targets) if targets else "the whole pipeline"
    print(f"\n{what} on the fixture archive, {args.repeat} repeats, median (min-max) seconds\n")
    print("| run | wall s |\n| --- | ---: |")
    for label, values in times.items():
        print(f"| {label} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")


if __name__ == "__main__":
    main()
