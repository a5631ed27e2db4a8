"""Wall time of a tiny sweep on one experiment worker and on two, side by side.

    python bench/bench_sweep.py [--workers 1 2] [--repeat 1]

Builds the fixture pipeline (the tests' 400-image CIFAR-format archive, tiny training params) in a
temporary git + DVC repo with a tiny sweep (2 AlexNet variants x 2 seeds), starts a real
``prefect server``, the ``gpu`` pool and ``prefect --no-prompt deploy --all``; then for each worker
count, on a fresh copy of the repo and a fresh DVC remote (nothing cached), starts that many
``prefect worker start --pool gpu --work-queue default --limit 1`` plus a coordinator worker on the
``sweeps`` queue, runs ``cifar10-sweep/sweep`` and times it from trigger to its final state.

Needs the dev checkout (it borrows tests/ for the archive and the server fixture). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SWEEP = """\
name: bench
params:
  evaluate: {latency_repeats: 3}
  vgg16: {epochs: 1}
grid:
  alexnet.variant: [seed, paper]
seeds: [1, 2]
seed_params: [alexnet.seed]
compare: [alexnet]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO))
    os.environ.update(DVC_NO_ANALYTICS="1", DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    from common import describe_machine, machine

    print(describe_machine(machine(rates=False)), flush=True)
    from bench.bench_flow_overhead import build_template
    from tests.flows.conftest import PREFECT, PrefectServer, free_port, stop

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    template = build_template(root)
    for package in ("flows", "tools"):
        shutil.copytree(REPO / package, template / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "prefect.yaml", template / "prefect.yaml")
    (template / "sweeps").mkdir()
    (template / "sweeps/bench.yaml").write_text(SWEEP)
    git = ["git", "-c", "user.email=b@example.invalid", "-c", "user.name=b"]
    subprocess.run(["git", "add", "-A"], cwd=template, check=True)
    subprocess.run([*git, "commit", "-qm", "sweep"], cwd=template, check=True)

    home = root / "prefect-home"
    home.mkdir()
    server = PrefectServer(home, free_port())
    log = open(server.log, "w")
    server.proc = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(server.port)],
        env=server.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    results: list[tuple[int, float, str]] = []
    try:
        import urllib.request

        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        server.cli("work-pool", "create", "gpu", "--type", "process", cwd=template)
        for i in range(args.repeat):
            for n in args.workers:
                repo = root / f"run-{i}-{n}" / "repo"
                shutil.copytree(template, repo)
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "dvc",
                        "remote",
                        "add",
                        "--local",
                        "-d",
                        "shared",
                        str(repo.parent / "remote"),
                    ],
                    cwd=repo,
                    check=True,
                    capture_output=True,
                )
                server.cli("deploy", "--all", cwd=repo)  # the pull steps now point at this copy
                procs = []
                for name, queue_args in [
                    *((f"gpu-{k}", ["--work-queue", "default", "--limit", "1"]) for k in range(1, n + 1)),
                    ("coordinator", ["--work-queue", "sweeps"]),
                ]:
                    out = open(repo.parent / f"{name}.log", "w")
                    procs.append(
                        subprocess.Popen(
                            [PREFECT, "worker", "start", "--pool", "gpu", "--name", name, *queue_args],
                            cwd=repo,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                            env=server.env(PREFECT_WORKER_QUERY_SECONDS="1"),
                        )
                    )
                time.sleep(5)  # let the workers register before the clock starts
                try:
                    with server.client() as c:
                        deployment = c.read_deployment_by_name("cifar10-sweep/sweep")
                        flow_run = c.create_flow_run_from_deployment(
                            deployment.id, parameters={"sweep": "sweeps/bench.yaml", "poll_seconds": 1}
                        )
                    started = time.monotonic()
                    while True:
                        with server.client() as c:
                            flow_run = c.read_flow_run(flow_run.id)
                        if flow_run.state and flow_run.state.is_final():
                            break
                        time.sleep(1)
                    wall = time.monotonic() - started
                finally:
                    for p in procs:
                        stop(p, signal.SIGINT, 30)
                results.append((n, wall, flow_run.state.message or flow_run.state.name))
                print(f"{n} worker(s): {wall:.0f} s -- {results[-1][2]}", file=sys.stderr)
    finally:
        stop(server.proc, signal.SIGTERM, 20)
        log.close()
    print(f"\nTiny sweep (2 points x 2 seeds + shared stages, fixture data), {os.cpu_count()} CPUs:\n")
    print("| experiment workers | wall s | outcome |")
    print("| ---: | ---: | --- |")
    for n, wall, outcome in results:
        print(f"| {n} | {wall:.0f} | {outcome} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
